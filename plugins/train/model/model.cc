#include "model/model.h"

#include "weir/graph.h"

namespace weir::train {

StatusOr<std::shared_ptr<const Program>> Model::GetProgram(const std::vector<TensorType>& inputs,
                                                           const std::string& loss) {
  std::string key = loss + "|";
  for (const TensorType& t : inputs) key += t.ToString() + ";";
  std::lock_guard<std::mutex> lock(mu_);
  auto it = programs_.find(key);
  if (it != programs_.end()) return it->second;
  ProgramOptions options = options_;
  options.loss = loss;
  WEIR_ASSIGN_OR_RETURN(auto program,
                        Program::Build(*graph_, function_, attrs_, inputs, *ops_, options));
  params_.Initialize(program->params(), seed_);
  programs_[key] = program;
  return program;
}

void RegisterModel(Registrar& r) {
  r.ResourceKind("model")
      .Doc(
          "A model: the tensor function that defines it, the attrs that size it, and its "
          "parameters (f32 masters, initialized from `seed` by each op's initializer).")
      .AttrOfType("function", ATTR_FUNC, std::nullopt, "the model's tensor function")
      .Attr<std::string>("attrs", "", "the function's attrs, as key=value pairs")
      .Attr<int64_t>("seed", 0, "seed of the parameter initialization")
      .Attr("recompute", false,
            "recompute cheap ops (norms, elementwise) in the backward pass instead of keeping "
            "their outputs: less activation memory, the same gradients")
      .Attr("concurrent_nodes", false,
            "run independent nodes at the same time (their GEMMs single-threaded); helps when "
            "single ops cannot fill the cores, slower on 2 cores (plugins/train/README.md)")
      .Factory([](const ResourceContext& ctx) -> StatusOr<std::shared_ptr<Resource>> {
        std::map<std::string, AttrValue> attrs;
        WEIR_ASSIGN_OR_RETURN(auto parsed,
                              ParseAttrString(ctx.attrs().String("attrs"), SourceLoc{}));
        for (const AttrAssignment& a : parsed) {
          WEIR_ASSIGN_OR_RETURN(attrs[a.key], InferLiteral(a.value));
        }
        const std::string& function = ctx.attrs().Get("function").func();
        // Instantiating once here reports a bad function or attr when the run starts.
        WEIR_RETURN_IF_ERROR(
            InstantiateFunction(*ctx.env().graph, function, attrs, *ctx.env().ops).status());
        ProgramOptions options;
        options.recompute = ctx.attrs().Bool("recompute");
        options.concurrent_nodes = ctx.attrs().Bool("concurrent_nodes");
        return std::shared_ptr<Resource>(std::make_shared<Model>(
            ctx.env().graph, ctx.env().ops, function, std::move(attrs),
            static_cast<uint64_t>(ctx.attrs().Int("seed")), std::move(options)));
      });
}

}  // namespace weir::train
