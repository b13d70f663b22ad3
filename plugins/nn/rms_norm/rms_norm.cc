// nn.RMSNorm: y = x / sqrt(mean(x²) + eps) * weight over the last dim.
#include "nn_common.h"

namespace weir::nn {
namespace {

Status RmsNormShape(ShapeContext& ctx) {
  const TensorType& x = ctx.input(0);
  WEIR_RETURN_IF_ERROR(ExpectDtype(ctx, 0, ctx.attrs().Type("T")));
  if (x.shape.empty()) return InvalidArgument("x must have at least 1 dim");
  const TensorType& w = ctx.input(1);
  if (w.shape != Shape{x.shape.back()}) {
    return InvalidArgument("weight " + w.ToString() + " must be [" +
                           std::to_string(x.shape.back()) + "] for x " + x.ToString());
  }
  ctx.set_output(0, x);
  return Status();
}

// Calls f(row, x_row, rstd) for every row of x [rows, d].
template <typename T, typename F>
void ForRows(const T* x, int64_t rows, int64_t d, double eps, F f) {
  using A = AccumulatorOf<T>;
  ParallelFor(rows, 16, [&](int64_t b, int64_t e) {
    for (int64_t r = b; r < e; ++r) {
      const T* xr = x + r * d;
      A ss = 0;
      for (int64_t k = 0; k < d; ++k) ss += Widen(xr[k]) * Widen(xr[k]);
      A rstd = A(1) / std::sqrt(ss / static_cast<A>(d) + static_cast<A>(eps));
      f(r, xr, rstd);
    }
  });
}

Status RmsNormCpu(KernelContext& ctx) {
  Tensor x = ctx.input(0).Contiguous(), w = ctx.input(1).Contiguous();
  int64_t d = x.dim(-1);
  double eps = ctx.attrs().Float("eps");
  return DispatchFloat(x.dtype(), [&](auto tag) {
    using T = decltype(tag);
    const T* wp = w.data<T>();
    T* y = ctx.output(0).data<T>();
    ForRows(x.data<T>(), Rows(x.shape()), d, eps, [&](int64_t r, const T* xr, auto rstd) {
      for (int64_t k = 0; k < d; ++k) y[r * d + k] = Narrow<T>(Widen(xr[k]) * rstd * Widen(wp[k]));
    });
    return Status();
  });
}

// dx = rstd * (g - xhat * mean(g * xhat)), g = dy * w, xhat = x * rstd.
Status RmsNormGradXCpu(KernelContext& ctx) {
  Tensor x = ctx.input(0).Contiguous(), w = ctx.input(1).Contiguous(),
         dy = ctx.input(2).Contiguous();
  int64_t d = x.dim(-1);
  return DispatchFloat(x.dtype(), [&](auto tag) {
    using T = decltype(tag);
    using A = AccumulatorOf<T>;
    const T* wp = w.data<T>();
    const T* g = dy.data<T>();
    T* dx = ctx.output(0).data<T>();
    ForRows(x.data<T>(), Rows(x.shape()), d, ctx.attrs().Float("eps"),
            [&](int64_t r, const T* xr, A rstd) {
              const T* gr = g + r * d;
              A dot = 0;
              for (int64_t k = 0; k < d; ++k)
                dot += Widen(gr[k]) * Widen(wp[k]) * Widen(xr[k]) * rstd;
              A mean = dot / static_cast<A>(d);
              for (int64_t k = 0; k < d; ++k) {
                A xhat = Widen(xr[k]) * rstd;
                dx[r * d + k] = Narrow<T>(rstd * (Widen(gr[k]) * Widen(wp[k]) - xhat * mean));
              }
            });
    return Status();
  });
}

// dw = Σ_rows dy * xhat.
Status RmsNormGradWCpu(KernelContext& ctx) {
  Tensor x = ctx.input(0).Contiguous(), dy = ctx.input(1).Contiguous();
  int64_t d = x.dim(-1), rows = Rows(x.shape());
  return DispatchFloat(x.dtype(), [&](auto tag) {
    using T = decltype(tag);
    using A = AccumulatorOf<T>;
    std::vector<A> acc(static_cast<size_t>(d), A(0));
    const T* g = dy.data<T>();
    // Serial over rows keeps the sum order fixed (reproducible); d-wide work per row.
    const T* xp = x.data<T>();
    double eps = ctx.attrs().Float("eps");
    for (int64_t r = 0; r < rows; ++r) {
      const T* xr = xp + r * d;
      A ss = 0;
      for (int64_t k = 0; k < d; ++k) ss += Widen(xr[k]) * Widen(xr[k]);
      A rstd = A(1) / std::sqrt(ss / static_cast<A>(d) + static_cast<A>(eps));
      for (int64_t k = 0; k < d; ++k)
        acc[static_cast<size_t>(k)] += Widen(g[r * d + k]) * Widen(xr[k]) * rstd;
    }
    T* dw = ctx.output(0).data<T>();
    for (int64_t k = 0; k < d; ++k) dw[k] = Narrow<T>(acc[static_cast<size_t>(k)]);
    return Status();
  });
}

Status RmsNormGrad(GradContext& g) {
  AttrValue eps = Float(g.attrs().Float("eps"));
  if (g.needs_grad(0)) {
    WEIR_ASSIGN_OR_RETURN(
        ValueRef dx, g.Op1("nn.RMSNormGradX", {g.input(0), g.input(1), g.grad(0)}, {{"eps", eps}}));
    g.set_input_grad(0, dx);
  }
  if (g.needs_grad(1)) {
    WEIR_ASSIGN_OR_RETURN(ValueRef dw,
                          g.Op1("nn.RMSNormGradW", {g.input(0), g.grad(0)}, {{"eps", eps}}));
    g.set_input_grad(1, dw);
  }
  return Status();
}

}  // namespace

void RegisterRmsNorm(Registrar& r) {
  r.TensorOp("nn.RMSNorm")
      .Doc(
          "Root-mean-square normalization over the last dim, scaled by a learned weight "
          "(initialized to ones): y = x / sqrt(mean(x²) + eps) * weight.")
      .Input("x", "T", "[..., d]")
      .Output("y", "T", "[..., d]")
      .Attr<double>("eps", 1e-6, "added to the mean square before the square root", Min(0.0))
      .AttrOfType("T", ATTR_TYPE, "f32", "compute dtype")
      .Param(
          "weight",
          [](const ShapeContext& c) -> StatusOr<weir::Shape> {
            if (c.input(0).shape.empty()) return InvalidArgument("x has no dims");
            return weir::Shape{c.input(0).shape.back()};
          },
          Init::Ones())
      .Cheap()
      .Shape(RmsNormShape)
      .Kernel("cpu", RmsNormCpu, KernelFloatTypes())
      .Gradient(RmsNormGrad);
  r.TensorOp("nn.RMSNormGradX")
      .Doc("Input gradient of nn.RMSNorm (B work).")
      .Input("x", "T")
      .Input("weight", "T")
      .Input("dy", "T")
      .Output("dx", "T")
      .Attr<double>("eps", 1e-6, "as in the forward op", Min(0.0))
      .Shape(SameAsInput())
      .Kernel("cpu", RmsNormGradXCpu, KernelFloatTypes());
  r.TensorOp("nn.RMSNormGradW")
      .Doc("Weight gradient of nn.RMSNorm (W work): Σ dy · x / rms(x) over rows.")
      .Input("x", "T")
      .Input("dy", "T")
      .Output("dweight", "T")
      .Attr<double>("eps", 1e-6, "as in the forward op", Min(0.0))
      .Shape([](ShapeContext& c) {
        c.set_output(0, {c.input(0).dtype, {c.input(0).shape.back()}});
        return Status();
      })
      .Kernel("cpu", RmsNormGradWCpu, KernelFloatTypes());
}

}  // namespace weir::nn
