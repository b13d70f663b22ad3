// From a graph file to a graph ready to run: the steps `weir check` and `weir run` share.
#pragma once

#include <filesystem>
#include <string>
#include <vector>

#include "weir/graph.h"
#include "weir/plugin_loader.h"

namespace weir {

// Loads the default plugins and the graph's own, the graph with its imports, applies --set
// overrides and resolves the graph against the global op registry.
StatusOr<Graph> PrepareGraph(const std::filesystem::path& file,
                             const std::vector<std::string>& sets);

}  // namespace weir
