// rl.ChatTokens: supervised fine-tuning batches from (prompt, completion) rows. Each example is
// the chat template around the prompt, then the completion and the end token; only completion
// tokens (and the end token) are trained on. Examples are packed whole into rows of
// `seq_len` + 1 tokens, each followed by the end token, so a model whose doc_separator is that
// token attends within each example only (nn.SegmentIds); the rest of a row is padding that
// scores nothing.
#include <algorithm>
#include <numeric>
#include <random>

#include "bpe.h"
#include "chat/chat.h"
#include "weir/registrar.h"
#include "weir/stream_kernel.h"

namespace weir::rl {
namespace {

using tokenizer::Tokenizer;

struct Example {
  std::vector<int64_t> ids;  // prompt, completion, end token
  int64_t prompt_length = 0;
};

class ChatTokensKernel : public StreamKernel {
 public:
  ChatTokensKernel(const NodeContext& ctx, std::shared_ptr<Tokenizer> tokenizer, int64_t end)
      : ctx_(ctx), tokenizer_(std::move(tokenizer)), end_(end) {}

  Status Process(int, const Batch& batch, Emitter&) override {
    WEIR_ASSIGN_OR_RETURN(const StringColumn* prompts,
                          batch.Get<StringColumn>(ctx_.String("prompt_column")));
    WEIR_ASSIGN_OR_RETURN(const StringColumn* completions,
                          batch.Get<StringColumn>(ctx_.String("completion_column")));
    int64_t row_tokens = ctx_.Int("seq_len") + 1;
    for (size_t r = 0; r < prompts->size(); ++r) {
      WEIR_ASSIGN_OR_RETURN(std::string prompt,
                            FormatPrompt(ctx_.String("template"), (*prompts)[r]));
      Example e;
      e.ids = tokenizer_->Encode(prompt, /*specials=*/true);
      e.prompt_length = static_cast<int64_t>(e.ids.size());
      // Special tokens written in a completion (R1's <think> and </think>) are tokens, as the
      // model will write them.
      std::vector<int64_t> completion = tokenizer_->Encode((*completions)[r], /*specials=*/true);
      e.ids.insert(e.ids.end(), completion.begin(), completion.end());
      e.ids.push_back(end_);
      if (static_cast<int64_t>(e.ids.size()) > row_tokens) {
        return ctx_.Error("example " + std::to_string(seen_) + " has " +
                          std::to_string(e.ids.size()) + " tokens, more than a row of seq_len " +
                          std::to_string(row_tokens - 1) + " + 1 holds");
      }
      examples_.push_back(std::move(e));
      ++seen_;
    }
    return Status();
  }

  // The examples arrive whole before any batch leaves, so every epoch can shuffle all of them.
  Status Finish(Emitter& out) override {
    if (examples_.empty()) return ctx_.Error("no examples");
    std::mt19937_64 rng(static_cast<uint64_t>(ctx_.Int("seed")));
    std::vector<size_t> order(examples_.size());
    int64_t rows_per_batch = ctx_.Int("batch_size"), row_tokens = ctx_.Int("seq_len") + 1;
    std::vector<std::vector<int64_t>> rows;
    std::vector<std::vector<int64_t>> prompt_marks;  // per row: 1 where the token is prompt
    for (int64_t epoch = 0; epoch < ctx_.Int("epochs"); ++epoch) {
      std::iota(order.begin(), order.end(), 0);
      if (ctx_.Bool("shuffle")) std::shuffle(order.begin(), order.end(), rng);
      for (size_t k : order) {
        const Example& e = examples_[k];
        if (rows.empty() || static_cast<int64_t>(rows.back().size() + e.ids.size()) > row_tokens) {
          if (static_cast<int64_t>(rows.size()) == rows_per_batch) {
            WEIR_RETURN_IF_ERROR(Emit(rows, prompt_marks, out));
            rows.clear();
            prompt_marks.clear();
          }
          rows.emplace_back();
          prompt_marks.emplace_back();
        }
        rows.back().insert(rows.back().end(), e.ids.begin(), e.ids.end());
        for (size_t i = 0; i < e.ids.size(); ++i)
          prompt_marks.back().push_back(static_cast<int64_t>(i) < e.prompt_length ? 1 : 0);
      }
    }
    if (!rows.empty()) WEIR_RETURN_IF_ERROR(Emit(rows, prompt_marks, out));
    return Status();
  }

