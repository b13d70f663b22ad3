#include "viz_graph.h"

#include <graphviz/cgraph.h>
#include <graphviz/gvc.h>

#include <algorithm>
#include <filesystem>
#include <functional>
#include <map>
#include <set>
#include <sstream>

#include "model_inputs.h"
#include "weir/json.h"
#include "weir/runtime/program.h"

namespace weir::cli {

namespace {

const char* KindName(VizUnit::Kind kind) {
  switch (kind) {
    case VizUnit::kStream:
      return "stream";
    case VizUnit::kResource:
      return "resource";
    case VizUnit::kCall:
      return "call";
    case VizUnit::kRepeat:
      return "repeat";
    case VizUnit::kCopy:
      return "copy";
    case VizUnit::kOp:
      return "op";
    case VizUnit::kArgument:
      return "argument";
    case VizUnit::kResult:
      return "result";
  }
  return "op";
}

std::vector<std::string> SplitPath(const std::string& name) {
  std::vector<std::string> parts;
  std::stringstream in(name);
  for (std::string part; std::getline(in, part, '.');) parts.push_back(part);
  return parts;
}

const NodeSpec* FindSpec(const FunctionSpec& f, const std::string& name) {
  for (const NodeSpec& s : f.nodes)
    if (s.name == name) return &s;
  return nullptr;
}

bool IsRepeated(const NodeSpec& s) {
  if (s.repeat != 0) return true;
  for (const WrittenAttr& w : s.attrs)
    if (w.key == "repeat") return true;
  return false;
}

// The function a call node runs. `$param` calls name it through an attr this picture does not
// evaluate: the function is the one that defines the next node on the path (at the op's place in
// the file when that node is the op itself).
const FunctionSpec* Callee(const Graph& graph, const NodeSpec& call,
                           const std::vector<std::string>& path, size_t next,
                           const SourceLoc& node_loc) {
  if (auto it = graph.functions.find(call.op); it != graph.functions.end()) return &it->second;
  if (call.op.empty() || call.op[0] != '$' || next >= path.size()) return nullptr;
  const FunctionSpec* found = nullptr;
  for (const auto& [name, f] : graph.functions) {
    const NodeSpec* s = FindSpec(f, path[next]);
    if (s == nullptr) continue;
    bool is_the_op = next + 1 == path.size();
    if (!is_the_op || (s->loc.file == node_loc.file && s->loc.line == node_loc.line)) return &f;
    if (found == nullptr) found = &f;
  }
  return found;
}

class Builder {
 public:
  Builder(const Graph& graph, VizGraph& viz) : graph_(graph), viz_(viz) {}

  void AddStreamNodes() {
    for (const Node& n : graph_.nodes) {
      VizUnit u;
      u.kind = VizUnit::kStream;
      u.name = u.label = n.name;
      u.op = n.op;
      u.stage = n.stage;
      u.device = n.device;
      u.doc = n.doc;
      u.attrs = n.attrs;
      u.entry = n.entry;
      for (const PortDef& p : n.entry->def.input()) u.inputs.push_back({p.name(), p.type()});
      for (const PortDef& p : n.entry->def.output()) u.outputs.push_back({p.name(), p.type()});
      stream_units_.push_back(Add(std::move(u)));
    }
    for (size_t i = 0; i < graph_.nodes.size(); ++i) {
      for (const Node::Input& in : graph_.nodes[i].inputs) {
        const OpDef& from = graph_.nodes[static_cast<size_t>(in.node)].entry->def;
        std::string label =
            in.port < from.output_size() ? from.output(in.port).name() : std::to_string(in.port);
        viz_.edges.push_back(
            {stream_units_[static_cast<size_t>(in.node)], stream_units_[i], label, false});
      }
      for (int c : graph_.nodes[i].controls)
        viz_.edges.push_back({stream_units_[static_cast<size_t>(c)], stream_units_[i], "", true});
    }
  }

