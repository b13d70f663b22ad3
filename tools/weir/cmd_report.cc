// weir report: a run folder as one self-contained HTML page of charts.
#include <fstream>
#include <iostream>

#include "args.h"
#include "commands.h"
#include "html_page.h"
#include "report.h"
#include "viz_assets.h"
#include "weir/atomic_file.h"
#include "weir/json.h"

namespace weir::cli {

namespace fs = std::filesystem;

namespace {
constexpr char kHelp[] = R"(usage: weir report RUN_DIR [-o OUT.html]

Writes one self-contained HTML page (inline SVG charts, no network needed) about the run in
RUN_DIR (what `weir run --out RUN_DIR` wrote):
  metrics.jsonl     loss, learning-rate and gradient-norm curves, other per-step values, and
                    reward curves and GRPO metrics (reward, rewards/NAME/mean, kl, clip_ratio, ...)
                    when the run logged them
  statistics.jsonl  a heatmap of expert load over steps for each MoE router
  summary.json      the time each node was busy
  trace.json        the pipeline schedule as a timeline (Chrome trace events), when present

Options:
  -o, --out FILE   where to write (default: RUN_DIR/report.html)
)";

// The lines of a JSON Lines file as one JSON array, each line checked; a missing file is empty.
StatusOr<std::string> JsonlArray(const fs::path& file) {
  std::ifstream in(file);
  std::string out = "[", line;
  for (int number = 1; std::getline(in, line); ++number) {
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    auto parsed = ParseJsonObject(line);
    if (!parsed.ok()) {
      return InvalidArgument(file.string() + ":" + std::to_string(number) +
                             ": expected one JSON object per line: " + parsed.status().message());
    }
    out += (out.size() > 1 ? "," : "") + line;
  }
  return out + "]";
}

// A JSON file's text, checked; "null" when the file is missing.
StatusOr<std::string> JsonFile(const fs::path& file) {
  std::error_code ec;
  if (!fs::exists(file, ec)) return std::string("null");
  WEIR_RETURN_IF_ERROR(ReadJsonFile(file).status());
  std::ifstream in(file);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

}  // namespace

bool HasStepMetrics(const fs::path& run_dir) {
  std::ifstream in(run_dir / "metrics.jsonl");
  for (std::string line; std::getline(in, line);)
    if (line.find("\"step\"") != std::string::npos) return true;
  return false;
}

Status WriteRunReport(const fs::path& run_dir, const fs::path& out) {
  std::error_code ec;
  if (!fs::is_directory(run_dir, ec))
    return NotFound(run_dir.string() + " is not a run folder (what weir run --out writes)");
  WEIR_ASSIGN_OR_RETURN(std::string metrics, JsonlArray(run_dir / "metrics.jsonl"));
  WEIR_ASSIGN_OR_RETURN(std::string statistics, JsonlArray(run_dir / "statistics.jsonl"));
  WEIR_ASSIGN_OR_RETURN(std::string summary, JsonFile(run_dir / "summary.json"));
  WEIR_ASSIGN_OR_RETURN(std::string trace, JsonFile(run_dir / "trace.json"));
  std::string name = fs::absolute(run_dir).lexically_normal().filename().string();
  if (name.empty()) name = fs::absolute(run_dir).lexically_normal().parent_path().filename();
  std::string data = "{\"run\":" + JsonQuote(name) + ",\"metrics\":" + metrics +
                     ",\"statistics\":" + statistics + ",\"summary\":" + summary +
                     ",\"trace\":" + trace + "}";
  namespace a = viz_assets;
  return WriteFileAtomically(
      out, HtmlPage(a::report_html, "weir report: " + name, {a::report_css}, {a::report_js}, data));
}

int ReportCommand(const std::vector<std::string>& argv) {
  std::vector<std::string> args_in;
  for (const std::string& a : argv) args_in.push_back(a == "-o" ? "--out" : a);
  Args args;
  if (auto exit = ParseCommand("report", args_in, {{"out", true, false}}, kHelp, 1, 1, &args))
    return *exit;
  fs::path run_dir = args.positional[0];
  fs::path out = args.Get("out").value_or((run_dir / "report.html").string());
  Status wrote = WriteRunReport(run_dir, out);
  if (!wrote.ok()) {
    std::cerr << "weir report: " << wrote.ToString() << "\n";
    return 1;
  }
  std::cout << out.string() << "\n";
  return 0;
}

}  // namespace weir::cli
