// nn.Dropout: zeroes each element with probability `rate` and scales the rest by 1/(1-rate).
// The mask is a function of (seed, call number, element index): reproducible for a fixed program
// order, and returned as a second output so the gradient reuses it.
#include <atomic>

#include "nn_common.h"
#include "weir/random.h"

namespace weir::nn {
namespace {

std::atomic<uint64_t> g_calls{0};

Status DropoutCpu(KernelContext& ctx) {
  Tensor x = ctx.input(0).Contiguous();
  double rate = ctx.attrs().Float("rate");
  uint64_t stream =
      SplitMix64(static_cast<uint64_t>(ctx.attrs().Int("seed")) ^ SplitMix64(g_calls++));
  uint8_t* mask = ctx.output(1).data<uint8_t>();
  for (int64_t i = 0; i < x.numel(); ++i) {
    double u = UnitInterval(SplitMix64(stream ^ static_cast<uint64_t>(i)));
    mask[i] = u >= rate ? 1 : 0;
  }
  double keep = rate < 1 ? 1.0 / (1.0 - rate) : 0.0;
  return DispatchFloat(x.dtype(), [&](auto tag) {
    using T = decltype(tag);
    using A = AccumulatorOf<T>;
    const T* in = x.data<T>();
    T* out = ctx.output(0).data<T>();
    for (int64_t i = 0; i < x.numel(); ++i)
      out[i] = Narrow<T>(mask[i] ? Widen(in[i]) * static_cast<A>(keep) : A(0));
    return Status();
  });
}

Status DropoutGradCpu(KernelContext& ctx) {
  Tensor dy = ctx.input(0).Contiguous(), mask = ctx.input(1).Contiguous();
  double keep = ctx.attrs().Float("rate") < 1 ? 1.0 / (1.0 - ctx.attrs().Float("rate")) : 0.0;
  return DispatchFloat(dy.dtype(), [&](auto tag) {
    using T = decltype(tag);
    using A = AccumulatorOf<T>;
    const T* g = dy.data<T>();
    const uint8_t* m = mask.data<uint8_t>();
    T* out = ctx.output(0).data<T>();
    for (int64_t i = 0; i < dy.numel(); ++i)
      out[i] = Narrow<T>(m[i] ? Widen(g[i]) * static_cast<A>(keep) : A(0));
    return Status();
  });
}

}  // namespace

void RegisterDropout(Registrar& r) {
  r.TensorOp("nn.Dropout")
      .Doc(
          "Zeroes each element with probability `rate`, scaling survivors by 1/(1-rate); also "
          "returns the keep mask (u8). rate 0 passes x through.")
      .Input("x", "T")
      .Output("y", "T")
      .Output("mask", "u8", "1 where kept")
      .Attr<double>("rate", 0.0, "probability of dropping an element", Min(0.0), Max(1.0))
      .Attr<int64_t>("seed", 0, "random seed")
      .Shape([](ShapeContext& c) {
        c.set_output(0, c.input(0));
        c.set_output(1, {DT_U8, c.input(0).shape});
        return Status();
      })
      .Kernel("cpu", DropoutCpu, KernelFloatTypes())
      .Gradient([](GradContext& g) {
        WEIR_ASSIGN_OR_RETURN(ValueRef d, g.Op1("nn.DropoutGrad", {g.grad(0), g.output(1)},
                                                {{"rate", Float(g.attrs().Float("rate"))}}));
        g.set_input_grad(0, d);
        return Status();
      });
  r.TensorOp("nn.DropoutGrad")
      .Doc("Gradient of nn.Dropout: dy where kept, scaled like the forward pass.")
      .Input("dy", "T")
      .Input("mask", "u8")
      .Output("dx", "T")
      .Attr<double>("rate", 0.0, "as in the forward op", Min(0.0), Max(1.0))
      .Shape(SameAsInput())
      .Kernel("cpu", DropoutGradCpu, KernelFloatTypes());
}

}  // namespace weir::nn
