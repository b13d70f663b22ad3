// The "model" resource kind: weir::Model (weir/runtime/model.h) built from a graph's resource.
#include "weir/runtime/model.h"

#include "weir/checkpoints.h"
#include "weir/device.h"
#include "weir/graph.h"
#include "weir/safetensors.h"

namespace weir::train {
namespace {

struct LoraSetup {
  LoraConfig config;
  std::map<std::string, Tensor> adapters;  // lora_from's
};

// The LoRA settings of a model resource: its attrs, or lora_from's adapter_config.json.
StatusOr<LoraSetup> ReadLora(const ResourceContext& ctx, const FunctionInstance& instance) {
  LoraSetup lora;
  lora.config.targets = ctx.attrs().StringList("lora_targets");
  lora.config.rank = ctx.attrs().Int("lora_rank");
  lora.config.alpha = ctx.attrs().Float("lora_alpha");
  lora.config.dropout = ctx.attrs().Float("lora_dropout");
  lora.config.seed = ctx.attrs().Int("seed");
  if (const std::string& from = ctx.attrs().String("lora_from"); !from.empty()) {
    std::filesystem::path dir = ctx.InputPath(from);
    if (std::filesystem::exists(dir / kChecksumsFile))
      WEIR_RETURN_IF_ERROR(VerifyChecksums(dir).Prepend("lora_from"));
    WEIR_ASSIGN_OR_RETURN(LoraConfig saved, ReadLoraConfig(dir));
    lora.config.alpha = saved.alpha;
    lora.config.rank = saved.rank;
    if (lora.config.targets.empty()) lora.config.targets = saved.targets;
    auto values = ReadSafetensorsSharded(dir, kAdapterStem);
    if (!values.ok()) return Status(values.status()).Prepend("lora_from " + dir.string());
    for (auto& [name, t] : *values) lora.adapters[name] = t.Clone();
    if (lora.config.targets.empty())
      return InvalidArgument("lora_from " + dir.string() +
                             ": no target_modules and no lora_targets");
  }
  // Every target names at least one Linear: a typo would otherwise train nothing.
  for (const std::string& target : lora.config.targets) {
    bool found = false;
    for (const Node& node : instance.nodes)
      found =
          found || (MatchesPathSuffix(node.name, target) && node.entry->def.name() == "nn.Linear");
    if (!found) {
      return InvalidArgument("lora_targets: '" + target + "' names no nn.Linear node of " +
                             ctx.attrs().Get("function").func() +
                             " (targets name nodes by the end of their path, e.g. attn.wq_b)");
    }
  }
  return lora;
}

}  // namespace

void RegisterModel(Registrar& r) {
  r.ResourceKind("model")
      .Doc(
          "A model: the tensor function that defines it, the attrs that size it, and its "
          "parameters (f32 masters, initialized from `seed` by each op's initializer).")
      .AttrOfType("function", ATTR_FUNC, std::nullopt, "the model's tensor function")
      .Attr<std::string>("attrs", "", "the function's attrs, as key=value pairs")
      .Attr<int64_t>("seed", 0, "seed of the parameter initialization")
      .Attr<std::string>("device", "cpu",
                         "where the model's programs run: `cpu`, or `cuda:N` (a GPU, when weir "
                         "is built with CUDA); masters and optimizer states stay on the host")
      .Attr("check_finite", false,
            "check every node's outputs for NaN and Inf: the first is an error naming the node, "
            "its op and the output (slower; for finding where a run goes wrong)")
      .Attr<std::string>("init_from", "",
                         "a folder whose model.safetensors (or its sharded index) holds "
                         "parameters by name to start from: `weir hf import` output or a "
                         "checkpoint; parameters it lacks start from their initializers")
      .Attr("recompute", false,
            "recompute cheap ops (norms, elementwise) in the backward pass instead of keeping "
            "their outputs: less activation memory, the same gradients")
      .Attr("concurrent_nodes", false,
            "run independent nodes at the same time (their GEMMs single-threaded); helps when "
            "single ops cannot fill the cores, slower on 2 cores (plugins/train/README.md)")
      .Attr("lora_targets", std::vector<std::string>{},
            "LoRA: the nn.Linear nodes to adapt, by the end of their path (`attn.wq_b`, "
            "`wkv_b`, `*.w2`); the adapters alone are trained, the base frozen")
      .Attr<int64_t>("lora_rank", 8, "LoRA: rank of each adapter", Min(1))
      .Attr<double>("lora_alpha", 16.0, "LoRA: adapters are scaled by lora_alpha / lora_rank",
                    Min(0.0))
      .Attr<double>("lora_dropout", 0.0, "LoRA: dropout on the adapters' inputs in training",
                    Min(0.0), Max(0.99))
      .Attr<std::string>("lora_from", "",
                         "a folder with adapter.safetensors and adapter_config.json (a LoRA "
                         "checkpoint) whose adapters the model starts from; its targets and "
                         "alpha apply unless lora_targets is set")
      .Attr("lora_merge", false,
            "merge lora_from's adapters into the base weights (W + alpha/rank · B·A) and run "
            "the plain model: inference without adapter ops")
      .Factory([](const ResourceContext& ctx) -> StatusOr<std::shared_ptr<Resource>> {
        WEIR_ASSIGN_OR_RETURN(auto attrs,
                              ParseAttrValues(ctx.attrs().String("attrs"), SourceLoc{}));
        const std::string& function = ctx.attrs().Get("function").func();
        // Instantiating once here reports a bad function or attr when the run starts.
        WEIR_ASSIGN_OR_RETURN(
            FunctionInstance instance,
            InstantiateFunction(*ctx.env().graph, function, attrs, *ctx.env().ops));
        WEIR_ASSIGN_OR_RETURN(LoraSetup lora, ReadLora(ctx, instance));
        ProgramOptions options;
        options.device = ctx.attrs().String("device");
        // A missing GPU or an unknown device fails here, before any data is read.
        WEIR_RETURN_IF_ERROR(FindDeviceRuntime(options.device).status());
        options.recompute = ctx.attrs().Bool("recompute");
        options.concurrent_nodes = ctx.attrs().Bool("concurrent_nodes");
        options.check_finite = ctx.attrs().Bool("check_finite");
        auto model = std::make_shared<Model>(
            ctx.env().graph, ctx.env().ops, function, std::move(attrs),
            static_cast<uint64_t>(ctx.attrs().Int("seed")), std::move(options));
        std::map<std::string, Tensor> initial;
        std::string source = ctx.attrs().String("lora_from");
        if (const std::string& from = ctx.attrs().String("init_from"); !from.empty()) {
          std::filesystem::path dir = ctx.InputPath(from);
          // A training checkpoint carries checksums; a `weir hf import` folder does not.
          if (std::filesystem::exists(dir / kChecksumsFile))
            WEIR_RETURN_IF_ERROR(VerifyChecksums(dir).Prepend("init_from"));
          auto values = ReadSafetensorsSharded(dir, "model");
          if (!values.ok()) return Status(values.status()).Prepend("init_from " + dir.string());
          for (auto& [name, t] : *values) initial[name] = t.Clone();  // off the mapping
          source = dir.string();
        }
        for (auto& [name, t] : lora.adapters) initial[name] = std::move(t);
        if (ctx.attrs().Bool("lora_merge")) {
          if (lora.adapters.empty()) return InvalidArgument("lora_merge needs lora_from");
          if (ctx.attrs().String("init_from").empty())
            return InvalidArgument("lora_merge needs init_from: the base weights to merge into");
          auto merged = MergeLora(initial, lora.config.alpha);
          if (!merged.ok()) return Status(merged.status()).Prepend("lora_merge");
          initial = std::move(*merged);
        } else {
          model->SetLora(lora.config);
        }
        if (!initial.empty()) model->SetInitial(std::move(initial), source);
        return std::shared_ptr<Resource>(model);
      });
}

}  // namespace weir::train
