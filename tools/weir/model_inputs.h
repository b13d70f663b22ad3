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

// The shipped graphs/models/deepseek_v3.pbtxt: <prefix>/share/weir/..., else the first folder
// above the binary that holds it, else the source tree weir was built from.
StatusOr<std::filesystem::path> FindModelGraph();

// The function and attrs of a model folder's model.json (`weir hf import` output and every
// training checkpoint hold one): {"function": ..., "attr_string": "k=v ..."}.
StatusOr<ModelSpec> ReadModelJson(const std::filesystem::path& dir);

// One sequence per line, space-separated ids in [0, vocab), every line the same length; errors
// name the file and the line.
StatusOr<std::vector<std::vector<int64_t>>> ReadTokenFile(const std::filesystem::path& file,
                                                          int64_t vocab);

}  // namespace weir::cli
