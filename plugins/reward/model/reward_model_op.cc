// reward.Model: a learned reward in the slot of the rule rewards. Each row's prompt and completion
// become the sequence the reward model was trained on (the same encoding as
// reward.PreferencePairs), and the model's scalar score is added as a float column.
#include <algorithm>

#include "model/reward_model.h"
#include "reward_column.h"
#include "weir/runtime/model.h"

namespace weir::reward {
namespace {

struct ScoringSetup {
  Model* model = nullptr;
  SequenceFormat format;
  std::string function;
  std::string prompts, completions;
  int64_t rows_per_pass = 0;
  int64_t pad_id = 0, multiple = 1;
  // What the function's `last` input holds: its loss_dtype (f64 for a model checked in f64).
  DataType last_dtype = DT_F32;
};

StatusOr<FloatColumn> ScoreRows(const NodeContext& ctx, const ScoringSetup& s, const Batch& batch) {
  WEIR_ASSIGN_OR_RETURN(const StringColumn* prompts, batch.Get<StringColumn>(s.prompts));
  WEIR_ASSIGN_OR_RETURN(const StringColumn* completions, batch.Get<StringColumn>(s.completions));
  FloatColumn scores;
  for (size_t begin = 0; begin < prompts->size(); begin += static_cast<size_t>(s.rows_per_pass)) {
    size_t end = std::min(prompts->size(), begin + static_cast<size_t>(s.rows_per_pass));
    std::vector<std::vector<int64_t>> sequences;
    for (size_t row = begin; row < end; ++row) {
      bool truncated = false;
      WEIR_ASSIGN_OR_RETURN(
          std::vector<int64_t> ids,
          EncodeSequence(s.format, (*prompts)[row], (*completions)[row], &truncated));
      sequences.push_back(std::move(ids));
    }
    PaddedSequences padded = PadSequences(sequences, s.pad_id, s.multiple, s.last_dtype);
    std::vector<TensorType> types = {{DT_I64, padded.tokens.shape()},
                                     {s.last_dtype, padded.last.shape()}};
    auto program = s.model->GetProgram(types, "", s.function);
    if (!program.ok()) return ctx.Error(s.function + ": " + program.status().message());
    const std::vector<std::string>& names = (*program)->output_names();
    auto at = std::find(names.begin(), names.end(), "scores");
    if (at == names.end()) return ctx.Error("function " + s.function + " has no output 'scores'");
    Program::Outputs result;
    {
      // The parameters may not change under a running forward pass (a trainer shares them).
      std::lock_guard<std::mutex> lock(s.model->mutex());
      auto run = (*program)->Run({padded.tokens, padded.last}, s.model->params());
      if (!run.ok()) return ctx.Error(s.function + ": " + run.status().message());
      result = std::move(*run);
    }
    const Tensor& values = result.values[static_cast<size_t>(at - names.begin())];
    for (int64_t i = 0; i < values.numel(); ++i) scores.push_back(values.At(i));
  }
  return scores;
}

}  // namespace

void RegisterRewardModel(Registrar& r) {
  OpBuilder& op = RewardOp(
      r, "reward.Model",
      "A reward model's score of each row (a learned reward, in the slot of the rule rewards): "
      "the chat `template` around `prompt_column`, the completion and the `end` token, encoded "
      "with `tokenizer` exactly as reward.PreferencePairs encodes its training pairs, scored by "
      "`function` of the `model` resource (DeepseekV3RewardScore: the scalar head on the final "
      "hidden state at the last token). Rows are scored `batch_size` at a time, right-padded; "
      "the model's causal attention makes a row's score independent of its batch.",
      "rewards/model");
  SequenceAttrs(op);
  op.AttrOfType("model", ATTR_RESOURCE, std::nullopt,
                "the reward model (a model resource whose checkpoint holds score_head.weight)")
      .Attr<std::string>("function", "DeepseekV3RewardScore",
                         "the graph function (tokens, last) -> scores that calls the model's "
                         "function inline")
      .Attr<std::string>("prompt_column", "prompt", "the prompts (string)")
      .Attr<int64_t>("batch_size", 64, "rows per forward pass", Min(1))
      .Factory([](const NodeContext& ctx) -> StatusOr<std::unique_ptr<StreamKernel>> {
        ScoringSetup s;
        WEIR_ASSIGN_OR_RETURN(s.model, ctx.Resource<Model>("model"));
        WEIR_ASSIGN_OR_RETURN(s.format, LoadSequenceFormat(ctx));
        s.function = ctx.String("function");
        s.prompts = ctx.String("prompt_column");
        s.completions = ctx.String("completion_column");
        s.rows_per_pass = ctx.Int("batch_size");
        s.pad_id = ctx.Int("pad_id");
        s.multiple = ctx.Int("pad_to_multiple");
        // Written in a resource's attrs the dtype may still be a word ("f64"), typed only
        // when the function is instantiated.
        auto loss_dtype = s.model->attrs().find("loss_dtype");
        if (loss_dtype != s.model->attrs().end() &&
            (loss_dtype->second.type() == DT_F64 || loss_dtype->second.s() == "f64"))
          s.last_dtype = DT_F64;
        return MakeKernel(ctx, [&ctx, s](const Batch& batch) { return ScoreRows(ctx, s, batch); });
      });
}

}  // namespace weir::reward
