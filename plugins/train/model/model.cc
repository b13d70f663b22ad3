// The "model" resource kind: weir::Model (weir/runtime/model.h) built from a graph's resource.
#include "weir/runtime/model.h"

#include "weir/checkpoints.h"
#include "weir/graph.h"
#include "weir/safetensors.h"

namespace weir::train {

void RegisterModel(Registrar& r) {
  r.ResourceKind("model")
      .Doc(
          "A model: the tensor function that defines it, the attrs that size it, and its "
          "parameters (f32 masters, initialized from `seed` by each op's initializer).")
      .AttrOfType("function", ATTR_FUNC, std::nullopt, "the model's tensor function")
      .Attr<std::string>("attrs", "", "the function's attrs, as key=value pairs")
      .Attr<int64_t>("seed", 0, "seed of the parameter initialization")
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
      .Factory([](const ResourceContext& ctx) -> StatusOr<std::shared_ptr<Resource>> {
        WEIR_ASSIGN_OR_RETURN(auto attrs,
                              ParseAttrValues(ctx.attrs().String("attrs"), SourceLoc{}));
        const std::string& function = ctx.attrs().Get("function").func();
        // Instantiating once here reports a bad function or attr when the run starts.
        WEIR_RETURN_IF_ERROR(
            InstantiateFunction(*ctx.env().graph, function, attrs, *ctx.env().ops).status());
        ProgramOptions options;
        options.recompute = ctx.attrs().Bool("recompute");
        options.concurrent_nodes = ctx.attrs().Bool("concurrent_nodes");
        options.check_finite = ctx.attrs().Bool("check_finite");
        auto model = std::make_shared<Model>(
            ctx.env().graph, ctx.env().ops, function, std::move(attrs),
            static_cast<uint64_t>(ctx.attrs().Int("seed")), std::move(options));
        if (const std::string& from = ctx.attrs().String("init_from"); !from.empty()) {
          std::filesystem::path dir = ctx.InputPath(from);
          // A training checkpoint carries checksums; a `weir hf import` folder does not.
          if (std::filesystem::exists(dir / kChecksumsFile))
            WEIR_RETURN_IF_ERROR(VerifyChecksums(dir).Prepend("init_from"));
          auto values = ReadSafetensorsSharded(dir, "model");
          if (!values.ok()) return Status(values.status()).Prepend("init_from " + dir.string());
          std::map<std::string, Tensor> owned;
          for (auto& [name, t] : *values) owned[name] = t.Clone();  // off the mapping
          model->SetInitial(std::move(owned), dir.string());
        }
        return std::shared_ptr<Resource>(model);
      });
}

}  // namespace weir::train
