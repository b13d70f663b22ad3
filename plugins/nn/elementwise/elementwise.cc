// Elementwise ops: nn.Add, nn.Mul, nn.Scale, nn.SiLU, nn.SwiGLU, nn.Cast and their gradients.
#include "nn_common.h"

namespace weir::nn {
namespace {

constexpr int64_t kGrain = 1 << 14;

// out[i] = f(in0[i], in1[i], ...) over contiguous inputs of one float dtype, computed in the
// accumulator type.
template <int N, typename F>
Status Map(KernelContext& ctx, F f, int output = 0) {
  std::vector<Tensor> in;
  for (int i = 0; i < N; ++i) in.push_back(ctx.input(i).Contiguous());
  Tensor& out = ctx.output(output);
  return DispatchFloat(out.dtype(), [&](auto tag) {
    using T = decltype(tag);
    T* o = out.data<T>();
    std::array<const T*, N> p;
    for (int i = 0; i < N; ++i) p[i] = in[i].data<T>();
    ParallelFor(out.numel(), kGrain, [&](int64_t b, int64_t e) {
      for (int64_t k = b; k < e; ++k) {
        if constexpr (N == 1) o[k] = Narrow<T>(f(Widen(p[0][k])));
        if constexpr (N == 2) o[k] = Narrow<T>(f(Widen(p[0][k]), Widen(p[1][k])));
        if constexpr (N == 3) o[k] = Narrow<T>(f(Widen(p[0][k]), Widen(p[1][k]), Widen(p[2][k])));
      }
    });
    return Status();
  });
}

template <typename A>
A Sigmoid(A x) {
  return A(1) / (A(1) + Exp(-x));
}

Status SameShapes(ShapeContext& ctx) {
  for (int i = 1; i < ctx.num_inputs(); ++i) WEIR_RETURN_IF_ERROR(ExpectSameType(ctx, 0, i));
  ctx.set_output(0, ctx.input(0));
  return Status();
}

Status AddGrad(GradContext& g) {
  for (int i = 0; i < 2; ++i)
    if (g.needs_grad(i)) g.set_input_grad(i, g.grad(0));
  return Status();
}

Status MulGrad(GradContext& g) {
  for (int i = 0; i < 2; ++i) {
    if (!g.needs_grad(i)) continue;
    WEIR_ASSIGN_OR_RETURN(ValueRef d, g.Op1("nn.Mul", {g.grad(0), g.input(1 - i)}));
    g.set_input_grad(i, d);
  }
  return Status();
}

Status ScaleGrad(GradContext& g) {
  WEIR_ASSIGN_OR_RETURN(
      ValueRef d, g.Op1("nn.Scale", {g.grad(0)}, {{"factor", Float(g.attrs().Float("factor"))}}));
  g.set_input_grad(0, d);
  return Status();
}

Status SiluGrad(GradContext& g) {
  WEIR_ASSIGN_OR_RETURN(ValueRef d, g.Op1("nn.SiLUGrad", {g.input(0), g.grad(0)}));
  g.set_input_grad(0, d);
  return Status();
}

Status SwigluGrad(GradContext& g) {
  WEIR_ASSIGN_OR_RETURN(auto d, g.Op("nn.SwiGLUGrad", {g.input(0), g.input(1), g.grad(0)}));
  if (g.needs_grad(0)) g.set_input_grad(0, d[0]);
  if (g.needs_grad(1)) g.set_input_grad(1, d[1]);
  return Status();
}

Status CastShape(ShapeContext& ctx) {
  ctx.set_output(0, {ctx.attrs().Type("dtype"), ctx.input(0).shape});
  return Status();
}

Status CastCpu(KernelContext& ctx) {
  ctx.output(0).CopyFrom(ctx.input(0));
  return Status();
}

Status CastGrad(GradContext& g) {
  AttrValue back;
  back.set_type(g.input_type(0).dtype);
  WEIR_ASSIGN_OR_RETURN(ValueRef d, g.Op1("nn.Cast", {g.grad(0)}, {{"dtype", back}}));
  g.set_input_grad(0, d);
  return Status();
}

}  // namespace

void RegisterElementwise(Registrar& r) {
  r.TensorOp("nn.Add")
      .Doc("a + b, elementwise; both inputs have the same type.")
      .Input("a", "T")
      .Input("b", "T")
      .Output("y", "T")
      .Cheap()
      .Shape(SameShapes)
      .Kernel(
          "cpu", [](KernelContext& c) { return Map<2>(c, [](auto a, auto b) { return a + b; }); },
          KernelFloatTypes())
      .Gradient(AddGrad);
  r.TensorOp("nn.Mul")
      .Doc("a * b, elementwise; both inputs have the same type.")
      .Input("a", "T")
      .Input("b", "T")
      .Output("y", "T")
      .Cheap()
      .Shape(SameShapes)
      .Kernel(
          "cpu", [](KernelContext& c) { return Map<2>(c, [](auto a, auto b) { return a * b; }); },
          KernelFloatTypes())
      .Gradient(MulGrad);
  r.TensorOp("nn.Scale")
      .Doc("x * factor.")
      .Input("x", "T")
      .Output("y", "T")
      .Attr<double>("factor", 1.0, "the constant multiplier")
      .Cheap()
      .Shape(SameAsInput())
      .Kernel(
          "cpu",
          [](KernelContext& c) {
            double f = c.attrs().Float("factor");
            return Map<1>(c, [f](auto x) { return x * static_cast<decltype(x)>(f); });
          },
          KernelFloatTypes())
      .Gradient(ScaleGrad);
  r.TensorOp("nn.SiLU")
      .Doc("x * sigmoid(x).")
      .Input("x", "T")
      .Output("y", "T")
      .Cheap()
      .Shape(SameAsInput())
      .Kernel(
          "cpu", [](KernelContext& c) { return Map<1>(c, [](auto x) { return x * Sigmoid(x); }); },
          KernelFloatTypes())
      .Gradient(SiluGrad);
  r.TensorOp("nn.SiLUGrad")
      .Doc("Gradient of nn.SiLU: dy * (s + x s (1 - s)) with s = sigmoid(x).")
      .Input("x", "T")
      .Input("dy", "T")
      .Output("dx", "T")
      .Shape(SameShapes)
      .Kernel(
          "cpu",
          [](KernelContext& c) {
            return Map<2>(c, [](auto x, auto dy) {
              auto s = Sigmoid(x);
              return dy * (s + x * s * (decltype(x)(1) - s));
            });
          },
          KernelFloatTypes());
  r.TensorOp("nn.SwiGLU")
      .Doc("The SwiGLU gate of DeepSeek and LLaMA MLPs: silu(gate) * up.")
      .Input("gate", "T", "pre-activation of the gate branch (w1 x)")
      .Input("up", "T", "the linear branch (w3 x)")
      .Output("y", "T")
      .Cheap()
      .Shape(SameShapes)
      .Kernel(
          "cpu",
          [](KernelContext& c) {
            return Map<2>(c, [](auto g, auto u) { return g * Sigmoid(g) * u; });
          },
          KernelFloatTypes())
      .Gradient(SwigluGrad);
  r.TensorOp("nn.SwiGLUGrad")
      .Doc("Gradient of nn.SwiGLU: dgate = dy * up * silu'(gate), dup = dy * silu(gate).")
      .Input("gate", "T")
      .Input("up", "T")
      .Input("dy", "T")
      .Output("dgate", "T")
      .Output("dup", "T")
      .Shape([](ShapeContext& c) {
        WEIR_RETURN_IF_ERROR(ExpectSameType(c, 0, 1));
        WEIR_RETURN_IF_ERROR(ExpectSameType(c, 0, 2));
        c.set_output(0, c.input(0));
        c.set_output(1, c.input(0));
        return Status();
      })
      .Kernel(
          "cpu",
          [](KernelContext& c) {
            WEIR_RETURN_IF_ERROR(Map<3>(c, [](auto g, auto u, auto dy) {
              auto s = Sigmoid(g);
              return dy * u * (s + g * s * (decltype(g)(1) - s));
            }));
            return Map<3>(
                c, [](auto g, auto, auto dy) { return dy * g * Sigmoid(g); }, 1);
          },
          KernelFloatTypes());
  r.TensorOp("nn.Cast")
      .Doc("Converts to another dtype (rounding to nearest even for narrower floats).")
      .Input("x", "T")
      .Output("y", "U")
      .AttrOfType("dtype", ATTR_TYPE, std::nullopt, "the output dtype")
      .Cheap()
      .Shape(CastShape)
      .Kernel("cpu", CastCpu)
      .Gradient(CastGrad);
}

}  // namespace weir::nn
