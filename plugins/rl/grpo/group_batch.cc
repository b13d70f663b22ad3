// rl.GroupBatch: turns scored GRPO groups into training batches for train.Step. Each group's
// advantages come from its rewards (spec §7.1: the reward minus the group mean, over the group's
// std); the completions' per-token log-probabilities under the policy as it is now (π_old) and
// under the frozen reference model are computed here, once, so the trainer's μ updates all
// compare against the policy that sampled them.
#include "losses/grpo_math.h"
#include "weir/runtime/model.h"
#include "weir/stream_kernel.h"

namespace weir::rl {
namespace {

class GroupBatchKernel : public StreamKernel {
 public:
  GroupBatchKernel(const NodeContext& ctx, Model* policy, Model* reference)
      : ctx_(ctx), policy_(policy), reference_(reference) {}

  Status Process(int, const Batch& batch, Emitter& out) override {
    int64_t group_size = ctx_.Int("num_generations");
    WEIR_ASSIGN_OR_RETURN(const IntListColumn* prompts, batch.Get<IntListColumn>("prompt_ids"));
    WEIR_ASSIGN_OR_RETURN(const IntListColumn* completions,
                          batch.Get<IntListColumn>("completion_ids"));
    WEIR_ASSIGN_OR_RETURN(const IntColumn* truncated, batch.Get<IntColumn>("truncated"));
    WEIR_ASSIGN_OR_RETURN(const IntColumn* groups, batch.Get<IntColumn>("group"));
    WEIR_ASSIGN_OR_RETURN(std::vector<double> rewards, Floats(batch, ctx_.String("reward_column")));
    int64_t n = static_cast<int64_t>(batch.num_rows());
    // Generation emits each prompt's copies consecutively; anything else is a wiring mistake.
    for (int64_t i = 0; i < n; ++i) {
      if ((*groups)[static_cast<size_t>(i)] != (*groups)[static_cast<size_t>(i - i % group_size)])
        return ctx_.Error("row " + std::to_string(i) + " is not in the group of row " +
                          std::to_string(i - i % group_size) + ": expected " +
                          std::to_string(group_size) +
                          " consecutive completions per prompt (rl.Generate's num_generations)");
    }
    auto scored = GroupAdvantages(rewards, group_size, ctx_.String("scale_rewards"));
    if (!scored.ok()) return ctx_.Error(scored.status().message());

    int64_t length = 0;
    for (int64_t i = 0; i < n; ++i) {
      length = std::max<int64_t>(
          length, static_cast<int64_t>((*prompts)[i].size() + (*completions)[i].size()) - 1);
    }
    bool mask_truncated = ctx_.Bool("mask_truncated_completions");
    std::vector<double> tokens(static_cast<size_t>(n * length), 0.0);
    std::vector<double> targets(static_cast<size_t>(n * length), -100.0);
    std::vector<double> mask(static_cast<size_t>(n * length), 0.0);
    int64_t counted = 0, clipped = 0;
    for (int64_t i = 0; i < n; ++i) {
      std::vector<int64_t> seq = (*prompts)[static_cast<size_t>(i)];
      const auto& c = (*completions)[static_cast<size_t>(i)];
      seq.insert(seq.end(), c.begin(), c.end());
      int64_t prompt_length = static_cast<int64_t>((*prompts)[static_cast<size_t>(i)].size());
      bool is_truncated = (*truncated)[static_cast<size_t>(i)] != 0;
      clipped += is_truncated;
      for (int64_t t = 0; t + 1 < static_cast<int64_t>(seq.size()); ++t) {
        size_t at = static_cast<size_t>(i * length + t);
        tokens[at] = static_cast<double>(seq[static_cast<size_t>(t)]);
        targets[at] = static_cast<double>(seq[static_cast<size_t>(t + 1)]);
        // Only completion tokens are scored: position t predicts token t + 1.
        if (t + 1 >= prompt_length && !(mask_truncated && is_truncated)) {
          mask[at] = 1.0;
          ++counted;
        }
      }
    }
    Batch train;
    Tensor tokens_t = Tensor::FromValues(DT_I64, {n, length}, tokens);
    Tensor targets_t = Tensor::FromValues(DT_I64, {n, length}, targets);
    Tensor entropy;
    WEIR_ASSIGN_OR_RETURN(Tensor old_logp, LogProbs(*policy_, tokens_t, targets_t, &entropy));
    // Without a reference model the KL term is off (beta = 0); comparing with the sampling
    // policy keeps the logged kl meaningful: the drift of the μ updates (0 at μ = 1).
    Tensor ref_logp = old_logp;
    if (reference_ != nullptr) {
      WEIR_ASSIGN_OR_RETURN(ref_logp, LogProbs(*reference_, tokens_t, targets_t, nullptr));
    }
    std::vector<double> advantages(scored->advantages.begin(), scored->advantages.end());
    WEIR_RETURN_IF_ERROR(train.Set("tokens", tokens_t));
    WEIR_RETURN_IF_ERROR(train.Set("targets", targets_t));
    WEIR_RETURN_IF_ERROR(train.Set("mask", Tensor::FromValues(DT_F32, {n, length}, mask)));
    WEIR_RETURN_IF_ERROR(train.Set("advantages", Tensor::FromValues(DT_F32, {n}, advantages)));
    WEIR_RETURN_IF_ERROR(train.Set("old_logp", old_logp.To(DT_F32)));
    WEIR_RETURN_IF_ERROR(train.Set("ref_logp", ref_logp.To(DT_F32)));

    // TRL's metric names, so a GRPO run reads like one users know.
    ++rollouts_;
    double logp_sum = 0, entropy_sum = 0;
    Tensor logp32 = old_logp.To(DT_F32);
    for (int64_t i = 0; i < n * length; ++i) {
      if (mask[static_cast<size_t>(i)] == 0) continue;
      logp_sum += logp32.At(i);
      if (!entropy.shape().empty()) entropy_sum += entropy.At(i);
    }
    double per_token = counted > 0 ? 1.0 / static_cast<double>(counted) : 0.0;
    std::vector<std::pair<std::string, double>> metrics = {
        {"reward", scored->reward_mean},
        {"reward_std", scored->reward_std},
        {"frac_reward_zero_std", scored->frac_reward_zero_std},
        {"completions/clipped_ratio", static_cast<double>(clipped) / static_cast<double>(n)},
        {"num_tokens", static_cast<double>(counted)},
        {"entropy", entropy_sum * per_token},
        {"completions/mean_logp", logp_sum * per_token}};
    for (const auto& [name, column] : batch.columns()) {
      if (!name.starts_with("rewards/")) continue;
      auto values = Floats(batch, name);
      if (!values.ok()) continue;
      double sum = 0;
      for (double v : *values) sum += v;
      metrics.emplace_back(name + "/mean", sum / static_cast<double>(n));
    }
    ctx_.Metric(rollouts_, metrics);
    for (int64_t k = 0; k < ctx_.Int("iterations"); ++k) out.Emit(train);
    return Status();
  }

