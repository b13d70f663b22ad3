// io.Sample: a seeded Bernoulli sample of rows.
#include <cstdint>

#include "io_ops.h"
#include "weir/random.h"

namespace weir::io {
namespace {

class Sample : public StreamKernel {
 public:
  explicit Sample(const NodeContext& ctx)
      : rate_(ctx.Float("rate")), seed_(static_cast<uint64_t>(ctx.Int("seed"))) {}

  Status Process(int, const Batch& batch, Emitter& out) override {
    std::vector<size_t> keep;
    for (size_t i = 0; i < batch.num_rows(); ++i, ++row_) {
      double u = UnitInterval(SplitMix64(SplitMix64(seed_) ^ row_));
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
