// reward.PreferencePairs: training batches for a reward model from rows of a prompt and two
// completions of it, one preferred (chosen) and one not (rejected), as TRL's preference datasets
// hold them. A batch of N pairs is 2N sequences: the N chosen ones, then the N rejected ones in
// the same order, which is the layout reward.BradleyTerryLoss reads its scores in.
#include <numeric>
#include <random>

#include "chat/chat.h"
#include "model/reward_model.h"

namespace weir::reward {
namespace {

struct Pair {
  std::vector<int64_t> chosen, rejected;
};

class PreferencePairsKernel : public StreamKernel {
 public:
  PreferencePairsKernel(const NodeContext& ctx, SequenceFormat format)
      : ctx_(ctx), format_(std::move(format)) {}

  Status Process(int, const Batch& batch, Emitter&) override {
    const StringColumn* columns[3];
    const char* attrs[3] = {"prompt_column", "chosen_column", "rejected_column"};
    for (int k = 0; k < 3; ++k) {
      auto column = batch.Get<StringColumn>(ctx_.String(attrs[k]));
      if (!column.ok()) return ctx_.Error(std::string(attrs[k]) + ": " + column.status().message());
      columns[k] = *column;
    }
    for (size_t row = 0; row < columns[0]->size(); ++row) {
      Pair pair;
      bool cut_chosen = false, cut_rejected = false;
      WEIR_ASSIGN_OR_RETURN(pair.chosen, EncodeSequence(format_, (*columns[0])[row],
                                                        (*columns[1])[row], &cut_chosen));
      WEIR_ASSIGN_OR_RETURN(pair.rejected, EncodeSequence(format_, (*columns[0])[row],
                                                          (*columns[2])[row], &cut_rejected));
      truncated_ += (cut_chosen ? 1 : 0) + (cut_rejected ? 1 : 0);
      pairs_.push_back(std::move(pair));
    }
    return Status();
  }

  // The pairs arrive whole before any batch leaves, so every epoch can shuffle all of them.
  Status Finish(Emitter& out) override {
    if (pairs_.empty()) return ctx_.Error("no preference pairs arrived");
    std::mt19937_64 rng(static_cast<uint64_t>(ctx_.Int("seed")));
    std::vector<size_t> order(pairs_.size());
    auto per_batch = static_cast<size_t>(ctx_.Int("batch_size"));
    for (int64_t epoch = 0; epoch < ctx_.Int("epochs"); ++epoch) {
      std::iota(order.begin(), order.end(), 0);
      if (ctx_.Bool("shuffle")) std::shuffle(order.begin(), order.end(), rng);
      for (size_t begin = 0; begin < order.size(); begin += per_batch) {
        size_t end = std::min(order.size(), begin + per_batch);
        std::vector<std::vector<int64_t>> sequences;
        for (size_t k = begin; k < end; ++k) sequences.push_back(pairs_[order[k]].chosen);
        for (size_t k = begin; k < end; ++k) sequences.push_back(pairs_[order[k]].rejected);
        PaddedSequences padded =
            PadSequences(sequences, ctx_.Int("pad_id"), ctx_.Int("pad_to_multiple"), DT_F32);
        Batch b;
        WEIR_RETURN_IF_ERROR(b.Set("tokens", std::move(padded.tokens)));
        WEIR_RETURN_IF_ERROR(b.Set("last", std::move(padded.last)));
        b.meta()["pairs"] = std::to_string(end - begin);
        out.Emit(std::move(b));
      }
    }
    ctx_.Metric(0, {{"pairs", static_cast<double>(pairs_.size())},
                    {"truncated_sequences", static_cast<double>(truncated_)}});
    return Status();
  }

 private:
  const NodeContext& ctx_;
  SequenceFormat format_;
  std::vector<Pair> pairs_;
  int64_t truncated_ = 0;
};

}  // namespace

// The attrs reward.PreferencePairs and reward.Model share: how a row becomes a sequence.
void SequenceAttrs(OpBuilder& op) {
  op.RequiredAttr<std::string>("tokenizer", "a tokenizer.json (or tiktoken) file")
      .Attr<std::string>("template", rl::kDefaultTemplate,
                         "the chat template: {prompt} is replaced by the row's prompt")
      .Attr<std::string>("end", rl::kDefaultEnd,
                         "the special token appended after the completion, where the score is "
                         "read; '' appends none (the score is read at the completion's last "
                         "token)")
      .Attr<int64_t>("max_len", 512,
                     "tokens per sequence at most; a longer one keeps its last max_len tokens "
                     "(the completion's end, where the score is read)",
                     Min(1))
      .Attr<int64_t>("pad_id", 0, "the token id padding each sequence on the right", Min(0))
      .Attr<int64_t>("pad_to_multiple", 8,
                     "the time dim is the longest sequence rounded up to a multiple of this, so "
                     "batches of similar lengths share one compiled program",
                     Min(1));
}

void RegisterPreferencePairs(Registrar& r) {
  OpBuilder& op = r.StreamOp("reward.PreferencePairs");
  op.Doc(
        "Reward-model training batches from rows of prompt, chosen and rejected completions "
        "(string columns): each completion is the chat `template` around the prompt, the "
        "completion and the `end` token, encoded with `tokenizer`. A batch of N = `batch_size` "
        "pairs (the last may be smaller) holds tokens [2N, T] (i64, right-padded with `pad_id`) "
        "and last [2N, T] (f32, 1 at each sequence's last token): the N chosen sequences, then "
        "the N rejected ones of the same pairs, as reward.BradleyTerryLoss reads its scores. "
        "Holds the pairs and emits `epochs` passes when its input ends, shuffled per epoch from "
        "`seed`; logs the number of pairs and of truncated sequences.")
      .Input("rows", "batch", "rows with the prompt, chosen and rejected string columns")
      .Output("batches", "batch", "tokens and last tensors");
  SequenceAttrs(op);
  op.Attr<std::string>("prompt_column", "prompt", "the prompts (string)")
      .Attr<std::string>("chosen_column", "chosen", "the preferred completions (string)")
      .Attr<std::string>("rejected_column", "rejected", "the other completions (string)")
      .Attr<int64_t>("batch_size", 16, "pairs per batch (2 × batch_size sequences)", Min(1))
      .Attr<int64_t>("epochs", 1, "passes over the pairs", Min(1))
      .Attr("shuffle", true, "shuffle the pairs in each epoch")
      .Attr<int64_t>("seed", 0, "shuffle seed")
      .Stateful()
      .Factory([](const NodeContext& ctx) -> StatusOr<std::unique_ptr<StreamKernel>> {
        WEIR_ASSIGN_OR_RETURN(SequenceFormat format, LoadSequenceFormat(ctx));
        return std::unique_ptr<StreamKernel>(
            std::make_unique<PreferencePairsKernel>(ctx, std::move(format)));
      });
}

}  // namespace weir::reward
