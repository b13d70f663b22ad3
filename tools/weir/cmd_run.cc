#include <glog/logging.h>
#include <unistd.h>

#include <csignal>
#include <cstdlib>
#include <ctime>
#include <fstream>
#include <iostream>
#include <mutex>

#include "args.h"
#include "commands.h"
#include "report.h"
#include "weir/atomic_file.h"
#include "weir/checkpoints.h"
#include "weir/json.h"
#include "weir/runtime/executor.h"
#include "weir/runtime/launch.h"
#include "weir/runtime/metrics.h"
#include "weir/runtime/prepare.h"
#include "weir/runtime/world.h"
#ifdef WEIR_HAVE_MPI
#include "weir/runtime/mpi_communicator.h"
#endif
#include "weir/runtime/trace.h"

namespace weir::cli {

namespace fs = std::filesystem;

namespace {

constexpr char kHelp[] = R"(usage: weir run GRAPH [--set key=value]... [--out DIR] [options]

Runs GRAPH. Writes into DIR (default runs/NAME-YYYYmmdd-HHMMSS/):
  graph.resolved.pbtxt  the graph as it ran: params applied, every attr with its default
  metrics.jsonl         one JSON object per line: {"node": ..., "step": ..., values...}
  summary.json          status, wall time, per-node counters (items, rows, busy seconds)
  run.log               the log
  trace.json            with --trace: Chrome trace events (open in Perfetto or chrome://tracing)
Relative input paths in the graph are read relative to the graph file; relative output paths
are written relative to DIR. Ctrl-C stops the sources, lets work in flight finish and exits 130;
a second Ctrl-C kills the process.

Options:
  --set key=value        override a graph param (repeatable; typed like the param)
  --out DIR              output folder; refused if it holds an earlier run, unless --overwrite
  --overwrite            allow --out to name a folder that holds an earlier run
  --threads N            worker threads (default: every core)
  --max-in-flight N      items in flight per source (default 16)
  --progress MODE        auto (default: live line on a terminal, else lines), live, lines, none
  --progress-interval S  seconds between progress lines when not live (default 10)
  --hang-timeout S       fail the run when a node stays inside one call for S seconds,
                         naming it (default 1800; 0: never)
  --trace                write trace.json: an event per kernel call of every node and per
                         tensor-program node inside it (its phase F, B or W), thread by thread
  --resume DIR           continue from DIR: a training checkpoint folder (trainers and their
                         data readers restore their state; its checksums must verify), or an
                         earlier run's output folder: its newest undamaged checkpoint when it
                         has any, else its sources continue after the rows that run read. With
                         --out DIR too, a killed run continues in place: its metrics are kept up
                         to the checkpoint's step
)";

std::atomic<bool> g_stop{false};

void OnSigint(int) {
  g_stop = true;
  std::signal(SIGINT, SIG_DFL);  // a second Ctrl-C ends the process
}

class FileLogSink : public google::LogSink {
 public:
  explicit FileLogSink(const fs::path& path) : out_(path, std::ios::app) {}
  using google::LogSink::send;
  void send(google::LogSeverity severity, const char* /*full_filename*/, const char* base_filename,
            int line, const google::LogMessageTime& time, const char* message,
            size_t message_len) override {
    std::lock_guard<std::mutex> lock(mu_);
    out_ << ToString(severity, base_filename, line, time, message, message_len) << "\n";
    out_.flush();
  }
  void Line(const std::string& text) {
    std::lock_guard<std::mutex> lock(mu_);
    out_ << text << "\n";
    out_.flush();
  }

