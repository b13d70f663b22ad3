// weir: run, check and inspect dataflow graphs.
#include <glog/logging.h>

#include <iostream>
#include <string>
#include <vector>

#include "commands.h"

namespace {

constexpr char kUsage[] = R"(usage: weir COMMAND [ARGS]

Commands:
  run GRAPH [--set k=v]... [--out DIR]   run a graph; outputs go to DIR (default runs/NAME-TIME/)
  check GRAPH [--set k=v]...             parse and validate a graph; exit 1 on errors
  ops [--json|--markdown] [OP]           list ops with their plugin, ports, attrs and kernels
  tokenize --tokenizer FILE [--decode]   text on stdin to token ids (or ids to text)
  plan GRAPH [--set k=v]... [--seq-len N]  parameters, FLOPs, activation and KV-cache bytes
  logits --hf DIR --tokens FILE --out F  a Hugging Face DeepSeek checkpoint's logits, as .npy
  generate --model CKPT --tokens FILE [--speculative]  generation (sampling, MTP drafts)
  hf import|export DIR --out DIR         Hugging Face DeepSeek checkpoints to weir and back
  viz GRAPH [-o OUT.html|.svg|.dot]      draw the graph: a self-contained page with folded repeats
  report RUN_DIR [-o OUT.html]           a run's curves, expert load, node times and timeline
  schedule --kind K --ranks P --micro-batches M  a pipeline schedule's per-rank lists and bubbles

Run 'weir COMMAND --help' for a command's options.
Plugins load from the plugin folder beside libweir_core, then $WEIR_PLUGIN_PATH (':'-separated),
then the graph's own 'plugin' entries.
)";

}  // namespace

int main(int argc, char** argv) {
  FLAGS_logtostderr = true;
  FLAGS_minloglevel = 1;  // warnings and errors; --verbose shows info
  google::InitGoogleLogging(argv[0]);
  std::vector<std::string> args(argv + 1, argv + argc);
  if (!args.empty() && (args[0] == "--verbose" || args[0] == "-v")) {
    FLAGS_minloglevel = 0;
    args.erase(args.begin());
  }
  if (args.empty() || args[0] == "--help" || args[0] == "-h" || args[0] == "help") {
    std::cout << kUsage;
    return args.empty() ? 2 : 0;
  }
  std::string command = args[0];
  args.erase(args.begin());
  if (command == "run") return weir::cli::RunCommand(args);
  if (command == "check") return weir::cli::CheckCommand(args);
  if (command == "ops") return weir::cli::OpsCommand(args);
  if (command == "tokenize") return weir::cli::TokenizeCommand(args);
  if (command == "plan") return weir::cli::PlanCommand(args);
  if (command == "generate") return weir::cli::GenerateCommand(args);
  if (command == "logits") return weir::cli::LogitsCommand(args);
  if (command == "hf") return weir::cli::HfCommand(args);
  if (command == "viz") return weir::cli::VizCommand(args);
  if (command == "report") return weir::cli::ReportCommand(args);
  if (command == "schedule") return weir::cli::ScheduleCommand(args);
  std::cerr << "weir: unknown command '" << command << "'\n\n" << kUsage;
  return 2;
}
