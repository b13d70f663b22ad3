// optim.AdamW and optim.SGD on CUDA: one fused pass over the parameter, its gradient and its
// state, with the outputs allowed to alias the inputs (the trainer updates in place).
//
// The update is optim.cc's, operation for operation, with every multiply, add, divide and square
// root rounded on its own (the _rn intrinsics: nvcc would otherwise fuse multiply-adds, which
// the CPU build, strict C++20 without contraction, does not), so the f32 and f64 results are
// bitwise the CPU's.
#include <string>

#include "cuda/register.h"
#include "weir/cuda_kernel.h"

namespace weir::optim {
namespace {

using weir::cuda::Blocks;
using weir::cuda::CheckLaunch;
using weir::cuda::Data;
using weir::cuda::DeviceT;
using weir::cuda::Load;
using weir::cuda::Stream;

__device__ __forceinline__ float Mul(float a, float b) { return __fmul_rn(a, b); }
__device__ __forceinline__ float Add(float a, float b) { return __fadd_rn(a, b); }
__device__ __forceinline__ float Sub(float a, float b) { return __fsub_rn(a, b); }
__device__ __forceinline__ float Div(float a, float b) { return __fdiv_rn(a, b); }
__device__ __forceinline__ float Sqrt(float a) { return __fsqrt_rn(a); }
__device__ __forceinline__ double Mul(double a, double b) { return __dmul_rn(a, b); }
__device__ __forceinline__ double Add(double a, double b) { return __dadd_rn(a, b); }
__device__ __forceinline__ double Sub(double a, double b) { return __dsub_rn(a, b); }
__device__ __forceinline__ double Div(double a, double b) { return __ddiv_rn(a, b); }
__device__ __forceinline__ double Sqrt(double a) { return __dsqrt_rn(a); }

// The attrs as P, and the loop invariants the CPU computes per element (the same operations in
// P, so the same values).
template <typename P>
struct AdamWConstants {
  P lr, b1, b2, eps, scale, c1, c2;
  P one_minus_b1, one_minus_b2, decay;  // 1 - β1, 1 - β2, 1 - lr·wd
};

template <typename P>
struct SgdConstants {
  P lr, mu, wd, scale;
  bool nesterov;
};

template <typename P, typename G>
__global__ void AdamWKernel(const P* p_in, const G* grad, const P* m_in, const P* v_in, P* p, P* m,
                            P* v, int64_t n, AdamWConstants<P> c) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    P g = Mul(static_cast<P>(Load(grad[i])), c.scale);
    P mi = Add(Mul(c.b1, m_in[i]), Mul(c.one_minus_b1, g));
    P vi = Add(Mul(c.b2, v_in[i]), Mul(Mul(c.one_minus_b2, g), g));
    P pi = Mul(p_in[i], c.decay);  // decoupled weight decay
    pi = Sub(pi, Div(Mul(c.lr, Div(mi, c.c1)), Add(Sqrt(Div(vi, c.c2)), c.eps)));
    m[i] = mi;
    v[i] = vi;
    p[i] = pi;
  }
}

template <typename P, typename G>
__global__ void SgdKernel(const P* p_in, const G* grad, const P* b_in, P* p, P* buf, int64_t n,
                          SgdConstants<P> c) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    P pin = p_in[i];
    P g = Add(Mul(static_cast<P>(Load(grad[i])), c.scale), Mul(c.wd, pin));
    P b = Add(Mul(c.mu, b_in[i]), g);
    P step = c.nesterov ? Add(g, Mul(c.mu, b)) : b;
    buf[i] = b;
    p[i] = Sub(pin, Mul(c.lr, step));
  }
}

