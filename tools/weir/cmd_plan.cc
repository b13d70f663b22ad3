// weir plan: what a graph's models cost, without running them or allocating their parameters.
#include <cstdio>
#include <iostream>
#include <map>
#include <sstream>

#include "args.h"
#include "commands.h"
#include "model_inputs.h"
#include "weir/attr.h"
#include "weir/op_registry.h"
#include "weir/runtime/prepare.h"
#include "weir/runtime/program.h"

namespace weir::cli {

namespace {
constexpr char kHelp[] = R"(usage: weir plan GRAPH [--set key=value]... [--seq-len N] [--model NAME]

For every model resource of GRAPH (or the one named), prints without running it:
  parameters, total and by component (the first part of their names) and by op, for training
  (everything the loss needs) and for inference (what the `logits` output needs: training-only
  modules such as multi-token prediction drop out), and the parameters one token activates
  (routed experts count K of E);
  FLOPs per token of the inference forward pass over a sequence of N tokens (causal attention
  at its average context), and of training (forward and backward: 3x the training forward);
  activation memory per token (the training program's memory plan, in the model's dtype T);
  the KV cache per token: the elements nn.Cached marks, in bf16 and f32 bytes.

Options:
  --set key=value   override a graph param (repeatable)
  --seq-len N       sequence length the FLOPs and activations are computed for (default 4096)
  --model NAME      plan only this resource
)";

std::string Count(double n) {
  char buf[32];
  if (n >= 1e9) {
    std::snprintf(buf, sizeof(buf), "%.2fB", n / 1e9);
  } else if (n >= 1e6) {
    std::snprintf(buf, sizeof(buf), "%.2fM", n / 1e6);
  } else if (n >= 1e3) {
    std::snprintf(buf, sizeof(buf), "%.1fK", n / 1e3);
  } else {
    std::snprintf(buf, sizeof(buf), "%.0f", n);
  }
  return buf;
}

std::string Flops(double n) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), n >= 1e12 ? "%.2f TFLOP" : "%.2f GFLOP",
                n >= 1e12 ? n / 1e12 : n / 1e9);
  return buf;
}

std::string Grouped(double n) {
  std::string digits = std::to_string(static_cast<long long>(n + 0.5));
  for (int i = static_cast<int>(digits.size()) - 3; i > 0; i -= 3) digits.insert(i, ",");
  return digits;
}

struct Tally {
  double training = 0, inference = 0, active = 0;
};

Status PlanModel(const Graph& graph, const ResourceSpec& r, int64_t seq) {
  WEIR_ASSIGN_OR_RETURN(ModelSpec model, ReadModel(r));
  const std::string& function = model.function;
  const auto& attrs = model.attrs;
  std::vector<TensorType> types(2, {DT_I64, {1, seq}});
  auto build = [&](const std::vector<std::string>& outputs, const std::string& loss) {
    ProgramOptions options;
    options.outputs = outputs;
    options.loss = loss;
    return Program::Build(graph, function, attrs, types, OpRegistry::Global(), options);
  };
  WEIR_ASSIGN_OR_RETURN(auto training, build({}, "loss"));
  WEIR_ASSIGN_OR_RETURN(auto inference, build({"logits"}, ""));
  ProgramCost train_cost = training->Cost(), infer_cost = inference->Cost();

  std::map<std::string, Tally> by_component, by_op;
  Tally total;
  std::map<std::string, const ParamInfo*> inference_params;
  for (const ParamInfo& p : inference->params()) inference_params[p.name] = &p;
  for (const ParamInfo& p : training->params()) {
    double n = static_cast<double>(NumElements(p.type.shape));
    std::string component = p.name.substr(0, p.name.find('.'));
    for (Tally* t : {&by_component[component], &by_op[p.op], &total}) {
      t->training += n;
      if (inference_params.count(p.name)) {
        t->inference += n;
        t->active += n * infer_cost.active_share.at(p.name);
      }
    }
  }
  DataType dtype = DT_F32;
  if (auto t = attrs.find("T"); t != attrs.end()) {
    auto typed = ConvertValue(t->second, ATTR_TYPE);
    if (typed.ok()) dtype = typed->type();
  }
  std::printf("model '%s': function %s, %s, sequence of %lld tokens\n", r.name.c_str(),
              function.c_str(), DataTypeName(dtype), static_cast<long long>(seq));
  auto table = [](const char* title, const std::map<std::string, Tally>& rows, const Tally& all) {
    std::printf("  %-30s %12s %12s %12s\n", title, "training", "inference", "per token");
    for (const auto& [name, t] : rows) {
      std::printf("    %-28s %12s %12s %12s\n", name.c_str(), Count(t.training).c_str(),
                  t.inference > 0 ? Count(t.inference).c_str() : "-",
                  t.inference > 0 ? Count(t.active).c_str() : "-");
    }
    std::printf("    %-28s %12s %12s %12s\n", "total", Count(all.training).c_str(),
                Count(all.inference).c_str(), Count(all.active).c_str());
  };
  std::printf("parameters (%s total, %s activated per token at inference)\n",
              Grouped(total.inference).c_str(), Grouped(total.active).c_str());
  table("by component", by_component, total);
  table("by op", by_op, total);
  double tokens = static_cast<double>(seq);
  std::printf("FLOPs per token\n");
  std::printf("    inference forward            %s\n",
              Flops(infer_cost.forward_flops / tokens).c_str());
  std::printf("    training (3x forward)        %s\n",
              Flops(3 * train_cost.forward_flops / tokens).c_str());
  std::printf("activations per token (training, %s)  %s bytes\n", DataTypeName(dtype),
              Grouped(static_cast<double>(training->stats().memory.arena_bytes) / tokens).c_str());
  double cached = infer_cost.cached_elements_per_token;
  std::printf("KV cache per token: %s elements = %s bytes in bf16, %s bytes in f32\n",
              Grouped(cached).c_str(), Grouped(2 * cached).c_str(), Grouped(4 * cached).c_str());
  std::printf("pipeline: no schedule in this graph\n");
  return Status();
}

}  // namespace

int PlanCommand(const std::vector<std::string>& argv) {
  Args args;
  if (auto exit = ParseCommand(
          "plan", argv, {{"set", true, true}, {"seq-len", true, false}, {"model", true, false}},
          kHelp, 1, 1, &args))
    return *exit;
  auto seq = args.GetInt("seq-len", 4096);
  if (!seq.ok() || *seq < 1) {
    std::cerr << "weir plan: --seq-len takes a positive number\n";
    return 2;
  }
  auto graph = PrepareGraph(args.positional[0], args.All("set"));
  if (!graph.ok()) {
    std::cerr << graph.status().ToString() << "\n";
    return 1;
  }
  int planned = 0;
  for (const ResourceSpec& r : graph->resources) {
    if (r.kind != "model" || (args.Has("model") && r.name != *args.Get("model"))) continue;
    Status s = PlanModel(*graph, r, *seq);
    if (!s.ok()) {
      std::cerr << s.ToString() << "\n";
      return 1;
    }
    ++planned;
  }
  if (planned == 0) {
    std::cerr << args.positional[0] << ": no model resource"
              << (args.Has("model") ? " named '" + *args.Get("model") + "'" : std::string())
              << " to plan\n";
    return 1;
  }
  return 0;
}

}  // namespace weir::cli
