// weir schedule: a pipeline schedule's per-rank instruction lists, checked and simulated, as a
// text timeline, JSON or an SVG figure.
#include <algorithm>
#include <cmath>
#include <iostream>
#include <sstream>

#include "args.h"
#include "commands.h"
#include "schedule.h"
#include "validate.h"
#include "weir/atomic_file.h"
#include "weir/json.h"

namespace weir::cli {

namespace {

using dualpipe::Durations;
using dualpipe::Instruction;
using dualpipe::OpKind;
using dualpipe::Schedule;
using dualpipe::Simulation;

constexpr char kHelp[] = R"(usage: weir schedule --kind gpipe|1f1b|zb1p|dualpipe|dualpipev --ranks P
                     --micro-batches M [--format text|json|svg] [-o FILE]

Makes the per-rank instruction lists of a pipeline schedule (forward F, full backward B, input
backward Bi, deferred weight gradients W, overlapped F&B pairs, sends and receives), checks them
(placement, dependency order, matched sends and receives, no deadlock) and simulates their timing.
DualPipe places stages r and P-1-r on rank r and needs even P, even M and M >= 2P; DualPipeV
places stages r and 2P-1-r on rank r and needs M >= 2P.

Options:
  --kind NAME            gpipe, 1f1b, zb1p, dualpipe or dualpipev
  --ranks P              pipeline ranks
  --micro-batches M      micro-batches per step
  --format FORMAT        text (each rank's order and a timeline, the default), json (the
                         instruction lists with simulated start and end times) or svg (a figure
                         like the DualPipe paper's, with bubble and memory numbers)
  -o, --out FILE         write there instead of to standard output
  --forward T            time of a forward chunk (default 1)
  --backward T           time of a full backward chunk (default 2)
  --weight T             time of a weight-gradient chunk (default 1; a Bi takes backward - weight)
  --forward-backward T   time of an overlapped F&B pair (default 3)
  --comm T               time from a send to its receive (default 0)
)";

std::string Number(double v) { return ShortestDouble(v); }

std::string StagesOf(const Schedule& s, int rank) {
  std::string out;
  for (int stage : s.chunk_stage[rank]) out += (out.empty() ? "" : ", ") + std::to_string(stage);
  return out;
}

std::string Header(const Schedule& s, const Durations& d) {
  return std::string(dualpipe::ScheduleKindName(s.kind)) + ": " + std::to_string(s.ranks) +
         " ranks, " + std::to_string(s.stages) + " stages, " + std::to_string(s.micro_batches) +
         " micro-batches; F=" + Number(d.forward) + " B=" + Number(d.backward) +
         " W=" + Number(d.weight) + " F&B=" + Number(d.forward_backward) +
         " comm=" + Number(d.comm);
}

std::string Figures(const Schedule& s, const Simulation& sim, const Durations& d) {
  std::string out =
      "makespan " + Number(sim.makespan) + ", largest bubble " + Number(sim.max_bubble);
  if (auto formula = dualpipe::FormulaBubble(s, d))
    out += " (the DualPipe README's formula: " + Number(*formula) + ")";
  return out;
}

bool IsCompute(const Instruction& in) {
  return in.kind != OpKind::kSend && in.kind != OpKind::kRecv;
}

char TimelineChar(OpKind kind) {
  switch (kind) {
    case OpKind::kForward:
      return 'F';
    case OpKind::kBackward:
      return 'B';
    case OpKind::kBackwardInput:
      return 'b';
    case OpKind::kWeight:
      return 'W';
    default:
      return 'X';
  }
}

std::string Text(const Schedule& s, const Simulation& sim, const Durations& d) {
  std::ostringstream out;
  out << Header(s, d) << "\n\n";
  for (int r = 0; r < s.ranks; ++r) {
    out << "rank " << r << " (stage" << (s.chunk_stage[r].size() > 1 ? "s " : " ") << StagesOf(s, r)
        << "):";
    for (const Instruction& in : s.programs[r])
      if (IsCompute(in)) out << " " << dualpipe::InstructionLabel(s, in);
    out << "\n";
  }
  // One column per smallest time step, so that every instruction is at least one column wide.
  double step = sim.makespan;
  for (double t : {d.forward, d.backward - d.weight, d.weight, d.forward_backward, d.comm})
    if (t > 0) step = std::min(step, t);
  int columns = step > 0 ? static_cast<int>(std::ceil(sim.makespan / step)) : 0;
  out << "\ntimeline (a column is " << Number(step) << " time unit" << (step == 1 ? "" : "s")
      << "; F forward, B backward, b input backward, W weights, X F&B, . idle)\n";
  for (int r = 0; r < s.ranks; ++r) {
    std::string row(columns, '.');
    for (size_t i = 0; i < s.programs[r].size(); ++i) {
      const Instruction& in = s.programs[r][i];
      const dualpipe::Timing& t = sim.ranks[r].timings[i];
      if (!IsCompute(in) || t.end <= t.start) continue;
      int from = static_cast<int>(std::lround(t.start / step));
      int to = std::max(from + 1, static_cast<int>(std::lround(t.end / step)));
      for (int c = from; c < std::min(to, columns); ++c) row[c] = TimelineChar(in.kind);
    }
    const dualpipe::RankStats& stats = sim.ranks[r];
    out << "rank " << r << " |" << row << "| busy " << Number(stats.busy) << ", bubble "
        << Number(stats.bubble) << ", peak activations " << stats.peak_activations << "\n";
  }
  out << "\n" << Figures(s, sim, d) << "\n";
  return out.str();
}

std::string JsonInstruction(const Schedule& s, const Instruction& in, const dualpipe::Timing& t) {
  std::string out = "{\"op\": " + JsonQuote(dualpipe::OpKindName(in.kind)) +
                    ", \"label\": " + JsonQuote(dualpipe::InstructionLabel(s, in)) +
                    ", \"micro_batch\": " + std::to_string(in.micro_batch) +
                    ", \"stage\": " + std::to_string(in.stage);
  if (IsCompute(in)) out += ", \"chunk\": " + std::to_string(in.chunk);
  if (in.kind == OpKind::kForwardBackward) {
    out += ", \"backward_micro_batch\": " + std::to_string(in.backward_micro_batch) +
           ", \"backward_stage\": " + std::to_string(in.backward_stage) +
           ", \"backward_chunk\": " + std::to_string(in.backward_chunk);
  }
  if (!IsCompute(in)) {
    out += std::string(", \"payload\": ") +
           (in.payload == dualpipe::Payload::kActivation ? "\"activation\"" : "\"gradient\"") +
           ", \"peer\": " + std::to_string(in.peer);
  }
  return out + ", \"start\": " + JsonNumber(t.start) + ", \"end\": " + JsonNumber(t.end) + "}";
}

std::string Json(const Schedule& s, const Simulation& sim, const Durations& d) {
  auto formula = dualpipe::FormulaBubble(s, d);
  std::string out =
      "{\n  \"kind\": " + JsonQuote(dualpipe::ScheduleKindName(s.kind)) +
      ",\n  \"num_ranks\": " + std::to_string(s.ranks) +
      ",\n  \"micro_batches\": " + std::to_string(s.micro_batches) +
      ",\n  \"stages\": " + std::to_string(s.stages) +
      ",\n  \"durations\": {\"F\": " + JsonNumber(d.forward) +
      ", \"B\": " + JsonNumber(d.backward) + ", \"W\": " + JsonNumber(d.weight) +
      ", \"F&B\": " + JsonNumber(d.forward_backward) + ", \"comm\": " + JsonNumber(d.comm) +
      "},\n  \"makespan\": " + JsonNumber(sim.makespan) +
      ",\n  \"max_bubble\": " + JsonNumber(sim.max_bubble) +
      ",\n  \"formula_bubble\": " + (formula ? JsonNumber(*formula) : "null") + ",\n  \"ranks\": [";
  for (int r = 0; r < s.ranks; ++r) {
    const dualpipe::RankStats& stats = sim.ranks[r];
    out += std::string(r ? "," : "") + "\n    {\"rank\": " + std::to_string(r) + ", \"stages\": [" +
           StagesOf(s, r) + "], \"busy\": " + JsonNumber(stats.busy) +
           ", \"bubble\": " + JsonNumber(stats.bubble) +
           ", \"peak_activations\": " + std::to_string(stats.peak_activations) +
           ",\n     \"instructions\": [";
    for (size_t i = 0; i < s.programs[r].size(); ++i) {
      out += std::string(i ? "," : "") + "\n       " +
             JsonInstruction(s, s.programs[r][i], stats.timings[i]);
    }
    out += "]}";
  }
  return out + "\n  ]\n}\n";
}

const char* Color(OpKind kind) {
  switch (kind) {
    case OpKind::kForward:
      return "#f4a259";
    case OpKind::kBackward:
      return "#5b8e7d";
    case OpKind::kBackwardInput:
      return "#8cc5b0";
    case OpKind::kWeight:
      return "#5e7ce2";
    default:
      return "#bc4b51";
  }
}

std::string XmlEscape(const std::string& text) {
  std::string out;
  for (char c : text) {
    if (c == '&')
      out += "&amp;";
    else if (c == '<')
      out += "&lt;";
    else if (c == '>')
      out += "&gt;";
    else
      out += c;
  }
  return out;
}

std::string SvgText(double x, double y, const std::string& text, const char* extra = "") {
  return "<text x=\"" + Number(x) + "\" y=\"" + Number(y) + "\"" + extra + ">" + XmlEscape(text) +
         "</text>\n";
}

std::string SvgRect(double x, double y, double w, double h, const char* fill) {
  return "<rect x=\"" + Number(x) + "\" y=\"" + Number(y) + "\" width=\"" + Number(w) +
         "\" height=\"" + Number(h) + "\" fill=\"" + fill + "\" stroke=\"#fff\"/>\n";
}

// The number a box shows: its micro-batch ("3", DualPipe "D3", a pair "3|1").
std::string BoxText(const Schedule& s, const Instruction& in) {
  auto name = [&](int m, int chunk) {
    std::string n = std::to_string(dualpipe::DisplayMicroBatch(s, m));
    if (s.kind == dualpipe::ScheduleKind::kDualPipe) return (chunk == 0 ? "D" : "U") + n;
    return n;
  };
  std::string text = name(in.micro_batch, in.chunk);
  if (in.kind == OpKind::kForwardBackward)
    text += "|" + name(in.backward_micro_batch, in.backward_chunk);
  return text;
}

std::string Svg(const Schedule& s, const Simulation& sim, const Durations& d) {
  const double left = 60, top = 40, row = 28, right = 230;
  const double scale = std::clamp(1000.0 / std::max(sim.makespan, 1.0), 4.0, 48.0);
  const double width = left + sim.makespan * scale + right;
  const double height = top + s.ranks * row + 80;
  std::string out = "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"" + Number(width) +
                    "\" height=\"" + Number(height) +
                    "\" font-family=\"sans-serif\" font-size=\"11\">\n";
  out += SvgRect(0, 0, width, height, "#ffffff");
  out += SvgText(left, 20, Header(s, d), " font-size=\"13\"");
  for (int r = 0; r < s.ranks; ++r) {
    double y = top + r * row;
    const dualpipe::RankStats& stats = sim.ranks[r];
    out += SvgText(8, y + row / 2 + 4, "rank " + std::to_string(r));
    out += SvgRect(left, y, sim.makespan * scale, row - 4, "#e5e5e5");
    for (size_t i = 0; i < s.programs[r].size(); ++i) {
      const Instruction& in = s.programs[r][i];
      const dualpipe::Timing& t = stats.timings[i];
      if (!IsCompute(in) || t.end <= t.start) continue;
      double x = left + t.start * scale, w = (t.end - t.start) * scale;
      out += "<g><title>" + XmlEscape(dualpipe::InstructionLabel(s, in)) + " " + Number(t.start) +
             "-" + Number(t.end) + "</title>" + SvgRect(x, y, w, row - 4, Color(in.kind));
      out += SvgText(x + w / 2, y + row / 2 + 2, BoxText(s, in),
                     " text-anchor=\"middle\" fill=\"#fff\"") +
             "</g>\n";
    }
    out += SvgText(left + sim.makespan * scale + 10, y + row / 2 + 2,
                   "bubble " + Number(stats.bubble) + ", peak activations " +
                       std::to_string(stats.peak_activations));
  }
  double y = top + s.ranks * row + 16;
  double x = left;
  const std::pair<const char*, const char*> legend[] = {
      {"F", Color(OpKind::kForward)},           {"B", Color(OpKind::kBackward)},
      {"Bi", Color(OpKind::kBackwardInput)},    {"W", Color(OpKind::kWeight)},
      {"F&B", Color(OpKind::kForwardBackward)}, {"idle", "#e5e5e5"}};
  for (const auto& [name, color] : legend) {
    out += SvgRect(x, y, 14, 14, color) + SvgText(x + 18, y + 11, name);
    x += 70;
  }
  out += SvgText(left, y + 40, Figures(s, sim, d));
  return out + "</svg>\n";
}

}  // namespace

int ScheduleCommand(const std::vector<std::string>& argv) {
  std::vector<std::string> args_in;
  for (const std::string& a : argv) args_in.push_back(a == "-o" ? "--out" : a);
  Args args;
  std::vector<FlagSpec> specs = {
      {"kind"},    {"ranks"},    {"micro-batches"}, {"format"},           {"out"},
      {"forward"}, {"backward"}, {"weight"},        {"forward-backward"}, {"comm"}};
  if (auto exit = ParseCommand("schedule", args_in, specs, kHelp, 0, 0, &args)) return *exit;
  auto fail = [](const Status& status) {
    std::cerr << "weir schedule: " << status.message() << "\n";
    return 1;
  };
  for (const char* required : {"kind", "ranks", "micro-batches"}) {
    if (!args.Has(required)) {
      std::cerr << "weir schedule: --" << required << " is required\n\n" << kHelp;
      return 2;
    }
  }
  std::string format = args.Get("format").value_or("text");
  if (format != "text" && format != "json" && format != "svg")
    return fail(InvalidArgument("--format must be text, json or svg, not '" + format + "'"));
  auto kind = dualpipe::ParseScheduleKind(*args.Get("kind"));
  if (!kind.ok()) return fail(kind.status());
  auto ranks = args.GetInt("ranks", 0);
  if (!ranks.ok()) return fail(ranks.status());
  auto micro_batches = args.GetInt("micro-batches", 0);
  if (!micro_batches.ok()) return fail(micro_batches.status());
  Durations d;
  for (auto [flag, value] : {std::pair{"forward", &d.forward},
                             {"backward", &d.backward},
                             {"weight", &d.weight},
                             {"forward-backward", &d.forward_backward},
                             {"comm", &d.comm}}) {
    auto parsed = args.GetFloat(flag, *value);
    if (!parsed.ok()) return fail(parsed.status());
    *value = *parsed;
  }
  auto schedule = dualpipe::MakeSchedule(*kind, *ranks, *micro_batches);
  if (!schedule.ok()) return fail(schedule.status());
  auto sim = dualpipe::Simulate(*schedule, d);
  if (!sim.ok()) return fail(sim.status());
  std::string text = format == "json"  ? Json(*schedule, *sim, d)
                     : format == "svg" ? Svg(*schedule, *sim, d)
                                       : Text(*schedule, *sim, d);
  if (auto out = args.Get("out")) {
    Status wrote = WriteFileAtomically(*out, text);
    if (!wrote.ok()) return fail(wrote);
    std::cout << *out << "\n";
  } else {
    std::cout << text;
  }
  return 0;
}

}  // namespace weir::cli
