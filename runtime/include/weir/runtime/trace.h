// Traces: what ran where and when, as Chrome trace-event JSON (trace.json), which Perfetto and
// chrome://tracing open. `weir run --trace` records one complete ("X") event per kernel call of
// every stream node (a source producing, a node processing an item or finishing) and, inside
// those calls, one per tensor-program node (a MatMul of a training step, with its phase: forward,
// input gradient B or weight gradient W). pid is the rank (0 until a run has several), tid the
// thread that ran the call.
#pragma once

#include <chrono>
#include <filesystem>
#include <mutex>
#include <string>
#include <vector>

#include "weir/status.h"

namespace weir {

class Trace {
 public:
  Trace();

  // A call that began at `start` and ended now, on this thread. `category` groups events
  // (the op, or "tensor"); `detail` goes into the event's args.
  void Complete(const std::string& name, const std::string& category,
                std::chrono::steady_clock::time_point start, const std::string& detail = "",
                int pid = 0);
  // trace.json: {"traceEvents": [...], "displayTimeUnit": "ms"}, written atomically.
  Status Write(const std::filesystem::path& path) const;
  size_t size() const;

  // The trace the calling thread records into (set while a traced kernel call runs), so code
  // deep inside a call (a tensor program) can add its own events without being handed it.
  static Trace* Current();

 private:
  friend class TraceScope;
  struct Event {
    std::string name, category, detail;
    int pid, tid;
    double start_us, duration_us;
  };
  int ThreadId();

  std::chrono::steady_clock::time_point origin_;
  mutable std::mutex mu_;
  std::vector<Event> events_;
  std::vector<std::pair<size_t, int>> threads_;  // hash of std::thread::id -> small id
};

// Makes `trace` the calling thread's current one for the scope's lifetime (null: none).
class TraceScope {
 public:
  explicit TraceScope(Trace* trace);
  ~TraceScope();
  TraceScope(const TraceScope&) = delete;
  TraceScope& operator=(const TraceScope&) = delete;

 private:
  Trace* previous_;
};

}  // namespace weir
