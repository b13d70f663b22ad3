// train.RandomTokens: uniformly random token batches, for benchmarks and smoke tests.
#include <random>

#include "weir/registrar.h"

namespace weir::train {
namespace {

class RandomTokens : public StreamKernel {
 public:
  explicit RandomTokens(const NodeContext& ctx)
      : vocab_(ctx.Int("vocab")),
        seq_len_(ctx.Int("seq_len")),
        batch_(ctx.Int("batch_size")),
        limit_(ctx.Int("batches")),
        seed_(static_cast<uint64_t>(ctx.Int("seed"))) {}

  StatusOr<bool> Produce(Emitter& out) override {
    if (limit_ > 0 && next_ >= limit_) return false;
    std::mt19937_64 rng(seed_ * 0x9e3779b97f4a7c15ULL + static_cast<uint64_t>(next_++));
    Tensor tokens = Tensor::Empty(DT_I64, {batch_, seq_len_});
    Tensor targets = Tensor::Empty(DT_I64, {batch_, seq_len_});
    for (int64_t i = 0; i < tokens.numel(); ++i) {
      tokens.data<int64_t>()[i] = static_cast<int64_t>(rng() % static_cast<uint64_t>(vocab_));
      targets.data<int64_t>()[i] = static_cast<int64_t>(rng() % static_cast<uint64_t>(vocab_));
    }
    Batch b;
    WEIR_RETURN_IF_ERROR(b.Set("tokens", tokens));
    WEIR_RETURN_IF_ERROR(b.Set("targets", targets));
    out.Emit(std::move(b));
    return true;
  }

 private:
  int64_t vocab_, seq_len_, batch_, limit_;
  uint64_t seed_;
  int64_t next_ = 0;
};

}  // namespace

void RegisterRandomTokens(Registrar& r) {
  r.StreamOp("train.RandomTokens")
      .Doc(
          "Batches of uniformly random 'tokens' and 'targets', i64 [batch_size, seq_len]; each "
          "batch depends only on (seed, batch number). For benchmarks and smoke tests.")
      .Output("out", "batch", "tokens and targets")
      .Attr<int64_t>("vocab", 256, "ids are drawn from [0, vocab)", Min(1))
      .Attr<int64_t>("seq_len", 128, "tokens per row", Min(1))
      .Attr<int64_t>("batch_size", 8, "rows per batch", Min(1))
      .Attr<int64_t>("batches", 0, "stop after this many (0: never; the trainer stops it)", Min(0))
      .Attr<int64_t>("seed", 0, "random seed")
      .Stateful()
      .Factory([](const NodeContext& ctx) -> StatusOr<std::unique_ptr<StreamKernel>> {
        return std::unique_ptr<StreamKernel>(new RandomTokens(ctx));
      });
}

}  // namespace weir::train
