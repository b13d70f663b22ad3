#include "test_util.h"

namespace weir::testing {

std::string TestGraph(const std::string& name) {
  return std::string(WEIR_SOURCE_DIR) + "/tests/graphs/" + name;
}

std::string StripGraphDir(const std::string& text) {
  std::string prefix = std::string(WEIR_SOURCE_DIR) + "/tests/graphs/";
  std::string out = text;
  for (size_t at = out.find(prefix); at != std::string::npos; at = out.find(prefix))
    out.erase(at, prefix.size());
  return out;
}

OpRegistry& TestRegistry() {
  static OpRegistry* registry = [] {
    auto* r = new OpRegistry();
    PluginLoader loader(r);
    Status io = loader.Load(std::string(WEIR_PLUGIN_DIR) + "/weir_io.so");
    CHECK(io.ok()) << io.ToString();
    Status nn = loader.Load(std::string(WEIR_PLUGIN_DIR) + "/weir_nn.so");
    CHECK(nn.ok()) << nn.ToString();
    for (const char* name : {"optim", "train"}) {
      Status s = loader.Load(std::string(WEIR_PLUGIN_DIR) + "/weir_" + name + ".so");
      CHECK(s.ok()) << s.ToString();
    }
    Status test_ops = loader.Load(std::string(WEIR_TEST_PLUGIN_DIR) + "/weir_test_ops.so");
    CHECK(test_ops.ok()) << test_ops.ToString();
    return r;
  }();
  return *registry;
}

StatusOr<Graph> LoadTestGraph(const std::string& path, const std::vector<std::string>& sets) {
  WEIR_ASSIGN_OR_RETURN(Graph g, LoadGraph(path));
  WEIR_RETURN_IF_ERROR(ApplyOverrides(g, sets));
  WEIR_RETURN_IF_ERROR(ResolveGraph(g, TestRegistry()));
  return g;
}

double MetricRow::Get(const std::string& key) const {
  for (const auto& [k, v] : values)
    if (k == key) return v;
  return -1;
}

void CapturedMetrics::Write(const std::string& node, int64_t step,
                            const std::vector<std::pair<std::string, double>>& values) {
  std::lock_guard<std::mutex> lock(mu_);
  rows_.push_back({node, step, values});
}

std::vector<MetricRow> CapturedMetrics::rows() const {
  std::lock_guard<std::mutex> lock(mu_);
  return rows_;
}

std::vector<double> CapturedMetrics::Values(const std::string& node, const std::string& key) const {
  std::vector<double> out;
  for (const MetricRow& r : rows())
    if (r.node == node)
      for (const auto& [k, v] : r.values)
        if (k == key) out.push_back(v);
  return out;
}

}  // namespace weir::testing
