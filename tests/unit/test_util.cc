#include "test_util.h"

namespace weir::testing {

// The test_ops plugin joins the default plugins in TestRegistry().
static const bool kTestOps = AddTestPluginDir(WEIR_TEST_PLUGIN_DIR);

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

RunResult RunGraphFile(const std::filesystem::path& graph, const std::filesystem::path& out_dir,
                       const std::vector<std::string>& sets, const std::filesystem::path& resume) {
  auto g = LoadTestGraph(graph.string(), sets);
  if (!g.ok()) {
    RunResult failed;
    failed.status = g.status();
    return failed;
  }
  RunOptions options;
  options.out_dir = out_dir;
  options.ops = &TestRegistry();
  options.resume_dir = resume;
  return RunGraph(*g, options);
}

}  // namespace weir::testing
