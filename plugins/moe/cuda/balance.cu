// moe.BalanceLoss, moe.BalanceLossGrad and moe.BiasUpdate on CUDA, as balance/*.cc compute them:
// in f64 like the CPU, whatever the logits' dtype.
//
// The loss of sequence b is α Σ_i f_i P_i = α/T Σ_t (Σ_i f_i s_ti) / (Σ_i s_ti), so it needs the
// routing counts of the sequence first (f), then one warp per token for the two sums, then one
// block that adds the tokens' terms in a fixed order (deterministic).
#include <string>

#include "cuda/common.cuh"
#include "cuda/register.h"
#include "weir/cuda_kernel.h"

namespace weir::moe {
namespace {

using namespace cuda_detail;
using weir::cuda::Blocks;
using weir::cuda::CheckLaunch;
using weir::cuda::Data;
using weir::cuda::DeviceT;
using weir::cuda::Load;
using weir::cuda::Scratch;
using weir::cuda::Store;
using weir::cuda::Stream;

struct Dims {
  int64_t sequences, tokens, experts, k;
};

StatusOr<Dims> GetDims(const Tensor& logits, const Tensor& indices) {
  const Shape &l = logits.shape(), &i = indices.shape();
  if (l.size() != 3 || i.size() != 3 || l[0] != i[0] || l[1] != i[1] || indices.dtype() != DT_I64) {
    return InvalidArgument(
        "expected logits [sequences, tokens, experts] and i64 indices [sequences, tokens, K], "
        "got " +
        logits.DebugString() + " and " + indices.DebugString());
  }
  return Dims{l[0], l[1], l[2], i[2]};
}

// counts[b, e]: how often sequence b routed to expert e (indices outside [0, E) are skipped, as
// the CPU's Frequencies does). Integer atomics: exact in any order.
__global__ void CountRoutes(const int64_t* indices, Dims d, int* counts) {
  int64_t total = d.sequences * d.tokens * d.k, per_sequence = d.tokens * d.k;
  for (int64_t s = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; s < total;
       s += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    int64_t e = indices[s];
    if (e >= 0 && e < d.experts) atomicAdd(counts + (s / per_sequence) * d.experts + e, 1);
  }
}

// f_i of sequence b: E/(K·T) · count, computed as the CPU does (count, then times the norm).
__device__ __forceinline__ double Frequency(const int* counts, const Dims& d, int64_t b,
                                            int64_t e) {
  double norm = static_cast<double>(d.experts) / static_cast<double>(d.k * d.tokens);
  return static_cast<double>(counts[b * d.experts + e]) * norm;
}

__device__ __forceinline__ double Sigmoid(double x) { return 1 / (1 + exp(-x)); }

// One warp per token: term[b·T + t] = Σ_i f_i s_ti / Σ_i s_ti.
template <typename T>
__global__ void BalanceTerms(const DeviceT<T>* logits, const int* counts, Dims d, double* terms) {
  int lane = threadIdx.x % 32, warps = blockDim.x / 32;
  int64_t rows = d.sequences * d.tokens;
  for (int64_t row = static_cast<int64_t>(blockIdx.x) * warps + threadIdx.x / 32; row < rows;
       row += static_cast<int64_t>(gridDim.x) * warps) {
    const DeviceT<T>* x = logits + row * d.experts;
    int64_t b = row / d.tokens;
    double total = 0, weighted = 0;
    for (int64_t e = lane; e < d.experts; e += 32) {
      double s = Sigmoid(static_cast<double>(Load(x[e])));
      total += s;
      weighted += Frequency(counts, d, b, e) * s;
    }
    total = WarpSum(total);
    weighted = WarpSum(weighted);
    if (lane == 0) terms[row] = weighted / total;
  }
}

// loss = α / (T·B) Σ terms, by one block in a fixed order.
__global__ void BalanceFinish(const double* terms, int64_t rows, double scale, void* loss,
                              DataType loss_type) {
  __shared__ double partial[32];
  double sum = 0;
  for (int64_t i = threadIdx.x; i < rows; i += blockDim.x) sum += terms[i];
  sum = BlockSum(sum, partial);
  if (threadIdx.x == 0) {
    double v = sum * scale;
    if (loss_type == DT_F64)
      *static_cast<double*>(loss) = v;
    else
      *static_cast<float*>(loss) = static_cast<float>(v);
  }
}

// One warp per token: with a_i = f_i · dloss · α / (T·B) and s' = s / Σ s,
// dlogit_i = (a_i − Σ_j a_j s'_j) / Σ s · s_i (1 − s_i).
template <typename T>
__global__ void BalanceGradKernel(const DeviceT<T>* logits, const int* counts, Dims d,
                                  const void* dloss, DataType dloss_type, double alpha,
                                  DeviceT<T>* dlogits) {
  int lane = threadIdx.x % 32, warps = blockDim.x / 32;
  int64_t rows = d.sequences * d.tokens;
  double per =
      ScalarAsDouble(dloss, dloss_type) * alpha / static_cast<double>(d.tokens * d.sequences);
  for (int64_t row = static_cast<int64_t>(blockIdx.x) * warps + threadIdx.x / 32; row < rows;
       row += static_cast<int64_t>(gridDim.x) * warps) {
    const DeviceT<T>* x = logits + row * d.experts;
    DeviceT<T>* out = dlogits + row * d.experts;
    int64_t b = row / d.tokens;
    double total = 0, weighted = 0;
    for (int64_t e = lane; e < d.experts; e += 32) {
      double s = Sigmoid(static_cast<double>(Load(x[e])));
      total += s;
      weighted += Frequency(counts, d, b, e) * per * s;
    }
    total = WarpSum(total);
    double mean = WarpSum(weighted) / total;
    for (int64_t e = lane; e < d.experts; e += 32) {
      double s = Sigmoid(static_cast<double>(Load(x[e])));
      double ds = (Frequency(counts, d, b, e) * per - mean) / total;
      out[e] = Store<DeviceT<T>>(static_cast<AccumulatorOf<T>>(ds * s * (1 - s)));
    }
  }
}

unsigned WarpBlocks(int64_t rows, int warps) {
  return static_cast<unsigned>(std::clamp<int64_t>((rows + warps - 1) / warps, 1, 16384));
}

constexpr int kWarps = 8;

// The routing counts of every sequence, in scratch memory.
StatusOr<Tensor> Counts(KernelContext& ctx, const Tensor& indices, const Dims& d) {
  WEIR_ASSIGN_OR_RETURN(Tensor counts, Scratch(ctx, DT_I32, {d.sequences, d.experts}));
  WEIR_RETURN_IF_ERROR(weir::cuda::Check(
      cudaMemsetAsync(counts.raw_data(), 0, counts.nbytes(), Stream(ctx)), "zero the counts"));
  int64_t slots = indices.numel();
  if (slots > 0) {
    CountRoutes<<<Blocks(slots), 256, 0, Stream(ctx)>>>(indices.data<int64_t>(), d,
                                                        counts.data<int32_t>());
    WEIR_RETURN_IF_ERROR(CheckLaunch("moe.BalanceLoss counts"));
  }
  return counts;
}

Status BalanceLossCuda(KernelContext& ctx) {
  const Tensor &logits = ctx.input(0), &indices = ctx.input(1);
  WEIR_ASSIGN_OR_RETURN(Dims d, GetDims(logits, indices));
  double alpha = ctx.attrs().Float("alpha");
  Tensor& loss = ctx.output(0);
  int64_t rows = d.sequences * d.tokens;
  double scale = alpha / static_cast<double>(d.tokens) / static_cast<double>(d.sequences);
  if (rows == 0 || d.experts == 0) {
    // No terms: 0 · scale, which is NaN where the CPU's is (no sequences or no tokens).
    BalanceFinish<<<1, 32, 0, Stream(ctx)>>>(nullptr, 0, rows == 0 ? scale : 0.0, loss.raw_data(),
                                             loss.dtype());
    return CheckLaunch("moe.BalanceLoss");
  }
  return DispatchFloat(logits.dtype(), [&](auto tag) -> Status {
    using T = decltype(tag);
    WEIR_ASSIGN_OR_RETURN(Tensor counts, Counts(ctx, indices, d));
    WEIR_ASSIGN_OR_RETURN(Tensor terms, Scratch(ctx, DT_F64, {rows}));
    BalanceTerms<T><<<WarpBlocks(rows, kWarps), kWarps * 32, 0, Stream(ctx)>>>(
        Data<T>(logits), counts.data<int32_t>(), d, terms.data<double>());
    WEIR_RETURN_IF_ERROR(CheckLaunch("moe.BalanceLoss terms"));
    BalanceFinish<<<1, 1024, 0, Stream(ctx)>>>(terms.data<double>(), rows, scale, loss.raw_data(),
                                               loss.dtype());
    return CheckLaunch("moe.BalanceLoss");
  });
}

Status BalanceLossGradCuda(KernelContext& ctx) {
  const Tensor &logits = ctx.input(0), &indices = ctx.input(1), &dloss = ctx.input(2);
  WEIR_ASSIGN_OR_RETURN(Dims d, GetDims(logits, indices));
  if (dloss.numel() != 1 ||
      (dloss.dtype() != DT_F32 && dloss.dtype() != DT_F64 && dloss.dtype() != DT_BF16)) {
    return InvalidArgument("moe.BalanceLossGrad: dloss must be a scalar, got " +
                           dloss.DebugString());
  }
  int64_t rows = d.sequences * d.tokens;
  if (rows == 0 || d.experts == 0) return Status();
  return DispatchFloat(logits.dtype(), [&](auto tag) -> Status {
    using T = decltype(tag);
    WEIR_ASSIGN_OR_RETURN(Tensor counts, Counts(ctx, indices, d));
    BalanceGradKernel<T><<<WarpBlocks(rows, kWarps), kWarps * 32, 0, Stream(ctx)>>>(
        Data<T>(logits), counts.data<int32_t>(), d, dloss.raw_data(), dloss.dtype(),
        ctx.attrs().Float("alpha"), Data<T>(ctx.output(0)));
    return CheckLaunch("moe.BalanceLossGrad");
  });
}

// moe.BiasUpdate: b + γ·sign(mean − load) per expert and max/mean, one block. A load that is not
// a count (negative or NaN), which the CPU reports as an error, cannot be reported from the
// device without a wait: the ratio comes out NaN instead, and the bias moves as the signs say.
__global__ void BiasUpdateKernel(const float* bias, const float* load, int64_t experts,
                                 double gamma, float* new_bias, float* ratio) {
  __shared__ double partial[32];
  __shared__ double mean_shared;
  double total = 0, most = 0, bad = 0;
  for (int64_t e = threadIdx.x; e < experts; e += blockDim.x) {
    float l = load[e];
    if (!(l >= 0)) bad = 1;
    total += l;
    most = fmax(most, static_cast<double>(l));
  }
  total = BlockSum(total, partial);
  bad = BlockMax(bad, partial);
  most = BlockMax(most, partial);
  if (threadIdx.x == 0) mean_shared = total / static_cast<double>(experts);
  __syncthreads();
  double mean = mean_shared;
  for (int64_t e = threadIdx.x; e < experts; e += blockDim.x) {
    double diff = mean - load[e];
    double sign = diff > 0 ? 1.0 : diff < 0 ? -1.0 : 0.0;
    new_bias[e] = static_cast<float>(bias[e] + gamma * sign);
  }
  if (threadIdx.x == 0) *ratio = bad != 0 ? NAN : static_cast<float>(mean > 0 ? most / mean : 0.0);
}

Status BiasUpdateCuda(KernelContext& ctx) {
  const Tensor &bias = ctx.input(0), &load = ctx.input(1);
  if (bias.dtype() != DT_F32 || load.dtype() != DT_F32 || bias.shape() != load.shape()) {
    return InvalidArgument("moe.BiasUpdate: bias and load must both be f32 [experts], got " +
                           bias.DebugString() + " and " + load.DebugString());
  }
  BiasUpdateKernel<<<1, 256, 0, Stream(ctx)>>>(
      bias.data<float>(), load.data<float>(), bias.numel(), ctx.attrs().Float("bias_update_speed"),
      ctx.output(0).data<float>(), ctx.output(1).data<float>());
  return CheckLaunch("moe.BiasUpdate");
}

}  // namespace

void RegisterBalanceCuda(Registrar& r) {
  r.Kernel("moe.BalanceLoss", "cuda", BalanceLossCuda, KernelFloatTypes());
  r.Kernel("moe.BalanceLossGrad", "cuda", BalanceLossGradCuda, KernelFloatTypes());
  r.Kernel("moe.BiasUpdate", "cuda", BiasUpdateCuda);
}

}  // namespace weir::moe
