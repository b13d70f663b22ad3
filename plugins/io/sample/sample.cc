// io.Sample: a seeded Bernoulli sample of rows.
#include <cstdint>

#include "io_ops.h"

namespace weir::io {
namespace {

// SplitMix64: a well-mixed 64-bit hash of (seed, row), so the sample depends only on the row's
// position in the stream and the seed, not on batch boundaries or threads.
uint64_t Mix(uint64_t x) {
  x += 0x9e3779b97f4a7c15ULL;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

class Sample : public StreamKernel {
 public:
  explicit Sample(const NodeContext& ctx)
      : rate_(ctx.Float("rate")), seed_(static_cast<uint64_t>(ctx.Int("seed"))) {}

  Status Process(int, const Batch& batch, Emitter& out) override {
    std::vector<size_t> keep;
    for (size_t i = 0; i < batch.num_rows(); ++i, ++row_) {
      double u = static_cast<double>(Mix(Mix(seed_) ^ row_) >> 11) * 0x1.0p-53;
      if (u < rate_) keep.push_back(i);
    }
    if (!keep.empty()) out.Emit(batch.Select(keep));
    return Status();
  }

 private:
  double rate_;
  uint64_t seed_;
  uint64_t row_ = 0;
};

}  // namespace

void RegisterSample(Registrar& r) {
  r.StreamOp("io.Sample")
      .Doc(
          "Keeps each row with probability `rate`. The choice for a row depends only on the seed "
          "and the row's position in the stream, so a run is reproducible.")
      .Input("in", "batch", "rows")
      .Output("out", "batch", "the sampled rows")
      .Attr<double>("rate", 0.1, "probability of keeping a row", Min(0.0), Max(1.0))
      .Attr<int64_t>("seed", 0, "random seed")
      .Stateful()
      .Factory([](const NodeContext& ctx) -> StatusOr<std::unique_ptr<StreamKernel>> {
        return std::unique_ptr<StreamKernel>(new Sample(ctx));
      });
}

}  // namespace weir::io