 private:
  // A float or int column as doubles.
  static StatusOr<std::vector<double>> Floats(const Batch& batch, const std::string& name) {
    if (auto f = batch.Get<FloatColumn>(name); f.ok()) return **f;
    auto i = batch.Get<IntColumn>(name);
    if (!i.ok()) return Status(batch.Get<FloatColumn>(name).status());
    return std::vector<double>((*i)->begin(), (*i)->end());
  }

  // Per-token log-probabilities of `targets` under `model`, through the graph function that
  // computes them (`logprob_function`: the model's function called inline, so the parameters
  // are the model's).
  StatusOr<Tensor> LogProbs(Model& model, const Tensor& tokens, const Tensor& targets,
                            Tensor* entropy) {
    std::vector<TensorType> types = {{tokens.dtype(), tokens.shape()},
                                     {targets.dtype(), targets.shape()}};
    const std::string& function = ctx_.String("logprob_function");
    std::map<std::string, AttrValue> attrs = {
        {"temperature", ToAttrValue(ctx_.Float("temperature"))}};
    auto program = model.GetProgram(types, "", function, attrs);
    if (!program.ok()) return ctx_.Error(function + ": " + program.status().message());
    std::lock_guard<std::mutex> lock(model.mutex());
    auto run = (*program)->Run({tokens, targets}, model.params());
    if (!run.ok()) return ctx_.Error(function + ": " + run.status().message());
    const auto& names = (*program)->output_names();
    Tensor logp;
    for (size_t o = 0; o < names.size(); ++o) {
      if (names[o] == "logp") logp = run->values[o];
      if (names[o] == "entropy" && entropy != nullptr) *entropy = run->values[o];
    }
    if (logp.shape().empty()) return ctx_.Error("function " + function + " has no output 'logp'");
    return logp;
  }

