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

}  // namespace weir::testing
