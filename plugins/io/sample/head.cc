// io.Head: the first n rows of a stream.
#include "io_ops.h"

namespace weir::io {
namespace {

class Head : public StreamKernel {
 public:
  explicit Head(const NodeContext& ctx) : n_(static_cast<size_t>(ctx.Int("n"))) {}

  Status Process(int, const Batch& batch, Emitter& out) override {
    if (seen_ >= n_) return Status();
    size_t take = std::min(batch.num_rows(), n_ - seen_);
    seen_ += take;
    out.Emit(take == batch.num_rows() ? batch : batch.Slice(0, take));
    return Status();
  }

 private:
  size_t n_;
  size_t seen_ = 0;
};

}  // namespace

void RegisterHead(Registrar& r) {
  r.StreamOp("io.Head")
      .Doc("Passes the first n rows of its input through and drops the rest.")
      .Input("in", "batch", "rows")
      .Output("out", "batch", "the first n rows")
      .Attr<int64_t>("n", 10, "rows to keep", Min(0))
      .Stateful()
      .Factory([](const NodeContext& ctx) -> StatusOr<std::unique_ptr<StreamKernel>> {
        return std::unique_ptr<StreamKernel>(new Head(ctx));
      });
}

}  // namespace weir::io
