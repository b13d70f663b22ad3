// CUDA kernels of the nn plugin's matrix products: nn.MatMul, nn.Linear, nn.HeadMatMul,
// nn.HeadMatMulGradW and nn.LoRALinear. Each is one or a few cuda::Gemm calls (cuBLASLt) with
// the strides that pick its matrices out of the dense tensors, as the CPU kernels do with
// oneDNN; LoRA adds two elementwise kernels (its dropout and its scaling), which round exactly
// where the CPU kernel rounds.
#include <algorithm>
#include <atomic>
#include <string>

#include "weir/cuda_gemm.h"
#include "weir/cuda_kernel.h"
#include "weir/dispatch.h"
#include "weir/gemm.h"
#include "weir/random.h"

namespace weir::nn::gemm_cuda {
namespace {

using cuda::Blocks;
using cuda::CheckLaunch;
using cuda::Data;
using cuda::DeviceT;
using cuda::GemmArgs;
using cuda::Load;
using cuda::Store;
using cuda::Stream;

constexpr unsigned kThreads = 256;

// Leading dimensions must be at least 1 even where a dim is 0 (cuBLASLt's rule; no element is
// read then).
int64_t Ld(int64_t width) { return std::max<int64_t>(width, 1); }

int64_t LeadingElements(const Shape& shape, int trailing) {
  return NumElements(Shape(shape.begin(), shape.end() - trailing));
}

Status ExpectOutput(const Tensor& out, DataType dtype, const Shape& shape, const char* op) {
  if (out.dtype() == dtype && out.shape() == shape) return Status();
  return Internal(std::string(op) + ": output is " + DataTypeName(out.dtype()) +
                  ShapeString(out.shape()) + ", expected " + DataTypeName(dtype) +
                  ShapeString(shape));
}

// SplitMix64 and UnitInterval (weir/random.h) on the device: the same bits as the host's, so a
// mask depends only on (stream, index) as on the CPU.
__device__ __forceinline__ uint64_t SplitMix64Device(uint64_t x) {
  x += 0x9e3779b97f4a7c15ULL;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

// LoRA's dropout of x: mask[i] = (u_i >= rate), out[i] = mask[i] ? x[i]·keep : 0 in the
// accumulator type, rounded once, as LoraLinearCpu does.
template <typename D, typename Acc>
__global__ void LoraDropoutKernel(const D* __restrict__ x, int64_t count, uint64_t stream,
                                  double rate, Acc keep, uint8_t* __restrict__ mask,
                                  D* __restrict__ out) {
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < count;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    uint64_t hash = SplitMix64Device(stream ^ static_cast<uint64_t>(i));
    double u = static_cast<double>(hash >> 11) * 0x1.0p-53;
    bool kept = u >= rate;
    mask[i] = kept ? 1 : 0;
    out[i] = Store<D>(kept ? static_cast<Acc>(Load(x[i])) * keep : Acc(0));
  }
}

// out = h · s, rounded once (LoRA's scaling, applied to the rank-wide activation).
template <typename D, typename Acc>
__global__ void ScaleKernel(const D* __restrict__ in, int64_t count, Acc factor,
                            D* __restrict__ out) {
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < count;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    out[i] = Store<D>(static_cast<Acc>(Load(in[i])) * factor);
}

// The CUDA kernel's own dropout call counter: like the CPU kernel's, it makes each call's mask
// different; the two devices' masks differ (as their counters do).
std::atomic<uint64_t> g_lora_calls{0};

}  // namespace

// y = op(a) · op(b), batched over a's leading dims; a 2-D b is shared by the batch.
Status MatMulCuda(KernelContext& ctx) {
  const Tensor &a = ctx.input(0), &b = ctx.input(1);
  Tensor& y = ctx.output(0);
  bool ta = ctx.attrs().Bool("transpose_a"), tb = ctx.attrs().Bool("transpose_b");
  WEIR_ASSIGN_OR_RETURN(Shape out, GemmShape(a.shape(), ta, b.shape(), tb));
  if (a.dtype() != b.dtype()) {
    return InvalidArgument(std::string("matmul dtypes differ: ") + DataTypeName(a.dtype()) + ", " +
                           DataTypeName(b.dtype()));
  }
  WEIR_RETURN_IF_ERROR(ExpectOutput(y, a.dtype(), out, "nn.MatMul"));
  int64_t m = ta ? a.dim(-1) : a.dim(-2), k = ta ? a.dim(-2) : a.dim(-1);
  int64_t n = tb ? b.dim(-2) : b.dim(-1);
  int64_t batch = LeadingElements(a.shape(), 2);
  bool batched_b = b.rank() > 2;
  GemmArgs g;
  g.type = g.c_type = a.dtype();
  g.m = m;
  g.n = n;
  g.k = k;
  g.trans_a = ta;
  g.trans_b = tb;
  g.a = a.raw_data();
  g.lda = Ld(ta ? m : k);
  g.b = b.raw_data();
  g.ldb = Ld(tb ? k : n);
  g.c = y.raw_data();
  g.ldc = Ld(n);
  if (!batched_b && !ta) {
    g.m = batch * m;  // a shared weight under an untransposed a: one GEMM over all rows
  } else {
    g.batch = batch;
    g.stride_a = m * k;
    g.stride_b = batched_b ? k * n : 0;
    g.stride_c = m * n;
  }
  return cuda::Gemm(ctx, g);
}

// y = x · Wᵀ with W [out_features, in_features].
Status LinearCuda(KernelContext& ctx) {
  const Tensor &x = ctx.input(0), &w = ctx.input(1);
  Tensor& y = ctx.output(0);
  int64_t in = x.dim(-1), out = y.dim(-1);
  if (w.dtype() != x.dtype() || w.shape() != Shape{out, in}) {
    return InvalidArgument("weight " + std::string(DataTypeName(w.dtype())) +
                           ShapeString(w.shape()) + " does not fit x " + ShapeString(x.shape()));
  }
  GemmArgs g;
  g.type = g.c_type = x.dtype();
  g.m = LeadingElements(x.shape(), 1);
  g.n = out;
  g.k = in;
  g.trans_b = true;
  g.a = x.raw_data();
  g.lda = Ld(in);
  g.b = w.raw_data();
  g.ldb = Ld(in);
  g.c = y.raw_data();
  g.ldc = Ld(out);
  return cuda::Gemm(ctx, g);
}

// Per head h: y[..., h, :] = x[..., h, :] · w[h] (w[h]ᵀ with transpose_w). The heads are
// interleaved blocks of x and y, so one strided batch covers them: head h's matrices start h·n
// (x), h·n·m (w) and h·m (y) elements in, with rows heads·n and heads·m apart.
Status HeadMatMulCuda(KernelContext& ctx) {
  const Tensor &x = ctx.input(0), &w = ctx.input(1);
  Tensor& y = ctx.output(0);
  bool tw = ctx.attrs().Bool("transpose_w");
  if (x.dtype() != w.dtype() || x.rank() < 2 || w.rank() != 3 || x.dim(-2) != w.dim(0) ||
      x.dim(-1) != w.dim(tw ? 2 : 1)) {
    return InvalidArgument("x " + ShapeString(x.shape()) + " does not multiply per head with w " +
                           ShapeString(w.shape()) + (tw ? " transposed" : ""));
  }
  int64_t heads = w.dim(0), n = x.dim(-1), m = w.dim(tw ? 1 : 2);
  Shape out = x.shape();
  out.back() = m;
  WEIR_RETURN_IF_ERROR(ExpectOutput(y, x.dtype(), out, "nn.HeadMatMul"));
  GemmArgs g;
  g.type = g.c_type = x.dtype();
  g.m = LeadingElements(x.shape(), 2);
  g.n = m;
  g.k = n;
  g.trans_b = tw;
  g.a = x.raw_data();
  g.lda = Ld(heads * n);
  g.stride_a = n;
  g.b = w.raw_data();
  g.ldb = Ld(tw ? n : m);
  g.stride_b = n * m;
  g.c = y.raw_data();
  g.ldc = Ld(heads * m);
  g.stride_c = m;
  g.batch = heads;
  return cuda::Gemm(ctx, g);
}

// dw[h] = x_hᵀ · dy_h ([n, m]), or dy_hᵀ · x_h ([m, n]) with transpose_w: a sum over all rows.
Status HeadMatMulGradWCuda(KernelContext& ctx) {
  const Tensor &x = ctx.input(0), &dy = ctx.input(1);
  Tensor& dw = ctx.output(0);
  bool tw = ctx.attrs().Bool("transpose_w");
  if (x.rank() < 2 || dy.rank() != x.rank() || x.dim(-2) != dy.dim(-2) || x.dtype() != dy.dtype()) {
    return InvalidArgument("x " + ShapeString(x.shape()) + " and dy " + ShapeString(dy.shape()) +
                           " disagree on their heads");
  }
  int64_t heads = x.dim(-2), n = x.dim(-1), m = dy.dim(-1);
  WEIR_RETURN_IF_ERROR(ExpectOutput(dw, x.dtype(), tw ? Shape{heads, m, n} : Shape{heads, n, m},
                                    "nn.HeadMatMulGradW"));
  const Tensor& left = tw ? dy : x;   // transposed in the product
  const Tensor& right = tw ? x : dy;  // as stored
  int64_t left_width = tw ? m : n, right_width = tw ? n : m;
  GemmArgs g;
  g.type = g.c_type = x.dtype();
  g.m = left_width;
  g.n = right_width;
  g.k = LeadingElements(x.shape(), 2);
  g.trans_a = true;
  g.a = left.raw_data();
  g.lda = Ld(heads * left_width);
  g.stride_a = left_width;
  g.b = right.raw_data();
  g.ldb = Ld(heads * right_width);
  g.stride_b = right_width;
  g.c = dw.raw_data();
  g.ldc = Ld(right_width);
  g.stride_c = left_width * right_width;
  g.batch = heads;
  return cuda::Gemm(ctx, g);
}

// y = x · Wᵀ + s · (dropout(x) · Aᵀ) · Bᵀ with s = lora_alpha / lora_rank; also h =
// dropout(x) · Aᵀ and the dropout mask. As on the CPU, s scales h (rounded to T) before the
// last product, which adds onto y.
Status LoraLinearCuda(KernelContext& ctx) {
  const Tensor &x = ctx.input(0), &w = ctx.input(1), &lora_a = ctx.input(2), &lora_b = ctx.input(3);
  Tensor &y = ctx.output(0), &h = ctx.output(1), &mask = ctx.output(2);
  const Attrs& attrs = ctx.attrs();
  int64_t in = x.dim(-1), out = attrs.Int("out_features"), rank = attrs.Int("lora_rank");
  int64_t rows = LeadingElements(x.shape(), 1);
  double rate = attrs.Float("lora_dropout");
  double scaling = attrs.Float("lora_alpha") / static_cast<double>(rank);
  if (w.shape() != Shape{out, in} || lora_a.shape() != Shape{rank, in} ||
      lora_b.shape() != Shape{out, rank} || w.dtype() != x.dtype() || lora_a.dtype() != x.dtype() ||
      lora_b.dtype() != x.dtype()) {
    return InvalidArgument("nn.LoRALinear: weight " + ShapeString(w.shape()) + ", lora_a " +
                           ShapeString(lora_a.shape()) + " and lora_b " +
                           ShapeString(lora_b.shape()) + " do not fit x " + ShapeString(x.shape()));
  }
  if (rate > 0 && mask.numel() != x.numel())
    return Internal("nn.LoRALinear: the dropout mask is " + ShapeString(mask.shape()));

  auto linear = [&](const void* input, int64_t width, const Tensor& weight, int64_t outputs,
                    void* result, double beta) {
    GemmArgs g;
    g.type = g.c_type = x.dtype();
    g.m = rows;
    g.n = outputs;
    g.k = width;
    g.trans_b = true;
    g.a = input;
    g.lda = Ld(width);
    g.b = weight.raw_data();
    g.ldb = Ld(width);
    g.c = result;
    g.ldc = Ld(outputs);
    g.beta = beta;
    return cuda::Gemm(ctx, g);
  };
  WEIR_RETURN_IF_ERROR(linear(x.raw_data(), in, w, out, y.raw_data(), 0));
  if (rows == 0) return Status();
  cudaStream_t stream = Stream(ctx);
  return DispatchFloat(x.dtype(), [&](auto tag) -> Status {
    using T = decltype(tag);
    using D = DeviceT<T>;
    using Acc = AccumulatorOf<T>;
    const void* dropped = x.raw_data();
    Tensor dropped_storage;
    if (rate > 0) {
      WEIR_ASSIGN_OR_RETURN(dropped_storage, cuda::Scratch(ctx, x.dtype(), x.shape()));
      uint64_t calls = g_lora_calls.fetch_add(1);
      uint64_t seed_stream =
          SplitMix64(static_cast<uint64_t>(attrs.Int("seed")) ^ SplitMix64(calls));
      int64_t count = x.numel();
      LoraDropoutKernel<D, Acc><<<Blocks(count, kThreads), kThreads, 0, stream>>>(
          Data<T>(x), count, seed_stream, rate, static_cast<Acc>(1.0 / (1.0 - rate)),
          mask.data<uint8_t>(), Data<T>(dropped_storage));
      WEIR_RETURN_IF_ERROR(CheckLaunch("LoraDropoutKernel"));
      dropped = dropped_storage.raw_data();
    }
    WEIR_RETURN_IF_ERROR(linear(dropped, in, lora_a, rank, h.raw_data(), 0));
    WEIR_ASSIGN_OR_RETURN(Tensor scaled, cuda::Scratch(ctx, h.dtype(), h.shape()));
    int64_t count = h.numel();
    ScaleKernel<D, Acc><<<Blocks(count, kThreads), kThreads, 0, stream>>>(
        Data<T>(h), count, static_cast<Acc>(scaling), Data<T>(scaled));
    WEIR_RETURN_IF_ERROR(CheckLaunch("ScaleKernel"));
    return linear(scaled.raw_data(), rank, lora_b, out, y.raw_data(), 1);
  });
}

}  // namespace weir::nn::gemm_cuda
