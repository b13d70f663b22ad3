#include "weir/testing/test_util.h"

#include <glog/logging.h>

namespace weir::testing {
namespace {

std::vector<std::string>& ExtraDirs() {
  static auto* dirs = new std::vector<std::string>();
  return *dirs;
}

}  // namespace

bool AddTestPluginDir(const std::string& dir) {
  ExtraDirs().push_back(dir);
  return true;
}

OpRegistry& TestRegistry() {
  static OpRegistry* registry = [] {
    auto* r = new OpRegistry();
    PluginLoader loader(r);
    Status defaults = loader.LoadDefaults();
    CHECK(defaults.ok()) << defaults.ToString();
    for (const std::string& dir : ExtraDirs()) {
      std::error_code ec;
      for (const auto& entry : std::filesystem::directory_iterator(dir, ec)) {
        std::string name = entry.path().filename().string();
        if (!name.starts_with("weir_") || entry.path().extension() != ".so") continue;
        Status s = loader.Load(entry.path());
        CHECK(s.ok()) << s.ToString();
      }
      CHECK(!ec) << "cannot list plugin folder " << dir << ": " << ec.message();
    }
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
