// Optimizer update ops. Each is a tensor op whose inputs are (param, grad, state...) and whose
// outputs are (param, state...): a trainer calls its kernel with the outputs aliasing the inputs,
// so updates happen in place, and learns from the schema which state tensors to keep (they start
// at zero, in f32, and are saved in checkpoints under "<param>.<state>"). Masters are f32; the
// gradient may be bf16.
#include <tbb/parallel_for.h>

#include "weir/dispatch.h"
#include "weir/plugin.h"
#include "weir/tensor_op.h"
#ifdef WEIR_HAVE_CUDA
#include "cuda/register.h"
#endif

namespace weir::optim {
namespace {

Status CheckShapes(ShapeContext& ctx) {
  const TensorType& p = ctx.input(0);
  if (p.dtype != DT_F32 && p.dtype != DT_F64)
    return InvalidArgument("parameters are updated in f32 (or f64), got " + p.ToString());
  for (int i = 1; i < ctx.num_inputs(); ++i) {
    if (ctx.input(i).shape != p.shape)
      return InvalidArgument("input " + std::to_string(i) + " " + ctx.input(i).ToString() +
                             " does not match the parameter " + p.ToString());
  }
  for (int o = 0; o < static_cast<int>(ctx.outputs().size()); ++o) ctx.set_output(o, p);
  return Status();
}

// Runs f(i, grad_i) over the elements in parallel, reading the gradient in any float dtype as P
// (the parameter's type: updates compute in f32 for f32 masters, as PyTorch's do).
template <typename P, typename F>
Status ForEach(const Tensor& grad, F f) {
  Tensor g = grad.Contiguous();
  return DispatchFloat(g.dtype(), [&](auto tag) {
    using T = decltype(tag);
    const T* gp = g.data<T>();
    tbb::parallel_for(tbb::blocked_range<int64_t>(0, g.numel(), 1 << 14),
                      [&](const tbb::blocked_range<int64_t>& r) {
                        for (int64_t i = r.begin(); i < r.end(); ++i)
                          f(i, static_cast<P>(Widen(gp[i])));
                      });
    return Status();
  });
}

template <typename P>
Status AdamWUpdate(KernelContext& ctx) {
  const Attrs& a = ctx.attrs();
  double step = static_cast<double>(a.Int("step"));
  auto get = [&](const char* name) { return static_cast<P>(a.Float(name)); };
  P lr = get("lr"), b1 = get("beta1"), b2 = get("beta2"), eps = get("eps");
  P wd = get("weight_decay"), scale = get("grad_scale");
  P c1 = static_cast<P>(1 - std::pow(a.Float("beta1"), step));
  P c2 = static_cast<P>(1 - std::pow(a.Float("beta2"), step));
  P* p = ctx.output(0).data<P>();
  P* m = ctx.output(1).data<P>();
  P* v = ctx.output(2).data<P>();
  const P* p_in = ctx.input(0).data<P>();
  const P* m_in = ctx.input(2).data<P>();
  const P* v_in = ctx.input(3).data<P>();
  return ForEach<P>(ctx.input(1), [&](int64_t i, P g) {
    g *= scale;
    P mi = b1 * m_in[i] + (1 - b1) * g;
    P vi = b2 * v_in[i] + (1 - b2) * g * g;
    P pi = p_in[i] * (1 - lr * wd);  // decoupled weight decay
    pi -= lr * (mi / c1) / (std::sqrt(vi / c2) + eps);
    m[i] = mi;
    v[i] = vi;
    p[i] = pi;
  });
}

template <typename P>
Status SgdUpdate(KernelContext& ctx) {
  const Attrs& a = ctx.attrs();
  auto get = [&](const char* name) { return static_cast<P>(a.Float(name)); };
  P lr = get("lr"), mu = get("momentum"), wd = get("weight_decay"), scale = get("grad_scale");
  bool nesterov = a.Bool("nesterov");
  P* p = ctx.output(0).data<P>();
  P* buf = ctx.output(1).data<P>();
  const P* p_in = ctx.input(0).data<P>();
  const P* b_in = ctx.input(2).data<P>();
  return ForEach<P>(ctx.input(1), [&](int64_t i, P g) {
    g = g * scale + wd * p_in[i];
    P b = mu * b_in[i] + g;
    P step = nesterov ? g + mu * b : b;
    buf[i] = b;
    p[i] = p_in[i] - lr * step;
  });
}

Status AdamWCpu(KernelContext& ctx) {
  return ctx.input(0).dtype() == DT_F64 ? AdamWUpdate<double>(ctx) : AdamWUpdate<float>(ctx);
}

Status SgdCpu(KernelContext& ctx) {
  return ctx.input(0).dtype() == DT_F64 ? SgdUpdate<double>(ctx) : SgdUpdate<float>(ctx);
}

void RegisterOptim(Registrar& r) {
  r.TensorOp("optim.AdamW")
      .Doc(
          "Adam with decoupled weight decay (Loshchilov & Hutter): m = β1 m + (1-β1) g, "
          "v = β2 v + (1-β2) g², p = p (1 - lr wd) - lr m̂ / (sqrt(v̂) + eps), with bias "
          "corrections m̂ = m / (1-β1^step), v̂ = v / (1-β2^step). g is grad * grad_scale.")
      .Input("param", "f32", "the f32 master weights")
      .Input("grad", "T", "the gradient (f32 or bf16)")
      .Input("m", "f32", "first moment")
      .Input("v", "f32", "second moment")
      .Output("param", "f32")
      .Output("m", "f32")
      .Output("v", "f32")
      .Attr<double>("lr", 1e-3, "learning rate", Min(0.0))
      .Attr<double>("beta1", 0.9, "first-moment decay", Min(0.0), Max(1.0))
      .Attr<double>("beta2", 0.95, "second-moment decay", Min(0.0), Max(1.0))
      .Attr<double>("eps", 1e-8, "added to the root of the second moment", Min(0.0))
      .Attr<double>("weight_decay", 0.1, "decoupled weight decay", Min(0.0))
      .Attr<double>("grad_scale", 1.0, "multiplies the gradient (clipping, accumulation)")
      .Attr<int64_t>("step", 1, "1-based step, for the bias corrections", Min(1))
      .Shape(CheckShapes)
      .Kernel("cpu", AdamWCpu, {DT_F32, DT_F64});
  r.TensorOp("optim.SGD")
      .Doc(
          "Stochastic gradient descent with momentum: b = μ b + g (+ wd p), p -= lr b (Nesterov: "
          "p -= lr (g + μ b)).")
      .Input("param", "f32", "the f32 master weights")
      .Input("grad", "T", "the gradient")
      .Input("momentum_buffer", "f32", "velocity")
      .Output("param", "f32")
      .Output("momentum_buffer", "f32")
      .Attr<double>("lr", 1e-2, "learning rate", Min(0.0))
      .Attr<double>("momentum", 0.9, "momentum μ", Min(0.0), Max(1.0))
      .Attr<double>("weight_decay", 0.0, "L2 penalty added to the gradient", Min(0.0))
      .Attr("nesterov", false, "Nesterov momentum")
      .Attr<double>("grad_scale", 1.0, "multiplies the gradient (clipping, accumulation)")
      .Attr<int64_t>("step", 1, "1-based step (unused; every optimizer takes it)", Min(1))
      .Shape(CheckShapes)
      .Kernel("cpu", SgdCpu, {DT_F32, DT_F64});
#ifdef WEIR_HAVE_CUDA
  RegisterOptimCuda(r);
#endif
}

}  // namespace
}  // namespace weir::optim

WEIR_PLUGIN("optim", "0.1.0", weir::optim::RegisterOptim)