  // Nests each model resource's function inside the first node that names the resource, or in
  // a box of its own.
  void AddModels() {
    for (const ResourceSpec& r : graph_.resources) {
      if (r.kind != "model") continue;
      int host = -1;
      for (size_t i = 0; i < graph_.nodes.size() && host < 0; ++i) {
        const Node& n = graph_.nodes[i];
        for (const AttrDef& d : n.entry->def.attr()) {
          const AttrValue* v = n.FindAttr(d.name());
          if (d.type() == ATTR_RESOURCE && v != nullptr && v->s() == r.name) {
            host = stream_units_[i];
            break;
          }
        }
      }
      if (host < 0) {
        VizUnit u;
        u.kind = VizUnit::kResource;
        u.name = u.label = r.name;
        u.op = r.kind;
        u.doc = r.doc;
        u.attrs = r.resolved_attrs;
        host = Add(std::move(u));
      }
      Status added = AddModel(r, host);
      if (!added.ok()) viz_.notes.push_back("model '" + r.name + "': " + added.ToString());
    }
  }

 private:
  int Add(VizUnit u) {
    viz_.units.push_back(std::move(u));
    return static_cast<int>(viz_.units.size()) - 1;
  }

  int64_t ParamInt(const std::string& name, int64_t fallback) const {
    const Param* p = graph_.FindParam(name);
    return p != nullptr && p->value.value_case() == AttrValue::kI ? p->value.i() : fallback;
  }

