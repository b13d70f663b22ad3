// Helpers shared by weir's unit tests.
#pragma once

#include <mutex>
#include <string>
#include <vector>

#include "weir/graph.h"
#include "weir/op_registry.h"
#include "weir/plugin_loader.h"
#include "weir/stream_kernel.h"

namespace weir::testing {

// tests/graphs/<name> in the source tree.
std::string TestGraph(const std::string& name);
// A path with the tests/graphs/ prefix removed, for stable messages.
std::string StripGraphDir(const std::string& text);

// A registry holding the io, nn, optim, train and test_ops plugins.
OpRegistry& TestRegistry();

// Loads, overrides and resolves a graph against TestRegistry().
StatusOr<Graph> LoadTestGraph(const std::string& path, const std::vector<std::string>& sets = {});

struct MetricRow {
  std::string node;
  int64_t step;
  std::vector<std::pair<std::string, double>> values;
  double Get(const std::string& key) const;
};

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
