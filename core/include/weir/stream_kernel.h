// What a stream op's implementation looks like to the runtime.
//
// The runtime creates one StreamKernel per node (through the factory the op registered) and calls
// it from TBB worker threads:
//   - a source (an op with no inputs) gets Produce() until it returns false;
//   - other nodes get Process() once per arriving item, then Finish() once after every upstream
//     node has finished.
// A stateful op's kernel is called by one thread at a time; a stateless op's kernel may be called
// concurrently and must be thread-safe. Kernels report bad input by returning a Status; an
// exception escaping a kernel is caught and reported with the node's name.
#pragma once

#include <atomic>
#include <filesystem>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "weir/attr.h"
#include "weir/attrs.h"
#include "weir/batch.h"
#include "weir/status.h"

namespace weir {

// Where stream kernels write per-step numbers: `metrics.jsonl` of the run, one JSON object per
// line with "node", "step" and the values. Thread-safe.
class MetricSink {
 public:
  virtual ~MetricSink() = default;
  virtual void Write(const std::string& node, int64_t step,
                     const std::vector<std::pair<std::string, double>>& values) = 0;
};

// Sends a kernel's outputs downstream. Valid only during the call it was passed to.
class Emitter {
 public:
  virtual ~Emitter() = default;
  // Sends `batch` out of output port `port` (0-based, in schema order).
  virtual void Emit(int port, Batch batch) = 0;
  void Emit(Batch batch) { Emit(0, std::move(batch)); }
};

// Everything a kernel may ask about its node. Owned by the runtime; outlives the kernel.
class NodeContext {
 public:
  NodeContext(std::string node, std::string op, std::map<std::string, AttrValue> attrs,
              std::filesystem::path graph_dir, std::filesystem::path out_dir, MetricSink* metrics,
              const std::atomic<bool>* stop_requested)
      : node_(std::move(node)),
        op_(std::move(op)),
        attrs_(std::move(attrs), "op '" + op_ + "'"),
        graph_dir_(std::move(graph_dir)),
        out_dir_(std::move(out_dir)),
        metrics_(metrics),
        stop_requested_(stop_requested) {}

  const std::string& node() const { return node_; }
  const std::string& op() const { return op_; }

  // Attrs are validated against the schema before the kernel exists, with defaults filled in,
  // so these only CHECK-fail when a kernel asks for an attr its schema does not declare.
  const Attrs& attrs() const { return attrs_; }
  const AttrValue& attr(const std::string& name) const { return attrs_.Get(name); }
  int64_t Int(const std::string& name) const { return attrs_.Int(name); }
  double Float(const std::string& name) const { return attrs_.Float(name); }
  bool Bool(const std::string& name) const { return attrs_.Bool(name); }
  const std::string& String(const std::string& name) const { return attrs_.String(name); }
  std::vector<std::string> StringList(const std::string& name) const {
    return attrs_.StringList(name);
  }

  // Input files are named relative to the graph file; outputs relative to the run's folder.
  std::filesystem::path InputPath(const std::string& path) const;
  std::filesystem::path OutputPath(const std::string& path) const;
  const std::filesystem::path& out_dir() const { return out_dir_; }

  // Writes one line to metrics.jsonl (no-op when the run has no metrics file).
  void Metric(int64_t step, const std::vector<std::pair<std::string, double>>& values) const {
    if (metrics_ != nullptr) metrics_->Write(node_, step, values);
  }

  // True once the user asked the run to stop (SIGINT): sources should stop producing.
  bool stop_requested() const { return stop_requested_ != nullptr && stop_requested_->load(); }

  // An error about this node: "node 'n' (op 'x'): message" with the node's graph location added
  // by the runtime.
  Status Error(const std::string& message) const {
    Status s = InvalidArgument(message);
    s.InNode(node_, op_);
    return s;
  }

 private:
  std::string node_;
  std::string op_;
  Attrs attrs_;
  std::filesystem::path graph_dir_;
  std::filesystem::path out_dir_;
  MetricSink* metrics_;
  const std::atomic<bool>* stop_requested_;
};

class StreamKernel {
 public:
  virtual ~StreamKernel() = default;

  // Sources only: emits the next item(s). Returns false when there is nothing more.
  virtual StatusOr<bool> Produce(Emitter& out) {
    (void)out;
    return false;
  }

  // One arriving item on data input `input` (0-based, in the order the graph lists inputs).
  virtual Status Process(int input, const Batch& batch, Emitter& out) {
    (void)input;
    (void)batch;
    (void)out;
    return Status();
  }

  // After every upstream node finished and every item was processed: flush buffered work, close
  // files. Not called when the run failed.
  virtual Status Finish(Emitter& out) {
    (void)out;
    return Status();
  }
};

}  // namespace weir
