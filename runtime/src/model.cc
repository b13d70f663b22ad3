#include "weir/runtime/model.h"

#include <set>

#include "weir/attr.h"

namespace weir {

Model::Model(const Graph* graph, const OpRegistry* ops, std::string function,
             std::map<std::string, AttrValue> attrs, uint64_t seed, ProgramOptions options)
    : graph_(graph),
      ops_(ops),
      function_(std::move(function)),
      attrs_(std::move(attrs)),
      seed_(seed),
      options_(std::move(options)) {}

Model::~Model() = default;

StatusOr<std::shared_ptr<const Program>> Model::GetProgram(
    const std::vector<TensorType>& inputs, const std::string& loss, const std::string& function,
    const std::map<std::string, AttrValue>& function_attrs,
    const ProgramOptions::Pipeline& pipeline) {
  const std::string& fn = function.empty() ? function_ : function;
  std::map<std::string, AttrValue> attrs = attrs_;
  if (fn != function_) {
    auto f = graph_->functions.find(fn);
    if (f == graph_->functions.end())
      return NotFound("no function '" + fn + "' in the graph (model '" + function_ + "')");
    attrs.clear();
    for (const WrittenAttr& a : f->second.attrs)
      if (auto it = attrs_.find(a.key); it != attrs_.end()) attrs[a.key] = it->second;
  }
  for (const auto& [k, v] : function_attrs) attrs[k] = v;
  std::string key = fn + "|" + loss + "|";
  for (const auto& [k, v] : function_attrs) key += k + "=" + FormatAttrValue(v) + ";";
  key += "|";
  for (const TensorType& t : inputs) key += t.ToString() + ";";
  if (pipeline.stages > 1) {
    key += "|stage " + std::to_string(pipeline.stage) + "/" + std::to_string(pipeline.stages);
    for (const std::string& s : pipeline.starts) key += ";" + s;
  }
  std::lock_guard<std::mutex> lock(mu_);
  auto it = programs_.find(key);
  if (it != programs_.end()) return it->second;
  ProgramOptions options = options_;
  options.loss = loss;
  options.pipeline = pipeline;
  if (pipeline.stages > 1) options.defer_weight_grads = true;
  WEIR_ASSIGN_OR_RETURN(auto program, Program::Build(*graph_, fn, attrs, inputs, *ops_, options));
  for (const ParamInfo& p : program->params()) {
    auto it = initial_.find(p.name);
    if (it == initial_.end() || params_.Find(p.name) != nullptr) continue;
    if (it->second.shape() != p.type.shape) {
      return InvalidArgument("init_from " + initial_source_ + ": parameter '" + p.name + "' is " +
                             ShapeString(it->second.shape()) + ", the model's is " +
                             ShapeString(p.type.shape));
    }
    params_.Set(p.name, it->second.To(DT_F32));
  }
  if (!loss.empty() && function.empty() && pipeline.stages == 1) {
    // A training program of the model's own function holds every parameter: a name it lacks is a
    // mismatched checkpoint.
    std::set<std::string> names;
    std::vector<std::string> unused;
    for (const ParamInfo& p : program->params()) names.insert(p.name);
    for (const auto& [name, t] : initial_)
      if (!names.count(name)) unused.push_back(name);
    if (!unused.empty()) {
      return InvalidArgument("init_from " + initial_source_ + " holds " +
                             std::to_string(unused.size()) + " parameters the model (function " +
                             function_ + ") does not have, e.g. '" + unused[0] + "'");
    }
  }
  params_.Initialize(program->params(), seed_);
  programs_[key] = program;
  return program;
}

Status Model::AddRewrite(const NodeRewrite& rewrite) {
  std::lock_guard<std::mutex> lock(mu_);
  for (const NodeRewrite& r : options_.rewrites)
    if (r.pattern == rewrite.pattern && r.from_op == rewrite.from_op && r.to_op == rewrite.to_op)
      return Status();
  if (!programs_.empty()) {
    return FailedPrecondition("model '" + function_ + "' already built programs without running " +
                              rewrite.from_op + " as " + rewrite.to_op);
  }
  options_.rewrites.push_back(rewrite);
  return Status();
}

StatusOr<const ParamStore*> Model::InferenceParams() {
  if (!lora_.enabled()) return &params_;
  if (merged_version_ != version_ || merged_.values().empty()) {
    WEIR_ASSIGN_OR_RETURN(auto merged, MergeLora(params_.values(), lora_.alpha));
    merged_ = ParamStore();
    for (auto& [name, t] : merged) merged_.Set(name, std::move(t));
    merged_version_ = version_;
  }
  return &merged_;
}

}  // namespace weir
