#include <iostream>

#include "args.h"
#include "commands.h"
#include "weir/runtime/prepare.h"

namespace weir::cli {

namespace {
constexpr char kHelp[] = R"(usage: weir check GRAPH [--set key=value]...

Parses GRAPH (.pbtxt text or .pb binary) with its imports and plugins, applies the overrides and
validates every node against its op's schema. Prints every problem as
  FILE:LINE:COL: node 'NAME' (op 'OP'): MESSAGE
and exits 1 when there is any; prints a one-line summary and exits 0 otherwise.

Options:
  --set key=value   override a graph param (repeatable; typed like the param)
)";
}  // namespace

int CheckCommand(const std::vector<std::string>& argv) {
  Args args;
  if (auto exit = ParseCommand("check", argv, {{"set", true, true}}, kHelp, 1, 1, &args))
    return *exit;
  auto graph = PrepareGraph(args.positional[0], args.All("set"));
  if (!graph.ok()) {
    std::cerr << graph.status().ToString() << "\n";
    return 1;
  }
  std::cout << args.positional[0] << ": ok (" << graph->nodes.size() << " nodes, "
            << graph->functions.size() << " functions, " << graph->params.size() << " params)\n";
  return 0;
}

}  // namespace weir::cli
