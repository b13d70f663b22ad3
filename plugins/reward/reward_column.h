// What every reward stream op shares: the schema of a reward op (a batch in, the same batch with
// one float column added) and the kernel that adds the column a Scorer computes. The rule
// rewards (plugin.cc) and the reward model (model/reward_model_op.cc) use it, so the model fits
// the same slot of a GRPO graph.
#pragma once

#include <functional>
#include <memory>
#include <string>

#include "weir/registrar.h"
#include "weir/stream_kernel.h"

namespace weir::reward {

// Scores every row of a batch; an error names the column that could not be read.
using Scorer = std::function<StatusOr<FloatColumn>(const Batch& batch)>;

class AddRewardColumn : public StreamKernel {
 public:
  AddRewardColumn(std::string output, Scorer score)
      : output_(std::move(output)), score_(std::move(score)) {}

  Status Process(int, const Batch& batch, Emitter& out) override {
    WEIR_ASSIGN_OR_RETURN(FloatColumn rewards, score_(batch));
    Batch scored = batch;
    WEIR_RETURN_IF_ERROR(scored.Set(output_, std::move(rewards)));
    out.Emit(std::move(scored));
    return Status();
  }

 private:
  std::string output_;
  Scorer score_;
};

// The kernel of a reward op whose `output` attr names the column added.
inline StatusOr<std::unique_ptr<StreamKernel>> MakeKernel(const NodeContext& ctx, Scorer score) {
  return std::unique_ptr<StreamKernel>(new AddRewardColumn(ctx.String("output"), std::move(score)));
}

// The schema every reward op starts from: a batch in and out, the completion column read and the
// float column written (default `output`).
inline OpBuilder& RewardOp(Registrar& r, const std::string& name, const std::string& doc,
                           const std::string& output) {
  return r.StreamOp(name)
      .Doc(doc)
      .Input("in", "batch", "rows with the completions to score")
      .Output("out", "batch", "the same rows with the reward column added")
      .Attr<std::string>("completion_column", "completion", "the text scored (string)")
      .Attr<std::string>("output", output, "the float column of rewards added");
}

}  // namespace weir::reward
