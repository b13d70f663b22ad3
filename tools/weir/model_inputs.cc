#include "model_inputs.h"

#include <fstream>
#include <sstream>

#include "weir/attr.h"
#include "weir/json.h"

namespace weir::cli {

namespace fs = std::filesystem;

namespace {
constexpr char kModelGraph[] = "graphs/models/deepseek_v3.pbtxt";

}  // namespace

// The shipped model graph: <prefix>/share/weir/<kModelGraph>, else the first folder above the
// binary that holds it (the source tree of a build folder), else the source tree weir was built
// from.
StatusOr<fs::path> FindModelGraph() {
  std::error_code ec;
  fs::path exe = fs::read_symlink("/proc/self/exe", ec);
  if (ec) return NotFound(std::string("cannot find ") + kModelGraph + "; pass --graph FILE");
  fs::path bin = exe.parent_path();
  fs::path installed = bin.parent_path() / "share" / "weir" / kModelGraph;
  if (fs::exists(installed, ec)) return installed;
  for (fs::path dir = bin; !dir.empty(); dir = dir.parent_path()) {
    if (fs::exists(dir / kModelGraph, ec)) return dir / kModelGraph;
    if (dir == dir.parent_path()) break;
  }
  // A build folder outside the source tree: the source tree it was built from.
  fs::path source = fs::path(WEIR_SOURCE_DIR) / kModelGraph;
  if (fs::exists(source, ec)) return source;
  return NotFound(std::string("cannot find ") + kModelGraph + " near " + exe.string() +
                  "; pass --graph FILE");
}

namespace fs = std::filesystem;

StatusOr<ModelSpec> ReadModel(const ResourceSpec& resource) {
  ModelSpec spec;
  spec.name = resource.name;
  for (const auto& [key, value] : resource.resolved_attrs) {
    if (key == "function") spec.function = value.func();
    if (key == "attrs") {
      WEIR_ASSIGN_OR_RETURN(spec.attrs, ParseAttrValues(value.s(), resource.loc));
    }
  }
  return spec;
}

StatusOr<ModelSpec> FindModel(const Graph& graph, const std::string& name) {
  const ResourceSpec* found = nullptr;
  for (const ResourceSpec& r : graph.resources) {
    if (r.kind != "model" || (!name.empty() && r.name != name)) continue;
    if (found != nullptr)
      return InvalidArgument("the graph has several model resources; name one with --model");
    found = &r;
  }
  if (found == nullptr)
    return NotFound("the graph has no model resource" +
                    (name.empty() ? "" : " named '" + name + "'"));
  return ReadModel(*found);
}

StatusOr<std::vector<std::vector<int64_t>>> ReadTokenFile(const fs::path& file, int64_t vocab) {
  std::ifstream in(file);
  if (!in) return NotFound("cannot read " + file.string());
  std::vector<std::vector<int64_t>> rows;
  std::string line;
  for (int number = 1; std::getline(in, line); ++number) {
    std::string where = file.string() + ":" + std::to_string(number) + ": ";
    std::istringstream words(line);
    std::vector<int64_t> row;
    std::string word;
    while (words >> word) {
      if (word.find_first_not_of("0123456789") != std::string::npos || word.size() > 18)
        return InvalidArgument(where + "'" + word + "' is not a token id");
      int64_t id = std::stoll(word);
      if (id >= vocab)
        return InvalidArgument(where + "token " + word + " is outside the vocabulary (" +
                               std::to_string(vocab) + " ids)");
      row.push_back(id);
    }
    if (row.empty()) {
      if (line.find_first_not_of(" \t\r") == std::string::npos && in.peek() == EOF) break;
      return InvalidArgument(where + "an empty line; every line holds one sequence");
    }
    if (!rows.empty() && row.size() != rows[0].size())
      return InvalidArgument(where + "has " + std::to_string(row.size()) + " tokens, line 1 has " +
                             std::to_string(rows[0].size()) +
                             "; every sequence must have the same length");
    rows.push_back(std::move(row));
  }
  if (rows.empty()) return InvalidArgument(file.string() + ": no token sequences");
  return rows;
}

StatusOr<ModelSpec> ReadModelJson(const fs::path& dir) {
  fs::path path = dir / "model.json";
  WEIR_ASSIGN_OR_RETURN(auto json, ReadJsonFile(path));
  auto field = [&](const char* key) -> StatusOr<std::string> {
    auto it = json.fields().find(key);
    if (it == json.fields().end() || !it->second.has_string_value())
      return InvalidArgument(path.string() + " has no string '" + key + "'");
    return it->second.string_value();
  };
  ModelSpec model;
  model.name = dir.string();
  WEIR_ASSIGN_OR_RETURN(model.function, field("function"));
  WEIR_ASSIGN_OR_RETURN(std::string attrs, field("attr_string"));
  auto parsed = ParseAttrValues(attrs, SourceLoc{path.string(), 0, 0});
  if (!parsed.ok()) return Status(parsed.status()).Prepend(path.string() + ": attr_string");
  model.attrs = std::move(*parsed);
  return model;
}

}  // namespace weir::cli
