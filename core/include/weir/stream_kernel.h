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

struct Graph;
class OpRegistry;

// Long-lived state that nodes share by name: a model's parameters, a tokenizer, a dedup index.
// Created by the factory of its kind (registered by a plugin) before any kernel; thread-safety
// is the resource's own contract.
class Resource {
 public:
  virtual ~Resource() = default;
};

// What one run shares with all its nodes and resources. Owned by the runtime.
struct RunEnv {
  const Graph* graph = nullptr;
  const OpRegistry* ops = nullptr;
  std::filesystem::path input_dir;   // relative input paths start here
  std::filesystem::path out_dir;     // relative output paths start here
  std::filesystem::path resume_dir;  // a checkpoint to continue from; empty for a fresh run
  MetricSink* metrics = nullptr;
  const std::atomic<bool>* stop_requested = nullptr;  // the user asked to stop (SIGINT)
  std::atomic<bool>* sources_done = nullptr;          // a node has all the input it wants
  std::map<std::string, std::shared_ptr<Resource>> resources;
};

// Everything a kernel may ask about its node. Owned by the runtime; outlives the kernel.
class NodeContext {
 public:
  NodeContext(std::string node, std::string op, std::map<std::string, AttrValue> attrs,
              const RunEnv* env)
      : node_(std::move(node)),
        op_(std::move(op)),
        attrs_(std::move(attrs), "op '" + op_ + "'"),
        env_(env) {}

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
  const std::filesystem::path& out_dir() const { return env_->out_dir; }
  // The checkpoint this run resumes from (weir run --resume), or empty.
  const std::filesystem::path& resume_dir() const { return env_->resume_dir; }
  // How many batches the trainer of that checkpoint had consumed (its trainer_state.json's
  // `data_position`; 0 when it records none), so a training-data reader continues with the next
  // one. 0 when the run does not resume; an error naming the file when it cannot be read.
  StatusOr<int64_t> ResumedDataPosition() const;
  const Graph& graph() const { return *env_->graph; }
  const OpRegistry& ops() const { return *env_->ops; }

  // The resource named by a resource-typed attr, as the type its kind creates.
  template <typename T>
  StatusOr<T*> Resource(const std::string& attr_name) const {
    const std::string& name = attrs_.String(attr_name);
    auto it = env_->resources.find(name);
    if (it == env_->resources.end()) return NotFound("no resource '" + name + "' in this run");
    T* typed = dynamic_cast<T*>(it->second.get());
    if (typed == nullptr)
      return InvalidArgument("resource '" + name + "' is not of the kind this op needs");
    return typed;
  }

  // Writes one line to metrics.jsonl (no-op when the run has no metrics file).
  void Metric(int64_t step, const std::vector<std::pair<std::string, double>>& values) const {
    if (env_->metrics != nullptr) env_->metrics->Write(node_, step, values);
  }

  // True once the user asked the run to stop (SIGINT): sources should stop producing.
  bool stop_requested() const {
    return env_->stop_requested != nullptr && env_->stop_requested->load();
  }
  // Tells every source to stop producing: this node has what it needs (a trainer that reached
  // its last step). The run then drains and finishes normally.
  void FinishSources() const {
    if (env_->sources_done != nullptr) env_->sources_done->store(true);
  }

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
  const RunEnv* env_;
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