 private:
  // tokens = row[:-1], targets = row[1:], with -100 where the target is a prompt token, where
  // it is the first token of the next example (an end token never predicts across examples),
  // and in the padding.
  Status Emit(const std::vector<std::vector<int64_t>>& rows,
              const std::vector<std::vector<int64_t>>& prompt_marks, Emitter& out) {
    int64_t seq = ctx_.Int("seq_len"), n = static_cast<int64_t>(rows.size());
    std::vector<double> tokens(static_cast<size_t>(n * seq), static_cast<double>(end_));
    std::vector<double> targets(static_cast<size_t>(n * seq), -100.0);
    int64_t scored = 0;
    for (int64_t r = 0; r < n; ++r) {
      const auto& row = rows[static_cast<size_t>(r)];
      const auto& marks = prompt_marks[static_cast<size_t>(r)];
      for (int64_t t = 0; t < static_cast<int64_t>(row.size()); ++t) {
        if (t < seq) tokens[static_cast<size_t>(r * seq + t)] = static_cast<double>(row[t]);
        if (t == 0 || t > seq) continue;
        bool after_end = row[static_cast<size_t>(t - 1)] == end_;
        if (marks[static_cast<size_t>(t)] || after_end) continue;
        targets[static_cast<size_t>(r * seq + t - 1)] = static_cast<double>(row[t]);
        ++scored;
      }
    }
    Batch b;
    WEIR_RETURN_IF_ERROR(b.Set("tokens", Tensor::FromValues(DT_I64, {n, seq}, tokens)));
    WEIR_RETURN_IF_ERROR(b.Set("targets", Tensor::FromValues(DT_I64, {n, seq}, targets)));
    b.meta()["scored_tokens"] = std::to_string(scored);
    out.Emit(std::move(b));
    return Status();
  }

  const NodeContext& ctx_;
  std::shared_ptr<Tokenizer> tokenizer_;
  int64_t end_;
  std::vector<Example> examples_;
  int64_t seen_ = 0;
};

}  // namespace

void RegisterChatTokens(Registrar& r) {
  r.StreamOp("rl.ChatTokens")
      .Doc(
          "Supervised fine-tuning batches from rows of prompt and completion: each example is "
          "the chat `template` around the prompt, the completion and the `end` token; targets "
          "are -100 except on the completion and its end token (loss on completions only). "
          "Examples are packed whole into `batch_size` rows of `seq_len` tokens (an example "
          "never spans rows; the rest of a row is padding with target -100); a model with "
          "doc_separator = the end token's id attends within each example only. Holds the "
          "examples and emits `epochs` passes when its input ends, shuffled per epoch from "
          "`seed`. Emits tokens and targets [batch_size, seq_len] (the last batch may be "
          "smaller).")
      .Input("rows", "batch", "rows with the prompt and completion string columns")
      .Output("batches", "batch", "tokens and targets tensors")
      .RequiredAttr<std::string>("tokenizer", "a tokenizer.json (or tiktoken) file")
      .Attr<std::string>("prompt_column", "prompt", "the prompts (string)")
      .Attr<std::string>("completion_column", "completion", "the completions (string)")
      .Attr<std::string>("template", kDefaultTemplate,
                         "the chat template: {prompt} is replaced by the row's prompt")
      .Attr<std::string>("end", kDefaultEnd, "the special token that ends an example")
      .Attr<int64_t>("seq_len", 128, "tokens per row (the model's sequence length)", Min(2))
      .Attr<int64_t>("batch_size", 16, "rows per batch", Min(1))
      .Attr<int64_t>("epochs", 1, "passes over the examples", Min(1))
      .Attr("shuffle", true, "shuffle the examples in each epoch")
      .Attr<int64_t>("seed", 0, "shuffle seed")
      .Stateful()
      .Factory([](const NodeContext& ctx) -> StatusOr<std::unique_ptr<StreamKernel>> {
        auto tokenizer = Tokenizer::Load(ctx.InputPath(ctx.String("tokenizer")));
        if (!tokenizer.ok()) return ctx.Error("tokenizer: " + tokenizer.status().message());
        WEIR_RETURN_IF_ERROR(FormatPrompt(ctx.String("template"), "").status());
        const std::string& end = ctx.String("end");
        std::vector<int64_t> ids = (*tokenizer)->Encode(end, /*specials=*/true);
        if (ids.size() != 1 || (*tokenizer)->Encode(end, /*specials=*/false) == ids)
          return ctx.Error("end '" + end + "' is not a special token of the tokenizer");
        return std::unique_ptr<StreamKernel>(
            std::make_unique<ChatTokensKernel>(ctx, std::move(*tokenizer), ids[0]));
      });
}

}  // namespace weir::rl
