// Traces: what ran where and when, as Chrome trace-event JSON (trace.json), which Perfetto and
// chrome://tracing open. `weir run --trace` records one complete ("X") event per kernel call of
// every stream node (a source producing, a node processing an item or finishing) and, inside
// those calls, one per tensor-program node (a MatMul of a training step, with its phase: forward,
// input gradient B or weight gradient W), and flow arrows from pipeline sends to their receives.
// pid is the rank that ran the call — a virtual rank's
// thread sets its own (TraceScope), a process launched as one of several ranks sets the
// process's (SetProcessRank) — and tid the thread.
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
                int pid = -1);  // -1: CurrentRank()
  // One end of an arrow from a send to its receive (a flow event): `start` at the sender, inside
  // the send's event, the other end inside the receive's, both with the same `id`. Perfetto
  // draws the arrow between the two events.
  void Flow(const std::string& name, uint64_t id, bool start,
            std::chrono::steady_clock::time_point at, int pid = -1);
  // trace.json: {"traceEvents": [...], "displayTimeUnit": "ms"}, written atomically.
  Status Write(const std::filesystem::path& path) const;
  size_t size() const;

  // The trace the calling thread records into (set while a traced kernel call runs), so code
  // deep inside a call (a tensor program) can add its own events without being handed it.
  static Trace* Current();
  // The rank the calling thread works for: its TraceScope's, else the process's (0 by default).
  static int CurrentRank();
  static void SetProcessRank(int rank);

 private:
  friend class TraceScope;
  struct Event {
    std::string name, category, detail;
    int pid, tid;
    double start_us, duration_us;
    char phase = 'X';  // X: a complete event; s, f: a flow's start and finish
    uint64_t flow_id = 0;
  };
  int ThreadId();

  std::chrono::steady_clock::time_point origin_;
  mutable std::mutex mu_;
  std::vector<Event> events_;
  std::vector<std::pair<size_t, int>> threads_;  // hash of std::thread::id -> small id
};

// Makes `trace` the calling thread's current one for the scope's lifetime (null: none), and, with
// rank >= 0, the thread a virtual rank's.
class TraceScope {
 public:
  explicit TraceScope(Trace* trace, int rank = -1);
  ~TraceScope();
  TraceScope(const TraceScope&) = delete;
  TraceScope& operator=(const TraceScope&) = delete;

 private:
  Trace* previous_;
  int previous_rank_;
};

}  // namespace weir
