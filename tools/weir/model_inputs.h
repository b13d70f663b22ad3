// What several weir commands read: a model resource's function and attrs from a graph, and token
// sequence files.
#pragma once

#include <filesystem>
#include <map>
#include <string>
#include <vector>

#include "weir/graph.h"

namespace weir::cli {

struct ModelSpec {
  std::string name;      // the resource
  std::string function;  // its tensor function
  std::map<std::string, AttrValue> attrs;
};

// The model resource `name` of a resolved graph (empty: the only model resource).
StatusOr<ModelSpec> FindModel(const Graph& graph, const std::string& name);
// The function and attrs of one model resource.
StatusOr<ModelSpec> ReadModel(const ResourceSpec& resource);

// One sequence per line, space-separated ids in [0, vocab), every line the same length; errors
// name the file and the line.
StatusOr<std::vector<std::vector<int64_t>>> ReadTokenFile(const std::filesystem::path& file,
                                                          int64_t vocab);

}  // namespace weir::cli
