// reward.BradleyTerryLoss and its gradient on CUDA, as model/bradley_terry.cc computes them: in
// f64 whatever the scores' dtype, the loss and accuracy summed by one block in a fixed order.
#include <string>

#include "register.h"  // this folder's (the rl plugin's include path has a cuda/register.h too)
#include "weir/cuda_kernel.h"

namespace weir::reward {
namespace {

using weir::cuda::Blocks;
using weir::cuda::CheckLaunch;
using weir::cuda::DeviceT;
using weir::cuda::Load;
using weir::cuda::Store;
using weir::cuda::Stream;

using weir::cuda::BlockSum;

// softplus(x) = log(1 + e^x), without overflow for large x or lost digits for very negative x.
__device__ double Softplus(double x) { return fmax(x, 0.0) + log1p(exp(-fabs(x))); }

// σ(x), without overflow for either sign.
__device__ double Sigmoid(double x) {
  if (x >= 0) return 1.0 / (1.0 + exp(-x));
  double e = exp(x);
  return e / (1.0 + e);
}

// scores [2N]: margins m_i = s_i − s_{N+i}; loss = mean softplus(−m), accuracy = share of m > 0.
template <typename D>
__global__ void BradleyTerryKernel(const D* scores, int64_t n, void* loss, void* accuracy,
                                   DataType out_type) {
  __shared__ double shared[32];
  double sum = 0, wins = 0;
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) {
    double m = static_cast<double>(Load(scores[i])) - static_cast<double>(Load(scores[n + i]));
    sum += Softplus(-m);
    wins += m > 0 ? 1.0 : 0.0;
  }
  sum = BlockSum(sum, shared);
  wins = BlockSum(wins, shared);
  if (threadIdx.x == 0) {
    double count = static_cast<double>(n);
    if (out_type == DT_F64) {
      *static_cast<double*>(loss) = sum / count;
      *static_cast<double*>(accuracy) = wins / count;
    } else {
      *static_cast<float*>(loss) = static_cast<float>(sum / count);
      *static_cast<float*>(accuracy) = static_cast<float>(wins / count);
    }
  }
}

// dscores_i = −dloss · σ(−m_i) / N, dscores_{N+i} = +dloss · σ(−m_i) / N; zeros when detached
// (dloss is then not read: it stands in for a gradient that does not exist).
template <typename D>
__global__ void BradleyTerryGradKernel(const D* scores, int64_t n, const void* dloss,
                                       DataType dloss_type, bool detached, D* out) {
  double scale = 0.0;
  if (!detached) {
    double seed = dloss_type == DT_F64 ? *static_cast<const double*>(dloss)
                                       : static_cast<double>(*static_cast<const float*>(dloss));
    scale = seed / static_cast<double>(n);
  }
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    double m = static_cast<double>(Load(scores[i])) - static_cast<double>(Load(scores[n + i]));
    double d = scale * Sigmoid(-m);
    out[i] = Store<D>(-d);
    out[n + i] = Store<D>(d);
  }
}

// Calls f with the C++ type of a score dtype: f32, bf16, f16 or f64.
template <typename F>
Status DispatchScores(DataType dtype, F&& f) {
  switch (dtype) {
    case DT_F32:
      return f(float{});
    case DT_BF16:
      return f(bf16{});
    case DT_F16:
      return f(f16{});
    case DT_F64:
      return f(double{});
    default:
      return InvalidArgument(std::string("scores must be f32, bf16, f16 or f64, got ") +
                             DataTypeName(dtype));
  }
}

Status CheckScores(const Tensor& scores) {
  if (scores.shape().size() != 1 || scores.dim(0) == 0 || scores.dim(0) % 2 != 0) {
    return InvalidArgument("scores must be a vector of 2N > 0 rows (chosen, then rejected), got " +
                           scores.DebugString());
  }
  return Status();
}

Status BradleyTerryCuda(KernelContext& ctx) {
  const Tensor& scores = ctx.input(0);
  WEIR_RETURN_IF_ERROR(CheckScores(scores));
  int64_t n = scores.numel() / 2;
  return DispatchScores(scores.dtype(), [&](auto tag) {
    using T = decltype(tag);
    BradleyTerryKernel<<<1, 1024, 0, Stream(ctx)>>>(
        weir::cuda::Data<T>(scores), n, ctx.output(0).raw_data(), ctx.output(1).raw_data(),
        ctx.output(0).dtype());
    return CheckLaunch("reward.BradleyTerryLoss");
  });
}

Status BradleyTerryGradCuda(KernelContext& ctx) {
  const Tensor &scores = ctx.input(0), &dloss = ctx.input(1);
  WEIR_RETURN_IF_ERROR(CheckScores(scores));
  bool detached = ctx.attrs().Bool("detached");
  if (!detached && (dloss.numel() != 1 || (dloss.dtype() != DT_F32 && dloss.dtype() != DT_F64)))
    return InvalidArgument("dloss must be an f32 or f64 scalar, got " + dloss.DebugString());
  int64_t n = scores.numel() / 2;
  return DispatchScores(scores.dtype(), [&](auto tag) {
    using T = decltype(tag);
    BradleyTerryGradKernel<<<Blocks(n), 256, 0, Stream(ctx)>>>(
        weir::cuda::Data<T>(scores), n, dloss.raw_data(), dloss.dtype(), detached,
        weir::cuda::Data<T>(ctx.output(0)));
    return CheckLaunch("reward.BradleyTerryLossGrad");
  });
}

}  // namespace

void RegisterRewardCuda(Registrar& r) {
  r.Kernel("reward.BradleyTerryLoss", "cuda", BradleyTerryCuda, {DT_F32, DT_F64});
  r.Kernel("reward.BradleyTerryLossGrad", "cuda", BradleyTerryGradCuda,
           {DT_F32, DT_BF16, DT_F16, DT_F64});
}

}  // namespace weir::reward
