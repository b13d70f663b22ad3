// nn.Sum: the sum of all elements, a scalar (losses and gradient checks reduce with it).
#include "nn_common.h"

namespace weir::nn {
namespace {

Status SumCpu(KernelContext& ctx) {
  Tensor x = ctx.input(0).Contiguous();
  return DispatchFloat(x.dtype(), [&](auto tag) {
    using T = decltype(tag);
    double acc = 0;  // in double: one scalar, order fixed
    const T* p = x.data<T>();
    for (int64_t i = 0; i < x.numel(); ++i) acc += static_cast<double>(Widen(p[i]));
    ctx.output(0).data<T>()[0] = T(static_cast<AccumulatorOf<T>>(acc));
    return Status();
  });
}

Status SumGradCpu(KernelContext& ctx) {
  Tensor& out = ctx.output(0);
  double g = ctx.input(0).At(0);
  return DispatchFloat(out.dtype(), [&](auto tag) {
    using T = decltype(tag);
    T v = T(static_cast<AccumulatorOf<T>>(g));
    std::fill(out.data<T>(), out.data<T>() + out.numel(), v);
    return Status();
  });
}

}  // namespace

void RegisterSum(Registrar& r) {
  r.TensorOp("nn.Sum")
      .Doc("Sum of all elements (a scalar).")
      .Input("x", "T")
      .Output("y", "T", "scalar")
      .Shape([](ShapeContext& c) {
        c.set_output(0, {c.input(0).dtype, {}});
        return Status();
      })
      .Kernel("cpu", SumCpu, KernelFloatTypes())
      .Gradient([](GradContext& g) {
        WEIR_ASSIGN_OR_RETURN(
            ValueRef d, g.Op1("nn.SumGrad", {g.grad(0)}, {{"shape", Ints(g.input_type(0).shape)}}));
        g.set_input_grad(0, d);
        return Status();
      });
  r.TensorOp("nn.SumGrad")
      .Doc("Gradient of nn.Sum: the scalar dy broadcast to `shape`.")
      .Input("dy", "T", "scalar")
      .Output("dx", "T")
      .AttrOfType("shape", ATTR_INT_LIST, std::nullopt, "the summed input's shape")
      .Shape([](ShapeContext& c) {
        c.set_output(0, {c.input(0).dtype, c.attrs().IntList("shape")});
        return Status();
      })
      .Kernel("cpu", SumGradCpu, KernelFloatTypes());
}

}  // namespace weir::nn
