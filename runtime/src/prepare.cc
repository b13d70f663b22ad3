#include "weir/runtime/prepare.h"

namespace weir {

StatusOr<Graph> PrepareGraph(const std::filesystem::path& file,
                             const std::vector<std::string>& sets) {
  PluginLoader& plugins = PluginLoader::Global();
  WEIR_RETURN_IF_ERROR(plugins.LoadDefaults());
  WEIR_ASSIGN_OR_RETURN(Graph graph, LoadGraph(file));
  std::vector<Status> errors;
  for (size_t i = 0; i < graph.plugins.size(); ++i) {
    Status s = plugins.LoadByName(graph.plugins[i], graph.plugin_dirs[i]);
    errors.push_back(s.At(graph.plugin_locs[i]));
  }
  WEIR_RETURN_IF_ERROR(Status::Join(errors));
  WEIR_RETURN_IF_ERROR(ApplyOverrides(graph, sets));
  WEIR_RETURN_IF_ERROR(ResolveGraph(graph, OpRegistry::Global()));
  return graph;
}

}  // namespace weir
