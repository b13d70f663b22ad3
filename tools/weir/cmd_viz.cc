// weir viz: a graph drawn as one self-contained HTML page (or SVG / DOT).
#include <iostream>

#include "args.h"
#include "commands.h"
#include "html_page.h"
#include "viz_assets.h"
#include "viz_graph.h"
#include "weir/atomic_file.h"
#include "weir/runtime/prepare.h"

namespace weir::cli {

namespace {
constexpr char kHelp[] =
    R"(usage: weir viz GRAPH [-o OUT.html|OUT.svg|OUT.dot] [--set key=value]... [--expand]

Draws GRAPH: its stream nodes and, nested inside the nodes that run them (or inside their model
resource), the tensor functions, every op with its resolved attrs and the shapes and dtypes
shape inference gives its ports (model inputs: token ids [batch_size, seq_len] from the graph's
params, else [1, 4096]).

The HTML page (one file, no network needed) opens folded: every function call is one box and a
`repeat` one box marked xN; a click expands a box, a click on an open box's title folds it. It
colors nodes by plugin, pipeline stage or device, shows a node's op, attrs (defaults marked),
ports and the op's docs in a side panel, searches by node name or op, lays out top to bottom or
left to right (dagre) and exports the current view as SVG or PNG.
OUT.svg is the opening view laid out by Graphviz; OUT.dot is that view as Graphviz DOT.

Options:
  -o, --out FILE     where to write (default: GRAPH's name with .html, in the current folder)
  --set key=value    override a graph param (repeatable)
  --expand           open every box (slow to lay out for large models)
)";
}  // namespace

int VizCommand(const std::vector<std::string>& argv) {
  std::vector<std::string> args_in;
  for (const std::string& a : argv) args_in.push_back(a == "-o" ? "--out" : a);
  Args args;
  if (auto exit = ParseCommand(
          "viz", args_in, {{"out", true, false}, {"set", true, true}, {"expand", false, false}},
          kHelp, 1, 1, &args))
    return *exit;
  std::filesystem::path graph_file = args.positional[0];
  std::filesystem::path out = args.Get("out").value_or(graph_file.stem().string() + ".html");
  std::string format = out.extension().string();
  if (format != ".html" && format != ".svg" && format != ".dot") {
    std::cerr << "weir viz: --out " << out.string()
              << " must end in .html, .svg or .dot (the format to write)\n";
    return 2;
  }
  auto graph = PrepareGraph(graph_file, args.All("set"));
  if (!graph.ok()) {
    std::cerr << graph.status().ToString() << "\n";
    return 1;
  }
  auto viz = BuildVizGraph(*graph);
  if (!viz.ok()) {
    std::cerr << viz.status().ToString() << "\n";
    return 1;
  }
  for (const std::string& note : viz->notes) std::cerr << "weir viz: " << note << "\n";
  bool expand = args.Has("expand");
  std::string content;
  if (format == ".html") {
    namespace a = viz_assets;
    content = HtmlPage(a::viz_html, (viz->name.empty() ? graph_file.stem().string() : viz->name),
                       {a::viz_css}, {a::dagre_js, a::viz_js}, VizJson(*viz, expand));
  } else if (format == ".dot") {
    content = VizDot(*viz, expand);
  } else {
    auto svg = VizSvg(*viz, expand);
    if (!svg.ok()) {
      std::cerr << "weir viz: " << svg.status().ToString() << "\n";
      return 1;
    }
    content = *svg;
  }
  Status wrote = WriteFileAtomically(out, content);
  if (!wrote.ok()) {
    std::cerr << "weir viz: " << wrote.ToString() << "\n";
    return 1;
  }
  std::cout << out.string() << "\n";
  return 0;
}

}  // namespace weir::cli