  Status AddModel(const ResourceSpec& r, int host) {
    WEIR_ASSIGN_OR_RETURN(ModelSpec model, ReadModel(r));
    auto function = graph_.functions.find(model.function);
    if (function == graph_.functions.end())
      return NotFound("no function '" + model.function + "' in the graph");
    WEIR_ASSIGN_OR_RETURN(
        FunctionInstance fn,
        InstantiateFunction(graph_, model.function, model.attrs, OpRegistry::Global()));
    // Types from shape inference over the inference program of token ids [batch, seq].
    TensorType token_type{DT_I64, {ParamInt("batch_size", 1), ParamInt("seq_len", 4096)}};
    std::vector<TensorType> arg_types(fn.inputs.size(), token_type);
    std::map<std::string, std::vector<TensorType>> types;
    std::map<std::string, std::vector<VizPort>> params;
    auto program = Program::Build(graph_, model.function, model.attrs, arg_types,
                                  OpRegistry::Global(), ProgramOptions());
    if (program.ok()) {
      types = (*program)->ForwardTypes();
      for (const ParamInfo& p : (*program)->params()) {
        size_t dot = p.name.rfind('.');
        params[p.name.substr(0, dot)].push_back({p.name.substr(dot + 1), p.type.ToString()});
      }
    } else {
      viz_.notes.push_back("model '" + r.name + "': no shapes: " + program.status().ToString());
      arg_types.assign(fn.inputs.size(), TensorType{DT_I64, {}});
    }
    auto type_text = [&](const std::string& node, int port) -> std::string {
      auto it = types.find(node);
      return it == types.end() || port >= static_cast<int>(it->second.size())
                 ? ""
                 : it->second[static_cast<size_t>(port)].ToString();
    };

    VizUnit& h = viz_.units[static_cast<size_t>(host)];
    h.open = true;
    if (h.doc.empty()) h.doc = function->second.doc;
    std::vector<int> args;
    for (size_t k = 0; k < fn.inputs.size(); ++k) {
      VizUnit u;
      u.kind = VizUnit::kArgument;
      u.name = u.label = fn.inputs[k];
      u.op = model.function + " input";
      u.parent = host;
      u.outputs = {{fn.inputs[k], program.ok() ? arg_types[k].ToString() : ""}};
      args.push_back(Add(std::move(u)));
    }
    std::map<std::string, int> groups;
    std::vector<int> op_units;
    for (const Node& n : fn.nodes) {
      VizUnit u;
      u.kind = VizUnit::kOp;
      u.name = n.name;
      u.op = n.op;
      u.stage = n.stage;
      u.device = n.device;
      u.attrs = n.attrs;
      u.entry = n.entry;
      u.params = params[n.name];
      u.parent = Place(function->second, host, n, groups, u.label);
      const OpDef& def = n.entry->def;
      auto out_types = types.find(n.name);
      size_t outputs = out_types == types.end() ? static_cast<size_t>(def.output_size())
                                                : out_types->second.size();
      for (size_t k = 0; k < outputs; ++k) {
        int port =
            static_cast<int>(std::min<size_t>(k, static_cast<size_t>(def.output_size()) - 1));
        std::string name = def.output(port).name();
        if (static_cast<int>(k) != port || def.output(port).count_attr().size() > 0)
          name += std::to_string(k);
        u.outputs.push_back({name, type_text(n.name, static_cast<int>(k))});
      }
      for (const Node::Input& in : n.inputs) {
        int port = std::min(in.slot, def.input_size() - 1);
        std::string type = in.node >= 0
                               ? type_text(fn.nodes[static_cast<size_t>(in.node)].name, in.port)
                           : program.ok() ? arg_types[static_cast<size_t>(-1 - in.node)].ToString()
                                          : "";
        u.inputs.push_back({port >= 0 ? def.input(port).name() : "", type});
      }
      op_units.push_back(Add(std::move(u)));
    }
    for (size_t k = 0; k < fn.nodes.size(); ++k) {
      const Node& n = fn.nodes[k];
      for (const Node::Input& in : n.inputs) {
        bool arg = in.node < 0;
        int from =
            arg ? args[static_cast<size_t>(-1 - in.node)] : op_units[static_cast<size_t>(in.node)];
        std::string label = arg ? viz_.units[static_cast<size_t>(from)].outputs[0].type
                                : type_text(fn.nodes[static_cast<size_t>(in.node)].name, in.port);
        viz_.edges.push_back({from, op_units[k], label, false});
      }
      for (int c : n.controls)
        viz_.edges.push_back({op_units[static_cast<size_t>(c)], op_units[k], "", true});
    }
    for (const FunctionInstance::Output& out : fn.outputs) {
      bool arg = out.node < 0;
      int from =
          arg ? args[static_cast<size_t>(-1 - out.node)] : op_units[static_cast<size_t>(out.node)];
      std::string type = arg ? viz_.units[static_cast<size_t>(from)].outputs[0].type
                             : type_text(fn.nodes[static_cast<size_t>(out.node)].name, out.port);
      VizUnit u;
      u.kind = VizUnit::kResult;
      u.name = u.label = out.name;
      u.op = model.function + " output";
      u.parent = host;
      u.inputs = {{out.name, type}};
      int result = Add(std::move(u));
      viz_.edges.push_back({from, result, type, false});
      if (viz_.units[static_cast<size_t>(host)].anchor_out < 0)
        viz_.units[static_cast<size_t>(host)].anchor_out = result;
    }
    if (!args.empty()) viz_.units[static_cast<size_t>(host)].anchor_in = args[0];
    for (auto& [name, unit] : groups) {
      VizUnit& g = viz_.units[static_cast<size_t>(unit)];
      if (g.kind != VizUnit::kRepeat) continue;
      for (const VizUnit& c : viz_.units) g.copies += c.parent == unit;
    }
    return Status();
  }

  // The call group an op of the function instance belongs to, following its name down the
  // calls ("moe_layers.3.attn.wq_a": repeat moe_layers, its copy 3, call attn); sets `label` to
  // the op's own name.
  int Place(const FunctionSpec& root, int host, const Node& n, std::map<std::string, int>& groups,
            std::string& label) {
    std::vector<std::string> path = SplitPath(n.name);
    const FunctionSpec* f = &root;
    int parent = host;
    std::string prefix;
    size_t j = 0;
    while (j + 1 < path.size()) {
      const NodeSpec* call = FindSpec(*f, path[j]);
      if (call == nullptr) break;
      bool repeated = IsRepeated(*call);
      const FunctionSpec* callee = Callee(graph_, *call, path, j + (repeated ? 2 : 1), n.loc);
      if (callee == nullptr || (repeated && j + 2 >= path.size())) break;
      prefix += (prefix.empty() ? "" : ".") + path[j];
      parent = Group(groups, prefix, path[j], repeated ? VizUnit::kRepeat : VizUnit::kCall, *call,
                     *callee, parent);
      ++j;
      if (repeated) {
        prefix += "." + path[j];
        parent = Group(groups, prefix, path[j - 1] + "." + path[j], VizUnit::kCopy, *call, *callee,
                       parent);
        ++j;
      }
      f = callee;
    }
    label.clear();
    for (size_t k = j; k < path.size(); ++k) label += (k > j ? "." : "") + path[k];
    return parent;
  }

