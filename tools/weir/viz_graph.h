// The picture `weir viz` draws of a resolved graph: its stream nodes and, nested inside the nodes
// that run them (or inside their model resource when no node does), the tensor functions as a
// tree of calls in which a `repeat` is one box holding its copies. Every op carries its resolved
// attrs and the types shape inference gives its ports.
#pragma once

#include <string>
#include <utility>
#include <vector>

#include "weir/graph.h"

namespace weir::cli {

struct VizPort {
  std::string name;
  std::string type;  // "bf16[1, 4096, 7168]", a stream port's item type, or "" when unknown
};

struct VizUnit {
  // kStream: a top-level node; kResource: a model no node runs; kCall: a function call;
  // kRepeat: a repeated call (its children are the copies); kCopy: one copy; kOp: a tensor op;
  // kArgument / kResult: a function's inputs and outputs inside the node that runs it.
  enum Kind { kStream, kResource, kCall, kRepeat, kCopy, kOp, kArgument, kResult };
  Kind kind = kOp;
  std::string name;   // full path: "moe_layers.3.attn.wq_a"
  std::string label;  // the last part of the path
  std::string op;     // the op, the called function, or the resource kind
  int parent = -1;
  bool open = false;  // drawn expanded at first
  int copies = 0;     // kRepeat: how many
  int stage = 0;
  std::string device;
  std::string doc;  // a function's doc (ops' docs come from their schemas)
  std::vector<std::pair<std::string, AttrValue>> attrs;
  std::vector<VizPort> inputs, outputs, params;
  int anchor_in = -1, anchor_out = -1;  // where edges to an expanded stream node attach
  const OpEntry* entry = nullptr;
};

struct VizEdge {
  int from = -1, to = -1;
  std::string label;
  bool control = false;
};

struct VizGraph {
  std::string name, file, doc;
  std::vector<VizUnit> units;  // parents before their children
  std::vector<VizEdge> edges;
  std::vector<std::string> notes;  // what could not be shown (shape inference that failed)
};

// Builds the picture. Model inputs are token ids of [batch_size, seq_len] from the graph's params
// of those names (1 and 4096 when absent).
StatusOr<VizGraph> BuildVizGraph(const Graph& graph);

// The page's data: units, edges and the schemas of the ops used, as JSON.
std::string VizJson(const VizGraph& viz, bool expand);
// Graphviz DOT of the view the page opens with (everything expanded with `expand`).
std::string VizDot(const VizGraph& viz, bool expand);
// That DOT laid out and drawn as SVG by Graphviz's libgvc.
StatusOr<std::string> VizSvg(const VizGraph& viz, bool expand);

}  // namespace weir::cli
