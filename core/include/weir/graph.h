// The graph IR: a graph file as written (specs, with source locations) and, after resolution, the
// flat list of op nodes that runs, with typed attrs and resolved edges.
//
//   LoadGraph(file)          parse text or binary, follow imports, upgrade old formats
//   ApplyOverrides(g, sets)  --set key=value on the graph's params (typed, checked)
//   ResolveGraph(g, ops)     expand function calls (repeat, $repeat_index), type attrs against
//                            schemas, fill defaults, resolve edges, check port types, order
//   ToResolvedGraphDef(g)    the graph as it will run, as a GraphDef (graph.resolved.pbtxt)
//
// Stream-level graphs and tensor functions share this IR: a function call at the top level is
// inlined here; tensor functions run by bridging ops are instantiated by the same expansion.
#pragma once

#include <filesystem>
#include <map>
#include <string>
#include <vector>

#include "weir/attr.h"
#include "weir/graph.pb.h"
#include "weir/op_registry.h"
#include "weir/status.h"

namespace weir {

// The newest graph format this weir reads; files with format_version 0 mean "current".
constexpr int kGraphFormatVersion = 1;

// One input as written: "node:port", "node" (port 0) or "^node" (control).
struct Endpoint {
  std::string node;
  std::string port;  // index or name; empty = 0
  bool control = false;
  bool external = false;  // a function argument with no producer inside the function
  int arg = -1;           // which argument, when external
  SourceLoc loc;
  std::string ToString() const;
};

struct WrittenAttr {
  std::string key;
  Literal value;
  SourceLoc loc;        // of the key
  SourceLoc value_loc;  // of the value
};

// A node as written, at the top level or inside a function.
struct NodeSpec {
  std::string name;
  std::string op;
  std::string device;
  std::string doc;
  int stage = 0;
  int repeat = 0;
  int in_flight = 0;
  std::vector<Endpoint> inputs;
  std::vector<WrittenAttr> attrs;
  SourceLoc loc;  // of the node
  SourceLoc op_loc;
  SourceLoc name_loc;
  SourceLoc device_loc;
  SourceLoc repeat_loc;
};

struct Param {
  std::string name;
  AttrValue value;
  SourceLoc loc;
  bool overridden = false;
};

struct FunctionSpec {
  struct Output {
    std::string name;
    Endpoint source;
  };
  std::string name;
  std::string doc;
  std::vector<std::string> inputs;
  std::vector<Output> outputs;
  std::vector<WrittenAttr> attrs;  // parameters with their defaults
  std::vector<NodeSpec> nodes;
  SourceLoc loc;
  FunctionDef def;  // as written, for the resolved graph
};

struct ResourceSpec {
  std::string name;
  std::string kind;
  std::string doc;
  std::vector<WrittenAttr> attrs;
  SourceLoc loc;
  std::vector<std::pair<std::string, AttrValue>> resolved_attrs;  // after ResolveGraph
};

// A node that runs: an op with typed attrs (schema order, defaults filled) and resolved edges.
struct Node {
  struct Input {
    int node = -1;  // index into Graph::nodes
    int port = 0;   // producer's output port
    int slot = 0;   // which data input of this node (its port, except that each connection
                    // of a variadic port has its own slot)
    Endpoint written;
  };
  std::string name;  // expanded: "blocks.2.attn"
  std::string op;
  std::string device;
  std::string doc;
  int stage = 0;
  // A source's bound on items in flight (0: the run's). 1 makes each item's work finish before
  // the next item starts: a generator reads the weights its trainer wrote for the last item.
  int in_flight = 0;
  std::vector<Input> inputs;  // data inputs in written order
  std::vector<int> controls;  // nodes that must finish before this one starts
  std::vector<std::pair<std::string, AttrValue>> attrs;
  SourceLoc loc;
  SourceLoc op_loc;
  const OpEntry* entry = nullptr;

  const AttrValue* FindAttr(const std::string& key) const;
};

struct Graph {
  std::string name;
  std::string doc;
  std::filesystem::path file;        // the root file
  std::filesystem::path input_dir;   // where relative input paths are read from
  std::vector<std::string> plugins;  // as written, with the folder of the file that named them
  std::vector<std::filesystem::path> plugin_dirs;
  std::vector<SourceLoc> plugin_locs;
  std::vector<Param> params;
  std::vector<ResourceSpec> resources;
  std::map<std::string, FunctionSpec> functions;
  std::vector<NodeSpec> node_specs;  // top-level nodes as written

  std::vector<Node> nodes;  // after ResolveGraph: in topological order

  const Param* FindParam(const std::string& name) const;
  int FindNode(const std::string& name) const;  // -1 when absent
};

StatusOr<Graph> LoadGraph(const std::filesystem::path& file);

// Applies "key=value" overrides to declared params, typed like the param's declared value.
Status ApplyOverrides(Graph& graph, const std::vector<std::string>& sets);

// Expands, types and checks the graph against `ops`; fills graph.nodes. All problems found are
// reported together, one per line, each with file:line:col.
Status ResolveGraph(Graph& graph, const OpRegistry& ops);

// The resolved graph as a self-contained GraphDef: params with final values, every node with all
// attrs (defaults included), functions copied in, no imports.
GraphDef ToResolvedGraphDef(const Graph& graph);

// A tensor function instantiated on its own: the nodes of its body with expanded names, typed
// attrs and resolved edges, in topological order. An input fed by the function's argument k has
// Node::Input::node == -1 - k.
struct FunctionInstance {
  std::vector<Node> nodes;
  std::vector<std::string> inputs;  // argument names
  struct Output {
    std::string name;
    int node = -1;  // index into nodes, or -1 - k for argument k passed straight through
    int port = 0;
  };
  std::vector<Output> outputs;
};

// Instantiates function `name` of `graph` with `attrs` (the function's defaults for the rest,
// values converted to the defaults' types). Node names get `prefix` ("" keeps them as written in
// the function: "layers.3.attn.wq").
StatusOr<FunctionInstance> InstantiateFunction(const Graph& graph, const std::string& name,
                                               const std::map<std::string, AttrValue>& attrs,
                                               const OpRegistry& ops,
                                               const std::string& prefix = "");

// Writes text format; returns false on failure.
std::string GraphDefToText(const GraphDef& def);

}  // namespace weir