  int Group(std::map<std::string, int>& groups, const std::string& name, const std::string& label,
            VizUnit::Kind kind, const NodeSpec& call, const FunctionSpec& callee, int parent) {
    if (auto it = groups.find(name); it != groups.end()) return it->second;
    VizUnit u;
    u.kind = kind;
    u.name = name;
    u.label = label;
    u.op = callee.name;
    u.doc = callee.doc;
    u.parent = parent;
    u.stage = call.stage;
    u.device = call.device;
    for (const std::string& in : callee.inputs) u.inputs.push_back({in, ""});
    for (const FunctionSpec::Output& out : callee.outputs) u.outputs.push_back({out.name, ""});
    int id = Add(std::move(u));
    groups[name] = id;
    return id;
  }

  const Graph& graph_;
  VizGraph& viz_;
  std::vector<int> stream_units_;
};

std::string Ports(const std::vector<VizPort>& ports) {
  std::string out = "[";
  for (size_t i = 0; i < ports.size(); ++i)
    out += (i ? "," : "") + std::string("[") + JsonQuote(ports[i].name) + "," +
           JsonQuote(ports[i].type) + "]";
  return out + "]";
}

// Resolved attrs in schema order, each with whether it holds the schema's default.
std::string Attrs(const VizUnit& u) {
  std::string out = "[";
  auto add = [&](const std::string& key, const AttrValue& v, bool is_default) {
    out += (out.size() > 1 ? "," : "") + std::string("[") + JsonQuote(key) + "," +
           JsonQuote(FormatAttrValue(v)) + "," + (is_default ? "1" : "0") + "]";
  };
  if (u.entry == nullptr) {
    for (const auto& [key, v] : u.attrs) add(key, v, false);
    return out + "]";
  }
  std::map<std::string, const AttrValue*> given;
  for (const auto& [key, v] : u.attrs) given[key] = &v;
  for (const AttrDef& d : u.entry->def.attr()) {
    auto it = given.find(d.name());
    bool has_default = AttrValueIsSet(d.default_value());
    if (it == given.end()) {
      if (has_default) add(d.name(), d.default_value(), true);
      continue;
    }
    add(d.name(), *it->second,
        has_default && FormatAttrValue(*it->second) == FormatAttrValue(d.default_value()));
  }
  return out + "]";
}

std::string OpSchema(const OpDef& def) {
  std::string out = "{\"doc\":" + JsonQuote(def.doc()) + ",\"plugin\":" +
                    JsonQuote(std::filesystem::path(def.plugin()).filename().string()) +
                    ",\"kind\":" + JsonQuote(def.kind() == OpDef::STREAM ? "stream" : "tensor");
  auto ports = [](const auto& list) {
    std::string s = "[";
    for (int i = 0; i < list.size(); ++i)
      s += (i ? "," : "") + std::string("[") + JsonQuote(list[i].name()) + "," +
           JsonQuote(list[i].doc()) + "]";
    return s + "]";
  };
  out += ",\"inputs\":" + ports(def.input()) + ",\"outputs\":" + ports(def.output());
  out += ",\"attrs\":{";
  for (int i = 0; i < def.attr_size(); ++i) {
    const AttrDef& a = def.attr(i);
    out += (i ? "," : "") + JsonQuote(a.name()) + ":" + JsonQuote(a.doc());
  }
  return out + "}}";
}

// Whether each unit is drawn open, and whether it has children.
struct Openness {
  std::vector<bool> open, group;
  Openness(const VizGraph& viz, bool expand) : open(viz.units.size()), group(viz.units.size()) {
    for (size_t u = 0; u < viz.units.size(); ++u) {
      int p = viz.units[u].parent;
      if (p >= 0) group[static_cast<size_t>(p)] = true;
    }
    for (size_t u = 0; u < viz.units.size(); ++u)
      open[u] = group[u] && (expand || viz.units[u].open);
  }
};

const char* PluginColor(const std::string& op) {
  static const std::map<std::string, const char*> colors = {
      {"nn", "#dbeafe"},    {"moe", "#fde2e4"},       {"io", "#e0f2e9"},    {"data", "#fef3c7"},
      {"dedup", "#ede9fe"}, {"tokenizer", "#fce7f3"}, {"train", "#ffedd5"}, {"optim", "#e0e7ff"}};
  auto it = colors.find(op.substr(0, op.find('.')));
  return it == colors.end() ? "#f1f5f9" : it->second;
}

std::string DotQuote(const std::string& s) {
  std::string out = "\"";
  for (char c : s) {
    if (c == '\n') {
      out += "\\n";
      continue;
    }
    if (c == '"' || c == '\\') out += '\\';
    out += c;
  }
  return out + "\"";
}

}  // namespace

StatusOr<VizGraph> BuildVizGraph(const Graph& graph) {
  VizGraph viz;
  viz.name = graph.name;
  viz.file = graph.file.string();
  viz.doc = graph.doc;
  Builder builder(graph, viz);
  builder.AddStreamNodes();
  builder.AddModels();
  return viz;
}

std::string VizJson(const VizGraph& viz, bool expand) {
  std::string out = "{\"name\":" + JsonQuote(viz.name) + ",\"file\":" + JsonQuote(viz.file) +
                    ",\"doc\":" + JsonQuote(viz.doc) + ",\"expand\":" + (expand ? "true" : "false");
  out += ",\"notes\":[";
  for (size_t i = 0; i < viz.notes.size(); ++i) out += (i ? "," : "") + JsonQuote(viz.notes[i]);
  out += "],\"units\":[";
  std::map<std::string, const OpDef*> ops;
  for (size_t i = 0; i < viz.units.size(); ++i) {
    const VizUnit& u = viz.units[i];
    if (u.entry != nullptr) ops[u.op] = &u.entry->def;
    out += (i ? ",{" : "{") + std::string("\"k\":") + JsonQuote(KindName(u.kind)) +
           ",\"n\":" + JsonQuote(u.name) + ",\"l\":" + JsonQuote(u.label) +
           ",\"o\":" + JsonQuote(u.op) + ",\"p\":" + std::to_string(u.parent);
    if (u.open) out += ",\"open\":1";
    if (u.copies) out += ",\"c\":" + std::to_string(u.copies);
    if (u.stage) out += ",\"s\":" + std::to_string(u.stage);
    if (!u.device.empty()) out += ",\"d\":" + JsonQuote(u.device);
    if (!u.doc.empty()) out += ",\"doc\":" + JsonQuote(u.doc);
    if (!u.attrs.empty() || u.entry != nullptr) out += ",\"a\":" + Attrs(u);
    if (!u.inputs.empty()) out += ",\"i\":" + Ports(u.inputs);
    if (!u.outputs.empty()) out += ",\"out\":" + Ports(u.outputs);
    if (!u.params.empty()) out += ",\"w\":" + Ports(u.params);
    if (u.anchor_in >= 0) out += ",\"ai\":" + std::to_string(u.anchor_in);
    if (u.anchor_out >= 0) out += ",\"ao\":" + std::to_string(u.anchor_out);
    out += "}";
  }
  out += "],\"edges\":[";
  for (size_t i = 0; i < viz.edges.size(); ++i) {
    const VizEdge& e = viz.edges[i];
    out += (i ? ",[" : "[") + std::to_string(e.from) + "," + std::to_string(e.to) + "," +
           JsonQuote(e.label) + (e.control ? ",1]" : "]");
  }
  out += "],\"ops\":{";
  bool first = true;
  for (const auto& [name, def] : ops) {
    out += (first ? "" : ",") + JsonQuote(name) + ":" + OpSchema(*def);
    first = false;
  }
  return out + "}}";
}

std::string VizDot(const VizGraph& viz, bool expand) {
  Openness state(viz, expand);
  size_t n = viz.units.size();
  // Each unit drawn stands for itself and everything inside it when it is closed.
  std::vector<int> shown(n, -1);
  for (size_t u = 0; u < n; ++u) {
    int p = viz.units[u].parent;
    if (p < 0) {
      shown[u] = static_cast<int>(u);
    } else {
      int sp = shown[static_cast<size_t>(p)];
      shown[u] = sp != p || !state.open[static_cast<size_t>(p)] ? sp : static_cast<int>(u);
    }
  }
  std::vector<std::vector<int>> children(n);
  std::vector<int> roots;
  for (size_t u = 0; u < n; ++u) {
    if (shown[u] != static_cast<int>(u)) continue;
    int p = viz.units[u].parent;
    (p < 0 ? roots : children[static_cast<size_t>(p)]).push_back(static_cast<int>(u));
  }
  std::ostringstream dot;
  dot << "digraph " << DotQuote(viz.name.empty() ? "graph" : viz.name) << " {\n"
      << "  compound=true; rankdir=TB; nodesep=0.25; ranksep=0.35;\n"
      << "  node [shape=box style=\"rounded,filled\" fontname=\"Helvetica\" fontsize=10];\n"
      << "  edge [fontname=\"Helvetica\" fontsize=8 color=\"#64748b\"];\n";
  std::function<void(int, int)> emit = [&](int u, int depth) {
    const VizUnit& unit = viz.units[static_cast<size_t>(u)];
    std::string indent(static_cast<size_t>(2 * depth), ' ');
    std::string title = unit.label + (unit.copies ? " ×" + std::to_string(unit.copies) : "");
    if (state.open[static_cast<size_t>(u)]) {
      dot << indent << "subgraph cluster_" << u << " {\n"
          << indent << "  label=" << DotQuote(title + " · " + unit.op)
          << "; style=\"rounded,dashed\"; color=\"#94a3b8\"; fontname=\"Helvetica\";\n";
      for (int c : children[static_cast<size_t>(u)]) emit(c, depth + 1);
      dot << indent << "}\n";
      return;
    }
    bool folded = state.group[static_cast<size_t>(u)];
    dot << indent << "u" << u << " [label=" << DotQuote(title + "\n" + unit.op) << " fillcolor=\""
        << (folded ? "#e2e8f0" : PluginColor(unit.op)) << "\"" << (folded ? " peripheries=2" : "")
        << "];\n";
  };
  for (int r : roots) emit(r, 1);
  std::set<std::pair<int, int>> drawn;
  for (const VizEdge& e : viz.edges) {
    int from = shown[static_cast<size_t>(e.from)], to = shown[static_cast<size_t>(e.to)];
    if (state.open[static_cast<size_t>(from)])
      from = viz.units[static_cast<size_t>(from)].anchor_out;
    if (to >= 0 && state.open[static_cast<size_t>(to)])
      to = viz.units[static_cast<size_t>(to)].anchor_in;
    if (from < 0 || to < 0 || from == to || !drawn.insert({from, to}).second) continue;
    dot << "  u" << from << " -> u" << to << " [label=" << DotQuote(e.label)
        << (e.control ? " style=dashed" : "") << "];\n";
  }
  dot << "}\n";
  return dot.str();
}

StatusOr<std::string> VizSvg(const VizGraph& viz, bool expand) {
  std::string dot = VizDot(viz, expand);
  GVC_t* gvc = gvContext();
  Agraph_t* g = agmemread(dot.c_str());
  if (g == nullptr) {
    gvFreeContext(gvc);
    return Internal("Graphviz could not read the graph's DOT");
  }
  std::string svg;
  if (gvLayout(gvc, g, "dot") == 0) {
    char* data = nullptr;
    unsigned int size = 0;
    if (gvRenderData(gvc, g, "svg", &data, &size) == 0) svg.assign(data, size);
    gvFreeRenderData(data);
    gvFreeLayout(gvc, g);
  }
  agclose(g);
  gvFreeContext(gvc);
  if (svg.empty()) return Internal("Graphviz could not lay out the graph");
  return svg;
}

}  // namespace weir::cli
