// train.ByteWindows: byte-level training data from text files, until tokenizer shards exist.
// Token ids are bytes (vocabulary 256). The last `eval_fraction` of the bytes is held out:
// split=train draws windows at random offsets before it, split=eval walks it in order.
#include <fstream>
#include <random>
#include <sstream>

#include "weir/file_list.h"
#include "weir/registrar.h"

namespace weir::train {
namespace {

class ByteWindows : public StreamKernel {
 public:
  ByteWindows(const NodeContext& ctx, std::string bytes)
      : bytes_(std::move(bytes)),
        seq_len_(ctx.Int("seq_len")),
        batch_(ctx.Int("batch_size")),
        seed_(static_cast<uint64_t>(ctx.Int("seed"))),
        eval_(ctx.String("split") == "eval"),
        limit_(ctx.Int("batches")) {
    size_t held_out =
        static_cast<size_t>(static_cast<double>(bytes_.size()) * ctx.Float("eval_fraction"));
    split_ = bytes_.size() - held_out;
  }

  Status Init(const NodeContext& ctx) {
    size_t region = eval_ ? bytes_.size() - split_ : split_;
    if (region < static_cast<size_t>(seq_len_) + 1) {
      return ctx.Error("the " + std::string(eval_ ? "eval" : "train") + " split holds " +
                       std::to_string(region) +
                       " bytes, fewer than seq_len + 1 = " + std::to_string(seq_len_ + 1));
    }
    // Resuming: skip the batches the trainer already consumed (eval always starts over).
    if (!eval_) {
      WEIR_ASSIGN_OR_RETURN(next_, ctx.ResumedDataPosition());
    }
    return Status();
  }

  StatusOr<bool> Produce(Emitter& out) override {
    if (limit_ > 0 && next_ >= limit_) return false;
    Tensor tokens = Tensor::Empty(DT_I64, {batch_, seq_len_});
    Tensor targets = Tensor::Empty(DT_I64, {batch_, seq_len_});
    int64_t* tp = tokens.data<int64_t>();
    int64_t* gp = targets.data<int64_t>();
    // Each batch is a function of (seed, batch index) alone, so a resumed run sees the same data.
    std::mt19937_64 rng(seed_ * 0x9e3779b97f4a7c15ULL + static_cast<uint64_t>(next_));
    size_t region = eval_ ? bytes_.size() - split_ : split_;
    size_t span = region - static_cast<size_t>(seq_len_);  // window starts: [0, span)
    for (int64_t b = 0; b < batch_; ++b) {
      size_t start =
          eval_ ? (static_cast<size_t>(next_ * batch_ + b) * static_cast<size_t>(seq_len_)) % span
                : static_cast<size_t>(rng() % span);
      const unsigned char* p =
          reinterpret_cast<const unsigned char*>(bytes_.data()) + (eval_ ? split_ : 0) + start;
      for (int64_t t = 0; t < seq_len_; ++t) {
        tp[b * seq_len_ + t] = p[t];
        gp[b * seq_len_ + t] = p[t + 1];
      }
    }
    Batch batch;
    WEIR_RETURN_IF_ERROR(batch.Set("tokens", tokens));
    WEIR_RETURN_IF_ERROR(batch.Set("targets", targets));
    batch.meta()["batch_index"] = std::to_string(next_);
    ++next_;
    out.Emit(std::move(batch));
    return true;
  }

 private:
  std::string bytes_;
  int64_t seq_len_, batch_;
  uint64_t seed_;
  bool eval_;
  int64_t limit_;
  size_t split_;
  int64_t next_ = 0;
};

}  // namespace

void RegisterByteWindows(Registrar& r) {
  r.StreamOp("train.ByteWindows")
      .Doc(
          "Byte-level language-model batches from text files: 'tokens' and 'targets' (tokens "
          "shifted by one), i64 [batch_size, seq_len], vocabulary 256. The last eval_fraction "
          "of the bytes is held out for split=eval. Train windows start at random offsets that "
          "depend only on (seed, batch number), so a resumed run (weir run --resume) continues "
          "with exactly the batches an uninterrupted run would have seen.")
      .Output("out", "batch", "tokens and targets")
      .RequiredAttr<std::string>("path", "a text file or a folder of them; relative to the graph")
      .Attr<int64_t>("seq_len", 128, "tokens per row", Min(1))
      .Attr<int64_t>("batch_size", 8, "rows per batch", Min(1))
      .Attr<std::string>("split", "train", "which part of the bytes", OneOf{"train", "eval"})
      .Attr<double>("eval_fraction", 0.1, "share of the bytes held out for eval", Min(0.0),
                    Max(0.9))
      .Attr<int64_t>("batches", 0, "stop after this many batches (0: never; the trainer stops it)",
                     Min(0))
      .Attr<int64_t>("seed", 0, "seed of the window offsets")
      .Stateful()
      .Factory([](const NodeContext& ctx) -> StatusOr<std::unique_ptr<StreamKernel>> {
        WEIR_ASSIGN_OR_RETURN(auto files, ListInputFiles(ctx.InputPath(ctx.String("path"))));
        std::string bytes;
        for (const auto& f : files) {
          std::ifstream in(f, std::ios::binary);
          std::stringstream s;
          s << in.rdbuf();
          bytes += s.str();
        }
        auto kernel = std::make_unique<ByteWindows>(ctx, std::move(bytes));
        WEIR_RETURN_IF_ERROR(kernel->Init(ctx));
        return std::unique_ptr<StreamKernel>(std::move(kernel));
      });
}

}  // namespace weir::train