  const NodeContext& ctx_;
  Model* policy_;
  Model* reference_;
  int64_t rollouts_ = 0;
};

}  // namespace

void RegisterGroupBatch(Registrar& r) {
  AttrValue none;
  none.set_s("");
  r.StreamOp("rl.GroupBatch")
      .Doc(
          "Makes a GRPO training batch of scored completions (rl.Generate, then reward ops): "
          "tokens and targets [rows, time] (prompt and completion, right-padded; targets -100 "
          "past the end), mask (1 where the target is a completion token), advantages from "
          "`reward_column` normalized per group of `num_generations` (scale_rewards), and the "
          "completions' log-probabilities under `model` now (old_logp) and under `reference` "
          "(ref_logp; without one, old_logp again, so kl is the drift of the μ updates). Emits the "
          "batch `iterations` times (μ updates per "
          "generation). Logs reward, reward_std, frac_reward_zero_std, rewards/<name>/mean, "
          "completions/clipped_ratio and num_tokens, as TRL names them.")
      .Input("scored", "batch", "rows of rl.Generate with a reward column")
      .Output("batch", "batch", "the training batch, `iterations` times")
      .AttrOfType("model", ATTR_RESOURCE, std::nullopt, "the policy (the model being trained)")
      .AttrOfType("reference", ATTR_RESOURCE, none,
                  "the frozen reference model for the KL term (empty: none; use with beta=0)")
      .Attr<std::string>("logprob_function", "DeepseekV3LogProbs",
                         "the graph function (tokens, targets) -> logp that calls the model's "
                         "function inline")
      .Attr<std::string>("reward_column", "reward", "the reward to normalize (float or int)")
      .Attr<double>("temperature", 1.0,
                    "the sampling temperature: logits are divided by it before the "
                    "log-probabilities (logprob_function's attr of that name)",
                    Min(1e-6))
      .Attr<int64_t>("num_generations", 8, "completions per prompt (rl.Generate's)", Min(2))
      .Attr<std::string>("scale_rewards", "group",
                         "divide advantages by the group's std, the batch's, or not at all",
                         OneOf{"group", "batch", "none"})
      .Attr<int64_t>("iterations", 1, "μ: optimizer steps on each generation batch", Min(1))
      .Attr("mask_truncated_completions", false,
            "completions that hit max_new_tokens get no loss (DAPO)")
      .Stateful()
      .Factory([](const NodeContext& ctx) -> StatusOr<std::unique_ptr<StreamKernel>> {
        WEIR_ASSIGN_OR_RETURN(Model * policy, ctx.Resource<Model>("model"));
        Model* reference = nullptr;
        if (!ctx.String("reference").empty()) {
          WEIR_ASSIGN_OR_RETURN(reference, ctx.Resource<Model>("reference"));
        }
        return std::unique_ptr<StreamKernel>(
            std::make_unique<GroupBatchKernel>(ctx, policy, reference));
      });
}

}  // namespace weir::rl
