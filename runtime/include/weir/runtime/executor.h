// Runs a resolved stream graph on a oneTBB flow graph.
//
// Each node becomes a flow-graph node running its op's StreamKernel: sources are input_nodes
// behind a limiter_node that bounds how many source items (and everything derived from them) are
// in flight, so a fast source never floods memory; other nodes are function_nodes with the op's
// concurrency (stateful: serial). A node that runs items concurrently still releases its outputs
// in arrival order, so order is preserved along every path unless a node merges several inputs.
//
// When the sources are exhausted, nodes are finished in topological order: Finish() runs once
// every upstream node has finished and every item has been processed. The first error cancels
// the run; it is reported once, with the node's name and place in the graph file. A stop request
// (SIGINT) stops the sources; items in flight complete and nodes finish normally. A watchdog
// fails the run when a node stays inside one call past the hang timeout.
#pragma once

#include <atomic>
#include <filesystem>
#include <functional>
#include <iosfwd>
#include <string>
#include <vector>

#include "weir/graph.h"
#include "weir/op_registry.h"
#include "weir/status.h"
#include "weir/stream_kernel.h"

namespace weir {

class Trace;

struct RunOptions {
  std::filesystem::path out_dir;            // where relative outputs go
  int max_in_flight = 16;                   // per source: items in flight at once
  int threads = 0;                          // 0: every core
  const std::atomic<bool>* stop = nullptr;  // set to stop the run cleanly
  MetricSink* metrics = nullptr;
  std::filesystem::path resume_dir;  // continue from this checkpoint
  const OpRegistry* ops = nullptr;   // null: the global registry
  std::ostream* progress = nullptr;  // null: no progress output
  bool progress_live = false;        // redraw one line (a terminal) or print lines
  double progress_interval_s = 10;   // between plain progress lines
  // The watchdog: a node inside one call (a source producing, a node processing or finishing)
  // for this long fails the run with an error naming it; 0 turns it off.
  double hang_timeout_s = 0;
  // Called from the watchdog with that error. The stuck call cannot be interrupted, so a program
  // that must end (the CLI) reports and exits here; without it, the run ends with the error once
  // the call returns.
  std::function<void(const Status&)> on_hang;
  // Records every kernel call (and the tensor-program nodes inside them) when set.
  Trace* trace = nullptr;
};

struct NodeStats {
  std::string name;
  std::string op;
  uint64_t items_in = 0;
  uint64_t items_out = 0;
  uint64_t rows_in = 0;
  uint64_t rows_out = 0;
  double busy_s = 0;  // summed over concurrent calls
};

struct RunResult {
  Status status;
  bool interrupted = false;
  double wall_s = 0;
  std::vector<NodeStats> nodes;
};

// Runs `graph` (resolved) to completion. Thread-safe to call for different graphs.
RunResult RunGraph(const Graph& graph, const RunOptions& options);

}  // namespace weir
