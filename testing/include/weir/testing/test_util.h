// Test helpers for weir and for plugins built against the installed SDK (library weir::testing,
// which needs GoogleTest).
#pragma once

#include <mutex>
#include <string>
#include <vector>

#include "weir/graph.h"
#include "weir/op_registry.h"
#include "weir/plugin_loader.h"
#include "weir/stream_kernel.h"

namespace weir::testing {

// Adds a folder whose plugins TestRegistry() loads too (a plugin's own build folder). Call it
// before the first TestRegistry(), for example from a static initializer; returns true so it can
// initialize one.
bool AddTestPluginDir(const std::string& dir);

// A registry holding weir's default plugins (the folder beside libweir_core), every plugin on
// $WEIR_PLUGIN_PATH and every plugin in the folders given to AddTestPluginDir. Loaded once;
// a plugin that fails to load fails the test process with its error.
OpRegistry& TestRegistry();

// Loads, overrides (`--set` style "key=value" strings) and resolves a graph against
// TestRegistry().
StatusOr<Graph> LoadTestGraph(const std::string& path, const std::vector<std::string>& sets = {});

struct MetricRow {
  std::string node;
  int64_t step;
  std::vector<std::pair<std::string, double>> values;
  double Get(const std::string& key) const;  // -1 when absent
};

// A MetricSink that keeps every row, for asserting on what a run reported.
class CapturedMetrics : public MetricSink {
 public:
  void Write(const std::string& node, int64_t step,
             const std::vector<std::pair<std::string, double>>& values) override;
  std::vector<MetricRow> rows() const;
  // Values of `key` written by `node`, in write order.
  std::vector<double> Values(const std::string& node, const std::string& key) const;

 private:
  mutable std::mutex mu_;
  std::vector<MetricRow> rows_;
};

}  // namespace weir::testing
