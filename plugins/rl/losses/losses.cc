// The rl plugin's tensor ops, and rl.ZerosLike, the gradient of the inputs they detach.
#include "losses/losses.h"

#include <cstring>

namespace weir::rl {
namespace {

Status ZerosLikeCpu(KernelContext& ctx) {
  Tensor& out = ctx.output(0);
  if (out.nbytes() > 0) std::memset(out.raw_data(), 0, out.nbytes());
  return Status();
}

}  // namespace

StatusOr<ValueRef> DetachedGradient(GradContext& g, int input) {
  return g.Op1("rl.ZerosLike", {g.input(input)});
}

void RegisterLosses(Registrar& r) {
  r.TensorOp("rl.ZerosLike")
      .Doc(
          "Zeros of x's type. The gradient the rl ops give the inputs they treat as constants "
          "(old and reference log-probabilities, advantages, masks), as TRL detaches them.")
      .Input("x", "T", "any tensor")
      .Output("zeros", "T", "x's type, every element 0")
      .Shape([](ShapeContext& c) {
        c.set_output(0, c.input(0));
        return Status();
      })
      .Kernel("cpu", ZerosLikeCpu);
  RegisterTokenLogProbs(r);
  RegisterGrpoLoss(r);
}

}  // namespace weir::rl