// optim.cc's CheckShapes on the kernel's tensors: every input has the parameter's element count,
// the parameter and state are f32 or f64 alike.
Status CheckTensors(const KernelContext& ctx, int states) {
  const Tensor& param = ctx.input(0);
  if (param.dtype() != DT_F32 && param.dtype() != DT_F64)
    return InvalidArgument("parameters are updated in f32 (or f64), got " + param.DebugString());
  for (int i = 1; i < ctx.num_inputs(); ++i) {
    if (ctx.input(i).shape() != param.shape())
      return InvalidArgument("input " + std::to_string(i) + " " + ctx.input(i).DebugString() +
                             " does not match the parameter " + param.DebugString());
  }
  for (int s = 0; s < states; ++s) {
    if (ctx.input(2 + s).dtype() != param.dtype())
      return InvalidArgument("state " + ctx.input(2 + s).DebugString() +
                             " is not of the parameter's dtype " + param.DebugString());
  }
  return Status();
}

template <typename P>
Status AdamWUpdate(KernelContext& ctx) {
  const Attrs& a = ctx.attrs();
  double step = static_cast<double>(a.Int("step"));
  auto get = [&](const char* name) { return static_cast<P>(a.Float(name)); };
  AdamWConstants<P> c;
  c.lr = get("lr");
  c.b1 = get("beta1");
  c.b2 = get("beta2");
  c.eps = get("eps");
  P wd = get("weight_decay");
  c.scale = get("grad_scale");
  c.c1 = static_cast<P>(1 - std::pow(a.Float("beta1"), step));
  c.c2 = static_cast<P>(1 - std::pow(a.Float("beta2"), step));
  c.one_minus_b1 = 1 - c.b1;
  c.one_minus_b2 = 1 - c.b2;
  c.decay = 1 - c.lr * wd;
  int64_t n = ctx.input(0).numel();
  if (n == 0) return Status();
  const Tensor& grad = ctx.input(1);
  return DispatchFloat(grad.dtype(), [&](auto tag) {
    using G = decltype(tag);
    AdamWKernel<P, DeviceT<G>><<<Blocks(n), 256, 0, Stream(ctx)>>>(
        ctx.input(0).data<P>(), Data<G>(grad), ctx.input(2).data<P>(), ctx.input(3).data<P>(),
        ctx.output(0).data<P>(), ctx.output(1).data<P>(), ctx.output(2).data<P>(), n, c);
    return CheckLaunch("optim.AdamW");
  });
}

template <typename P>
Status SgdUpdate(KernelContext& ctx) {
  const Attrs& a = ctx.attrs();
  auto get = [&](const char* name) { return static_cast<P>(a.Float(name)); };
  SgdConstants<P> c{get("lr"), get("momentum"), get("weight_decay"), get("grad_scale"),
                    a.Bool("nesterov")};
  int64_t n = ctx.input(0).numel();
  if (n == 0) return Status();
  const Tensor& grad = ctx.input(1);
  return DispatchFloat(grad.dtype(), [&](auto tag) {
    using G = decltype(tag);
    SgdKernel<P, DeviceT<G>><<<Blocks(n), 256, 0, Stream(ctx)>>>(
        ctx.input(0).data<P>(), Data<G>(grad), ctx.input(2).data<P>(), ctx.output(0).data<P>(),
        ctx.output(1).data<P>(), n, c);
    return CheckLaunch("optim.SGD");
  });
}

Status AdamWCuda(KernelContext& ctx) {
  WEIR_RETURN_IF_ERROR(CheckTensors(ctx, 2));
  return ctx.input(0).dtype() == DT_F64 ? AdamWUpdate<double>(ctx) : AdamWUpdate<float>(ctx);
}

Status SgdCuda(KernelContext& ctx) {
  WEIR_RETURN_IF_ERROR(CheckTensors(ctx, 1));
  return ctx.input(0).dtype() == DT_F64 ? SgdUpdate<double>(ctx) : SgdUpdate<float>(ctx);
}

}  // namespace

void RegisterOptimCuda(Registrar& r) {
  r.Kernel("optim.AdamW", "cuda", AdamWCuda, {DT_F32, DT_F64});
  r.Kernel("optim.SGD", "cuda", SgdCuda, {DT_F32, DT_F64});
}

}  // namespace weir::optim