 private:
  std::mutex mu_;
  std::ofstream out_;
};

std::string Timestamp() {
  std::time_t now = std::time(nullptr);
  std::tm tm{};
  localtime_r(&now, &tm);
  char buf[32];
  std::strftime(buf, sizeof(buf), "%Y%m%d-%H%M%S", &tm);
  return buf;
}

std::string SummaryJson(const fs::path& graph_file, const RunResult& r) {
  std::string status = !r.status.ok() ? "failed" : r.interrupted ? "interrupted" : "ok";
  std::string out = "{\n  \"graph\": " + JsonQuote(graph_file.string()) + ",\n";
  out += "  \"status\": " + JsonQuote(status) + ",\n";
  if (!r.status.ok()) out += "  \"error\": " + JsonQuote(r.status.ToString()) + ",\n";
  out += "  \"wall_s\": " + JsonNumber(r.wall_s) + ",\n  \"nodes\": [";
  for (size_t i = 0; i < r.nodes.size(); ++i) {
    const NodeStats& n = r.nodes[i];
    out += std::string(i ? "," : "") + "\n    {\"name\": " + JsonQuote(n.name) +
           ", \"op\": " + JsonQuote(n.op) + ", \"items_in\": " + std::to_string(n.items_in) +
           ", \"items_out\": " + std::to_string(n.items_out) +
           ", \"rows_in\": " + std::to_string(n.rows_in) +
           ", \"rows_out\": " + std::to_string(n.rows_out) +
           ", \"busy_s\": " + JsonNumber(n.busy_s) + "}";
  }
  return out + "\n  ]\n}\n";
}

// Whether `path` is `dir` or lies inside it.
bool IsWithin(const fs::path& path, const fs::path& dir) {
  fs::path rel = fs::weakly_canonical(path).lexically_relative(fs::weakly_canonical(dir));
  return !rel.empty() && *rel.begin() != "..";
}

// The checkpoint --resume continues from (the newest undamaged one when it names a run folder),
// with the run folder's logs made ready: a run resumed in place keeps its metrics up to the
// checkpoint's step (the later ones are computed again) and appends to its log; any other run
// starts both anew.
StatusOr<fs::path> ResumeDir(const Args& args, const fs::path& out_dir, bool in_place) {
  std::error_code ec;
  fs::path resume;
  if (auto given = args.Get("resume")) {
    if (!fs::is_directory(*given, ec))
      return NotFound("--resume " + *given +
                      " is not a checkpoint folder or a run's output folder");
    std::vector<std::string> skipped;
    WEIR_ASSIGN_OR_RETURN(fs::path checkpoint, FindResumeCheckpoint(*given, &skipped));
    for (const std::string& problem : skipped)
      std::cerr << "weir run: skipping a damaged checkpoint: " << problem << "\n";
    resume = fs::absolute(checkpoint.empty() ? fs::path(*given) : checkpoint);
  }
  if (resume.empty() || !in_place) {
    fs::remove(out_dir / "metrics.jsonl", ec);
    fs::remove(out_dir / "run.log", ec);
    return resume;
  }
  // Without a checkpoint (killed before its first), training starts again at step 0.
  int64_t step = 0;
  if (fs::exists(resume / "trainer_state.json", ec)) {
    WEIR_ASSIGN_OR_RETURN(auto state, ReadJsonFile(resume / "trainer_state.json"));
    auto it = state.fields().find("step");
    if (it != state.fields().end() && it->second.has_number_value())
      step = static_cast<int64_t>(it->second.number_value());
  }
  WEIR_RETURN_IF_ERROR(TrimJsonlAfterStep(out_dir / "metrics.jsonl", step));
  return resume;
}

}  // namespace

int RunCommand(const std::vector<std::string>& argv) {
  Args args;
  if (auto exit = ParseCommand("run", argv,
                               {{"set", true, true},
                                {"out", true, false},
                                {"overwrite", false, false},
                                {"threads", true, false},
                                {"max-in-flight", true, false},
                                {"progress", true, false},
                                {"progress-interval", true, false},
                                {"resume", true, false},
                                {"hang-timeout", true, false},
                                {"trace", false, false}},
                               kHelp, 1, 1, &args))
    return *exit;
  fs::path graph_file = args.positional[0];
  auto threads = args.GetInt("threads", 0);
  auto in_flight = args.GetInt("max-in-flight", 16);
  auto interval = args.GetInt("progress-interval", 10);
  auto hang_timeout = args.GetFloat("hang-timeout", 1800);
  for (const Status* s :
       {&threads.status(), &in_flight.status(), &interval.status(), &hang_timeout.status()}) {
    if (!s->ok()) {
      std::cerr << "weir run: " << s->message() << "\n";
      return 2;
    }
  }
  std::string progress = args.Get("progress").value_or("auto");
  if (progress != "auto" && progress != "live" && progress != "lines" && progress != "none") {
    std::cerr << "weir run: --progress expects auto, live, lines or none, got '" << progress
              << "'\n";
    return 2;
  }

  auto graph = PrepareGraph(graph_file, args.All("set"));
  if (!graph.ok()) {
    std::cerr << graph.status().ToString() << "\n";
    return 1;
  }

  std::string name = graph->name.empty() ? graph_file.stem().string() : graph->name;
  fs::path out_dir =
      args.Get("out").value_or((fs::path("runs") / (name + "-" + Timestamp())).string());
  // One of several processes a launcher started: they train data-parallel over the world
  // communicator, and every rank but 0 writes its outputs into OUT/rank-N.
  auto launch = DetectLaunch();
  if (!launch.ok()) {
    std::cerr << "weir run: " << launch.status().ToString() << "\n";
    return 1;
  }
  if (launch->world_size > 1) {
#ifdef WEIR_HAVE_MPI
    auto world = MakeMpiCommunicator();
    if (!world.ok()) {
      std::cerr << "weir run: " << launch->ToString() << ": " << world.status().ToString() << "\n";
      return 1;
    }
    SetWorldCommunicator(std::shared_ptr<Communicator>(std::move(*world)));
    Trace::SetProcessRank(launch->rank);
    if (launch->rank > 0) out_dir /= "rank-" + std::to_string(launch->rank);
#else
    std::cerr << "weir run: launched as " << launch->ToString()
              << ", but this weir was built without MPI (install libopenmpi-dev and rebuild)\n";
    return 1;
#endif
  }
  std::error_code ec;
  // Resuming a run in its own folder continues it; anything else must not mix with an earlier run.
  bool in_place = args.Has("resume") && IsWithin(*args.Get("resume"), out_dir);
  if (fs::exists(out_dir / "summary.json", ec) && !args.Has("overwrite") && !in_place) {
    std::cerr << "weir run: " << out_dir.string()
              << " holds an earlier run (summary.json); choose another --out or pass --overwrite\n";
    return 1;
  }
  fs::create_directories(out_dir, ec);
  if (ec) {
    std::cerr << "weir run: cannot create " << out_dir.string() << ": " << ec.message() << "\n";
    return 1;
  }
  auto resume_dir = ResumeDir(args, out_dir, in_place);
  if (!resume_dir.ok()) {
    std::cerr << "weir run: " << resume_dir.status().message() << "\n";
    return 1;
  }

  FileLogSink log(out_dir / "run.log");
  google::AddLogSink(&log);
  log.Line("weir run " + graph_file.string() + " --out " + out_dir.string());
  for (const std::string& s : args.All("set")) log.Line("  --set " + s);

  Status wrote = WriteFileAtomically(
      out_dir / "graph.resolved.pbtxt",
      "# Resolved from " + graph_file.string() + "\n" + GraphDefToText(ToResolvedGraphDef(*graph)));
  auto metrics = JsonlMetricSink::Open(out_dir / "metrics.jsonl");
  if (!wrote.ok() || !metrics.ok()) {
    std::cerr << "weir run: " << (wrote.ok() ? metrics.status() : wrote).ToString() << "\n";
    google::RemoveLogSink(&log);
    return 1;
  }

  RunOptions options;
  options.out_dir = out_dir;
  options.threads = *threads;
  options.max_in_flight = *in_flight;
  options.resume_dir = *resume_dir;
  if (!options.resume_dir.empty()) log.Line("resuming from " + options.resume_dir.string());
  options.metrics = metrics->get();
  options.stop = &g_stop;
  options.progress_interval_s = *interval;
  options.hang_timeout_s = *hang_timeout;
  std::unique_ptr<Trace> trace;
  if (args.Has("trace")) {
    trace = std::make_unique<Trace>();
    options.trace = trace.get();
  }
  options.on_hang = [&](const Status& error) {
    std::cerr << error.ToString() << "\n";
    log.Line("error: " + error.ToString());
    RunResult hung;
    hung.status = error;
    (void)WriteFileAtomically(out_dir / "summary.json", SummaryJson(graph_file, hung));
    google::RemoveLogSink(&log);
    std::_Exit(1);  // the stuck call would never return
  };
  bool tty = ::isatty(STDERR_FILENO);
  if (progress != "none") {
    options.progress = &std::cerr;
    options.progress_live = progress == "live" || (progress == "auto" && tty);
  }
  g_stop = false;
  std::signal(SIGINT, OnSigint);
  RunResult result = RunGraph(*graph, options);
  std::signal(SIGINT, SIG_DFL);

  Status summary = WriteFileAtomically(out_dir / "summary.json", SummaryJson(graph_file, result));
  if (trace != nullptr && summary.ok()) {
    summary = trace->Write(out_dir / "trace.json");
    if (summary.ok()) {
      std::cerr << "weir run: trace in " << (out_dir / "trace.json").string() << " ("
                << trace->size() << " events)\n";
    }
  }
  int code = 0;
  if (!result.status.ok()) {
    std::cerr << result.status.ToString() << "\n";
    log.Line("error: " + result.status.ToString());
    code = 1;
  } else if (result.interrupted) {
    std::cerr << "weir run: interrupted; outputs so far are in " << out_dir.string() << "\n";
    log.Line("interrupted");
    code = 130;
  } else {
    std::cerr << "weir run: done in " << JsonNumber(result.wall_s) << " s; outputs in "
              << out_dir.string() << "\n";
    log.Line("done in " + JsonNumber(result.wall_s) + " s");
  }
  if (!summary.ok()) {
    std::cerr << "weir run: " << summary.ToString() << "\n";
    code = code == 0 ? 1 : code;
  }
  // A run that logged metrics by step (training, a data stage's counts) gets its report, failed
  // or not.
  if (HasStepMetrics(out_dir)) {
    Status report = WriteRunReport(out_dir, out_dir / "report.html");
    if (report.ok()) {
      std::cerr << "weir run: report in " << (out_dir / "report.html").string() << "\n";
    } else {
      std::cerr << "weir run: no report: " << report.ToString() << "\n";
    }
  }
  google::RemoveLogSink(&log);
  return code;
}

}  // namespace weir::cli
