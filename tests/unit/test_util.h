// Helpers for weir's own unit tests, on top of the SDK's (weir/testing/test_util.h).
#pragma once

#include <filesystem>
#include <string>
#include <vector>

#include "weir/runtime/executor.h"
#include "weir/testing/test_util.h"

namespace weir::testing {

// tests/graphs/<name> in the source tree.
std::string TestGraph(const std::string& name);
// A path with the tests/graphs/ prefix removed, for stable messages.
std::string StripGraphDir(const std::string& text);

// Loads a graph file with --set style overrides against TestRegistry() and runs it with its
// outputs in out_dir (resuming from `resume` when given). A graph that does not load gives a
// result with that error.
RunResult RunGraphFile(const std::filesystem::path& graph, const std::filesystem::path& out_dir,
                       const std::vector<std::string>& sets = {},
                       const std::filesystem::path& resume = {});

}  // namespace weir::testing
