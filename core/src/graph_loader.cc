// Parsing graph files (text and binary), imports, params and overrides.
#include <google/protobuf/descriptor.h>
#include <google/protobuf/io/tokenizer.h>
#include <google/protobuf/text_format.h>

#include <algorithm>
#include <fstream>
#include <memory>
#include <set>
#include <sstream>

#include "weir/graph.h"
#include "weir/op_registry.h"

namespace weir {
namespace fs = std::filesystem;
using google::protobuf::Descriptor;
using google::protobuf::FieldDescriptor;
using google::protobuf::TextFormat;

namespace {

// Real graphs import a few levels (a preset, its model, shared blocks); a chain of distinct files
// this deep is generated or hostile, and each level holds a parsed file in memory.
constexpr size_t kMaxImportDepth = 64;

// Names are checked by hand, not with std::regex: libstdc++'s recurses once per character, and a
// long name in a hostile file overflowed the stack.
bool IsAsciiLetter(char c) { return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z'); }
bool IsAsciiDigit(char c) { return c >= '0' && c <= '9'; }

// A node name: a letter or '_', then letters, digits, '_', '.' and '-'.
bool IsNodeName(std::string_view s) {
  return !s.empty() && (IsAsciiLetter(s[0]) || s[0] == '_') &&
         std::all_of(s.begin(), s.end(), [](char c) {
           return IsAsciiLetter(c) || IsAsciiDigit(c) || c == '_' || c == '.' || c == '-';
         });
}

// A port: its name or index, letters, digits and '_'.
bool IsPortName(std::string_view s) {
  return !s.empty() && std::all_of(s.begin(), s.end(), [](char c) {
    return IsAsciiLetter(c) || IsAsciiDigit(c) || c == '_';
  });
}

class CollectErrors : public google::protobuf::io::ErrorCollector {
 public:
  explicit CollectErrors(std::string file) : file_(std::move(file)) {}
  void AddError(int line, int column, const std::string& message) override {
    std::string hint = Hint(message);
    std::string text = message;
    if (!hint.empty() && !text.empty() && text.back() == '.') text.pop_back();
    Status s = InvalidArgument("syntax error: " + text + hint);
    s.At(SourceLoc{file_, line + 1, column + 1});
    errors_.push_back(s);
  }
  void AddWarning(int line, int column, const std::string& message) override {
    LOG(WARNING) << file_ << ":" << line + 1 << ":" << column + 1 << ": " << message;
  }
  const std::vector<Status>& errors() const { return errors_; }

 private:
  // For an unknown field: the field meant, or the brace that is probably missing. Protobuf
  // words it: Message type "weir.NodeDef" has no field named "nodes".
  static std::string Hint(const std::string& message) {
    const std::string type_begin = "Message type \"", field_begin = "\" has no field named \"";
    size_t type_at = message.find(type_begin);
    if (type_at == std::string::npos) return "";
    type_at += type_begin.size();
    size_t field_at = message.find(field_begin, type_at);
    if (field_at == std::string::npos) return "";
    std::string type = message.substr(type_at, field_at - type_at);
    field_at += field_begin.size();
    size_t field_end = message.find('"', field_at);
    if (field_end == std::string::npos) return "";
    const Descriptor* d =
        google::protobuf::DescriptorPool::generated_pool()->FindMessageTypeByName(type);
    if (d == nullptr) return "";
    std::string field = message.substr(field_at, field_end - field_at);
    for (const Descriptor* outer : {GraphDef::descriptor(), FunctionDef::descriptor()}) {
      if (outer != d && outer->FindFieldByName(field) != nullptr)
        return " (is a closing '}' missing before it?)";
    }
    std::vector<std::string> names;
    for (int i = 0; i < d->field_count(); ++i) names.push_back(d->field(i)->name());
    return SuggestClosest(field, names);
  }

  std::string file_;
  std::vector<Status> errors_;
};

// Locations inside one file, from protobuf's parse-location tree. Binary files have none.
class Locator {
 public:
  Locator(std::string file, std::shared_ptr<const std::vector<std::string>> lines,
          const TextFormat::ParseInfoTree* tree, const Descriptor* desc)
      : file_(std::move(file)), lines_(std::move(lines)), tree_(tree), desc_(desc) {}

  // The locator of the index-th message in a repeated message field.
  Locator Nested(const char* field, int index) const {
    const FieldDescriptor* f = Field(field);
    const TextFormat::ParseInfoTree* sub = tree_ ? tree_->GetTreeForNested(f, index) : nullptr;
    return Locator(file_, lines_, sub, f->message_type());
  }

  // Where the field's name is written (index = -1 for singular fields).
  SourceLoc Of(const char* field, int index = -1) const {
    if (tree_ == nullptr) return SourceLoc{file_, 0, 0};
    auto loc = tree_->GetLocation(Field(field), index);
    if (loc.line < 0) return SourceLoc{file_, 0, 0};
    return SourceLoc{file_, loc.line + 1, loc.column + 1};
  }

  // The first character inside the quotes of a string field's value.
  SourceLoc StringStart(const char* field, int index = -1) const {
    SourceLoc at = Of(field, index);
    if (!at.known() || at.line > static_cast<int>(lines_->size())) return at;
    const std::string& line = (*lines_)[at.line - 1];
    size_t quote = line.find_first_of("\"'", static_cast<size_t>(at.col - 1));
    if (quote == std::string::npos) return at;
    return SourceLoc{file_, at.line, static_cast<int>(quote) + 2};
  }

  const std::string& file() const { return file_; }

 private:
  const FieldDescriptor* Field(const char* name) const {
    const FieldDescriptor* f = desc_->FindFieldByName(name);
    CHECK(f != nullptr) << desc_->full_name() << " has no field " << name;
    return f;
  }

  std::string file_;
  std::shared_ptr<const std::vector<std::string>> lines_;
  const TextFormat::ParseInfoTree* tree_;
  const Descriptor* desc_;
};

StatusOr<std::vector<WrittenAttr>> ParseWrittenAttrs(
    const google::protobuf::RepeatedPtrField<std::string>& strings, const Locator& at,
    const char* field) {
  std::vector<WrittenAttr> out;
  for (int i = 0; i < strings.size(); ++i) {
    SourceLoc start = at.StringStart(field, i);
    WEIR_ASSIGN_OR_RETURN(std::vector<AttrAssignment> parsed, ParseAttrString(strings[i], start));
    for (AttrAssignment& a : parsed) {
      WrittenAttr w;
      w.key = a.key;
      w.loc = start.Shifted(a.offset);
      w.value_loc = start.Shifted(a.value.offset);
      w.value = std::move(a.value);
      out.push_back(std::move(w));
    }
  }
  return out;
}

StatusOr<Endpoint> ParseEndpoint(const std::string& text, const SourceLoc& loc) {
  Endpoint e;
  e.loc = loc;
  std::string rest = text;
  if (!rest.empty() && rest[0] == '^') {
    e.control = true;
    rest = rest.substr(1);
  }
  size_t colon = rest.find(':');
  e.node = rest.substr(0, colon);
  if (colon != std::string::npos) e.port = rest.substr(colon + 1);
  if (!IsNodeName(e.node) || (colon != std::string::npos && !IsPortName(e.port)) ||
      (e.control && colon != std::string::npos)) {
    Status s =
        InvalidArgument("input '" + text + "' is not of the form 'node', 'node:port' or '^node'");
    s.At(loc);
    return s;
  }
  return e;
}

StatusOr<NodeSpec> ParseNodeSpec(const NodeDef& def, const Locator& at) {
  NodeSpec n;
  n.name = def.name();
  n.op = def.op();
  n.device = def.device();
  n.doc = def.doc();
  n.stage = def.stage();
  n.repeat = def.repeat();
  n.in_flight = def.in_flight();
  n.loc = at.Of("name").known() ? at.Of("name") : SourceLoc{at.file(), 0, 0};
  n.name_loc = at.StringStart("name");
  n.op_loc = at.StringStart("op");
  n.device_loc = at.StringStart("device");
  n.repeat_loc = at.Of("repeat");
  auto fail = [&](Status s) {
    s.InNode(n.name, n.op);
    return s;
  };
  // Dots are allowed so that a resolved graph, whose expanded names hold them, loads again.
  if (n.name.empty()) return fail(InvalidArgument("node has no name").At(n.loc));
  if (!IsNodeName(n.name)) {
    return fail(InvalidArgument("node name must start with a letter or '_' and hold only letters, "
                                "digits, '_', '.' and '-'")
                    .At(n.name_loc));
  }
  if (n.op.empty()) return fail(InvalidArgument("node has no op").At(n.loc));
  if (n.in_flight < 0) {
    return fail(InvalidArgument("in_flight must be >= 0 (0: the run's bound), got " +
                                std::to_string(n.in_flight))
                    .At(at.Of("in_flight")));
  }
  for (int i = 0; i < def.input_size(); ++i) {
    auto e = ParseEndpoint(def.input(i), at.StringStart("input", i));
    if (!e.ok()) return fail(e.status());
    n.inputs.push_back(*e);
  }
  auto attrs = ParseWrittenAttrs(def.attr(), at, "attr");
  if (!attrs.ok()) return fail(attrs.status());
  n.attrs = std::move(attrs).value();
  return n;
}

// The nodes of a graph or function; each bad one adds an error and is left out.
void ParseNodeSpecs(const google::protobuf::RepeatedPtrField<NodeDef>& defs, const Locator& at,
                    std::vector<NodeSpec>* specs, std::vector<Status>* errors) {
  for (int i = 0; i < defs.size(); ++i) {
    auto spec = ParseNodeSpec(defs[i], at.Nested("node", i));
    if (spec.ok()) {
      specs->push_back(std::move(spec).value());
    } else {
      errors->push_back(spec.status());
    }
  }
}

struct ParsedFile {
  fs::path path;
  GraphDef def;
  std::shared_ptr<std::vector<std::string>> lines = std::make_shared<std::vector<std::string>>();
  TextFormat::ParseInfoTree tree;
  bool text = true;
};

// `shown` is how messages name the file.
StatusOr<std::unique_ptr<ParsedFile>> ParseFile(const fs::path& path, const std::string& shown) {
  auto file = std::make_unique<ParsedFile>();
  file->path = path;
  std::ifstream in(path, std::ios::binary);
  if (!in) return NotFound("cannot read graph file " + shown);
  // Graphs are written by people; a file this large is a mistake or hostile, not a model.
  constexpr std::uintmax_t kMaxGraphFileBytes = 64 << 20;
  std::error_code ec;
  if (std::uintmax_t size = fs::file_size(path, ec); !ec && size > kMaxGraphFileBytes)
    return InvalidArgument(shown + " is " + std::to_string(size) +
                           " bytes; a graph file is at most " + std::to_string(kMaxGraphFileBytes) +
                           " bytes");
  std::stringstream buffer;
  buffer << in.rdbuf();
  std::string content = buffer.str();
  file->text = path.extension() != ".pb";
  if (!file->text) {
    if (!file->def.ParseFromString(content))
      return InvalidArgument(shown + ": not a binary GraphDef");
    return file;
  }
  std::istringstream lines(content);
  for (std::string line; std::getline(lines, line);) file->lines->push_back(line);
  TextFormat::Parser parser;
  CollectErrors errors(shown);
  parser.RecordErrorsTo(&errors);
  parser.WriteLocationsTo(&file->tree);
  if (!parser.ParseFromString(content, &file->def)) {
    if (errors.errors().empty()) return InvalidArgument(shown + ": cannot parse");
    return Status::Join(errors.errors());
  }
  return file;
}

// Migrates older graph formats to the current one, one version at a time.
Status UpgradeFormat(GraphDef& def, const SourceLoc& loc) {
  int version = def.format_version() == 0 ? kGraphFormatVersion : def.format_version();
  if (version > kGraphFormatVersion) {
    return InvalidArgument("graph format_version " + std::to_string(version) +
                           " is newer than this weir reads (" +
                           std::to_string(kGraphFormatVersion) + "); upgrade weir")
        .At(loc);
  }
  if (version < 1) {
    return InvalidArgument("graph format_version " + std::to_string(version) + " is invalid")
        .At(loc);
  }
  // Upgraders go here as the format evolves: while (version < kGraphFormatVersion) {...}
  def.set_format_version(kGraphFormatVersion);
  return Status();
}

class GraphFileLoader {
 public:
  explicit GraphFileLoader(Graph* graph) : graph_(graph) {}

  Status LoadRoot(const fs::path& file) {
    std::error_code ec;
    fs::path abs = fs::absolute(file, ec);
    graph_->file = file;
    return Load(abs, /*root=*/true, SourceLoc{});
  }

 private:
  Status Load(const fs::path& path, bool root, const SourceLoc& imported_at,
              const std::string& written = "") {
    std::error_code ec;
    fs::path canon = fs::weakly_canonical(path, ec);
    for (size_t i = 0; i < stack_.size(); ++i) {
      if (stack_[i] == canon) {
        std::string chain;
        for (size_t j = i; j < stack_.size(); ++j) chain += stack_[j].filename().string() + " -> ";
        return InvalidArgument("import cycle: " + chain + canon.filename().string())
            .At(imported_at);
      }
    }
    if (stack_.size() >= kMaxImportDepth) {
      return InvalidArgument("imports nest deeper than " + std::to_string(kMaxImportDepth) +
                             " files")
          .At(imported_at);
    }
    if (!visited_.insert(canon.string()).second) return Status();  // diamond: already merged
    if (!fs::exists(path, ec)) {
      Status s = NotFound(root ? "graph file " + graph_->file.string() + " not found"
                               : "import '" + written + "' not found (no file " +
                                     path.lexically_normal().string() + ")");
      return s.At(imported_at);
    }
    // Reading a device or a pipe may never end (import: "/dev/zero").
    if (!root && !fs::is_regular_file(path, ec)) {
      return InvalidArgument("import '" + written + "' is not a file (" +
                             path.lexically_normal().string() + ")")
          .At(imported_at);
    }
    std::string shown = root ? graph_->file.string() : Relative(path);
    WEIR_ASSIGN_OR_RETURN(auto parsed, ParseFile(path, shown));
    Locator at(shown, parsed->lines, parsed->text ? &parsed->tree : nullptr,
               GraphDef::descriptor());
    GraphDef& def = parsed->def;
    WEIR_RETURN_IF_ERROR(UpgradeFormat(def, at.Of("format_version")));

    stack_.push_back(canon);
    std::vector<Status> errors;
    for (int i = 0; i < def.import_size(); ++i) {
      fs::path child = path.parent_path() / def.import(i);
      errors.push_back(Load(child, /*root=*/false, at.StringStart("import", i), def.import(i)));
    }
    stack_.pop_back();
    WEIR_RETURN_IF_ERROR(Status::Join(errors));

    if (root) {
      graph_->name = def.name();
      graph_->doc = def.doc();
      fs::path input_dir(def.input_dir());
      graph_->input_dir =
          input_dir.is_absolute() ? input_dir : (path.parent_path() / input_dir).lexically_normal();
    }
    for (int i = 0; i < def.plugin_size(); ++i) {
      graph_->plugins.push_back(def.plugin(i));
      graph_->plugin_dirs.push_back(path.parent_path());
      graph_->plugin_locs.push_back(at.StringStart("plugin", i));
    }
    // Params: an importing file's declaration replaces an imported one.
    WEIR_ASSIGN_OR_RETURN(auto params, ParseWrittenAttrs(def.param(), at, "param"));
    for (WrittenAttr& w : params) {
      auto value = InferLiteral(w.value);
      if (!value.ok()) {
        errors.push_back(Status(value.status()).At(w.value_loc).Prepend("param '" + w.key + "'"));
        continue;
      }
      Param p{w.key, *value, w.loc, false};
      bool replaced = false;
      for (Param& existing : graph_->params) {
        if (existing.name == w.key) {
          existing = p;
          replaced = true;
        }
      }
      if (!replaced) graph_->params.push_back(p);
    }
    for (int i = 0; i < def.resource_size(); ++i) {
      const ResourceDef& r = def.resource(i);
      Locator rat = at.Nested("resource", i);
      ResourceSpec spec;
      spec.name = r.name();
      spec.kind = r.kind();
      spec.doc = r.doc();
      spec.loc = rat.Of("name");
      auto attrs = ParseWrittenAttrs(r.attr(), rat, "attr");
      if (!attrs.ok()) {
        errors.push_back(attrs.status());
        continue;
      }
      spec.attrs = std::move(attrs).value();
      for (const ResourceSpec& existing : graph_->resources) {
        if (existing.name == spec.name) {
          errors.push_back(AlreadyExists("resource '" + spec.name + "' is already defined at " +
                                         existing.loc.ToString())
                               .At(spec.loc));
        }
      }
      graph_->resources.push_back(std::move(spec));
    }
    for (int i = 0; i < def.function_size(); ++i) {
      errors.push_back(
          AddFunction(def.function(i), at.Nested("function", i), at.Of("function", i)));
    }
    if (root) ParseNodeSpecs(def.node(), at, &graph_->node_specs, &errors);
    return Status::Join(errors);
  }

  Status AddFunction(const FunctionDef& def, const Locator& at, const SourceLoc& written_at) {
    FunctionSpec f;
    f.name = def.name();
    f.doc = def.doc();
    f.def = def;
    f.loc = at.Of("name");
    if (f.name.empty()) return InvalidArgument("function has no name").At(written_at);
    auto it = graph_->functions.find(f.name);
    if (it != graph_->functions.end()) {
      return AlreadyExists("function '" + f.name + "' is already defined at " +
                           it->second.loc.ToString())
          .At(f.loc);
    }
    f.inputs.assign(def.input().begin(), def.input().end());
    for (int i = 0; i < def.output_size(); ++i) {
      const std::string& text = def.output(i);
      SourceLoc loc = at.StringStart("output", i);
      size_t eq = text.find('=');
      if (eq == std::string::npos) {
        return InvalidArgument("function output '" + text + "' must be written name=node:port")
            .At(loc);
      }
      FunctionSpec::Output out;
      out.name = text.substr(0, eq);
      WEIR_ASSIGN_OR_RETURN(
          out.source, ParseEndpoint(text.substr(eq + 1), loc.Shifted(static_cast<int>(eq) + 1)));
      f.outputs.push_back(std::move(out));
    }
    WEIR_ASSIGN_OR_RETURN(f.attrs, ParseWrittenAttrs(def.attr(), at, "attr"));
    for (const WrittenAttr& a : f.attrs) {
      if (a.value.kind == Literal::kParam) {
        return InvalidArgument("function attr '" + a.key +
                               "' needs a literal default, not a param reference")
            .At(a.value_loc);
      }
    }
    std::vector<Status> errors;
    ParseNodeSpecs(def.node(), at, &f.nodes, &errors);
    graph_->functions.emplace(f.name, std::move(f));
    return Status::Join(errors);
  }

  // Paths of imported files as the user would write them, relative to the root file's folder.
  std::string Relative(const fs::path& path) const {
    fs::path root_dir = graph_->file.parent_path();
    fs::path rel = root_dir / fs::relative(path, fs::absolute(root_dir));
    return rel.lexically_normal().string();
  }

  Graph* graph_;
  std::vector<fs::path> stack_;
  std::set<std::string> visited_;
};

}  // namespace

std::string Endpoint::ToString() const {
  std::string out = (control ? "^" : "") + node;
  if (!port.empty()) out += ":" + port;
  return out;
}

const AttrValue* Node::FindAttr(const std::string& key) const {
  for (const auto& [k, v] : attrs)
    if (k == key) return &v;
  return nullptr;
}

const Param* Graph::FindParam(const std::string& name) const {
  for (const Param& p : params)
    if (p.name == name) return &p;
  return nullptr;
}

int Graph::FindNode(const std::string& name) const {
  for (size_t i = 0; i < nodes.size(); ++i)
    if (nodes[i].name == name) return static_cast<int>(i);
  return -1;
}

StatusOr<Graph> LoadGraph(const fs::path& file) {
  Graph graph;
  GraphFileLoader loader(&graph);
  WEIR_RETURN_IF_ERROR(loader.LoadRoot(file));
  return graph;
}

Status ApplyOverrides(Graph& graph, const std::vector<std::string>& sets) {
  std::vector<Status> errors;
  for (const std::string& set : sets) {
    size_t eq = set.find('=');
    if (eq == std::string::npos || eq == 0) {
      errors.push_back(InvalidArgument("--set " + set + ": expected key=value"));
      continue;
    }
    std::string key = set.substr(0, eq);
    Param* param = nullptr;
    std::vector<std::string> names;
    for (Param& p : graph.params) {
      names.push_back(p.name);
      if (p.name == key) param = &p;
    }
    if (param == nullptr) {
      std::string known;
      for (const std::string& n : names) known += (known.empty() ? "" : ", ") + n;
      errors.push_back(
          InvalidArgument("--set " + set + ": graph " + graph.file.string() + " has no param '" +
                          key + "'" + SuggestClosest(key, names) +
                          (known.empty() ? " (it has none)" : " (params: " + known + ")")));
      continue;
    }
    auto lit = ParseLiteral(set.substr(eq + 1));
    // An empty list declares no element type: the override's own list gives it.
    bool untyped = param->value.has_list() && param->value.list().value_size() == 0;
    StatusOr<AttrValue> value = !lit.ok() ? StatusOr<AttrValue>(lit.status())
                                : untyped ? InferLiteral(*lit)
                                          : CoerceLiteral(*lit, InferredType(param->value));
    if (!value.ok()) {
      errors.push_back(
          InvalidArgument("--set " + set + ": param '" + key + "' " + value.status().message()));
      continue;
    }
    param->value = *value;
    param->overridden = true;
  }
  return Status::Join(errors);
}

std::string GraphDefToText(const GraphDef& def) {
  std::string out;
  TextFormat::Printer printer;
  printer.SetUseShortRepeatedPrimitives(false);
  printer.PrintToString(def, &out);
  return out;
}

}  // namespace weir
