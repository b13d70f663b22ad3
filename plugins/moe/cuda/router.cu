// moe.Router and moe.RouterGrad on CUDA: DeepSeek-V3's gating as router/router.cc computes it
// (spec deepseek.md §3.2), one warp per token. The scores of a row live in shared memory; the
// group-limited top-K is K rounds of a warp argmax over the experts not yet taken, with ties to
// the lower index, which is exactly the order of the CPU's stable sort. Computes in f32 for f32
// and bf16 logits, in f64 for f64, as the CPU does.
#include <string>

#include "cuda/common.cuh"
#include "cuda/register.h"
#include "weir/cuda_kernel.h"

namespace weir::moe {
namespace {

using namespace cuda_detail;
using weir::cuda::CheckLaunch;
using weir::cuda::Data;
using weir::cuda::DeviceT;
using weir::cuda::Load;
using weir::cuda::Store;
using weir::cuda::Stream;

struct RouterConfig {
  bool sigmoid;
  int experts, groups, topk_group, k;
  bool normalize;
  double scale;
};

// The checks of router.cc's GetConfig, which the CPU kernel makes before it runs.
StatusOr<RouterConfig> GetConfig(const Attrs& a, int64_t experts) {
  int64_t groups = a.Int("n_group"), topk_group = a.Int("topk_group"),
          k = a.Int("num_experts_per_tok");
  if (experts % groups != 0) {
    return InvalidArgument(std::to_string(experts) + " experts do not split into n_group=" +
                           std::to_string(groups) + " groups");
  }
  if (topk_group > groups) {
    return InvalidArgument("topk_group=" + std::to_string(topk_group) +
                           " exceeds n_group=" + std::to_string(groups));
  }
  int64_t reachable = experts / groups * topk_group;
  if (k > reachable) {
    return InvalidArgument("num_experts_per_tok=" + std::to_string(k) + " exceeds the " +
                           std::to_string(reachable) + " experts of the kept groups");
  }
  return RouterConfig{
      a.String("scoring_func") == "sigmoid", static_cast<int>(experts), static_cast<int>(groups),
      static_cast<int>(topk_group),          static_cast<int>(k),       a.Bool("norm_topk_prob"),
      a.Float("routed_scaling_factor")};
}

// Shared memory of one warp: scores, selection scores (scores + bias, masked groups at -inf) and
// group scores in A, the chosen experts, and flags (taken experts, kept groups).
template <typename A>
struct WarpScratch {
  A* scores;
  A* select;
  A* group_score;
  int* chosen;
  unsigned char* taken;
  unsigned char* keep;
};

template <typename A>
__host__ __device__ size_t WarpScratchBytes(const RouterConfig& c) {
  size_t bytes = (2 * static_cast<size_t>(c.experts) + c.groups) * sizeof(A) +
                 static_cast<size_t>(c.k) * sizeof(int) + c.experts + c.groups;
  return (bytes + 15) / 16 * 16;
}

template <typename A>
__device__ WarpScratch<A> CarveScratch(unsigned char* base, const RouterConfig& c) {
  WarpScratch<A> w;
  w.scores = reinterpret_cast<A*>(base);
  w.select = w.scores + c.experts;
  w.group_score = w.select + c.experts;
  w.chosen = reinterpret_cast<int*>(w.group_score + c.groups);
  w.taken = reinterpret_cast<unsigned char*>(w.chosen + c.k);
  w.keep = w.taken + c.experts;
  return w;
}

// The scores of one row into `s`: sigmoid, or softmax over the row.
template <typename A, typename D>
__device__ void WarpScores(const D* x, int experts, bool sigmoid, A* s) {
  int lane = threadIdx.x % 32;
  if (sigmoid) {
    for (int e = lane; e < experts; e += 32) s[e] = A(1) / (A(1) + Exp(-A(Load(x[e]))));
  } else {
    A m = A(-INFINITY);
    for (int e = lane; e < experts; e += 32) {
      A v = Load(x[e]);
      m = v > m ? v : m;
    }
    m = WarpMax(m);
    A sum = 0;
    for (int e = lane; e < experts; e += 32) {
      A v = Exp(A(Load(x[e])) - m);
      s[e] = v;
      sum += v;
    }
    sum = WarpSum(sum);
    for (int e = lane; e < experts; e += 32) s[e] /= sum;
  }
  __syncwarp();
}

template <typename T, typename A = AccumulatorOf<T>>
__global__ void RouterKernel(const DeviceT<T>* logits, const float* bias, int64_t rows,
                             RouterConfig c, size_t warp_bytes, DeviceT<T>* weights, int64_t* ids,
                             float* load) {
  extern __shared__ __align__(16) unsigned char shared[];
  int lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = blockDim.x / 32;
  WarpScratch<A> w = CarveScratch<A>(shared + warp * warp_bytes, c);
  const int experts = c.experts;
  for (int64_t r = static_cast<int64_t>(blockIdx.x) * warps + warp; r < rows;
       r += static_cast<int64_t>(gridDim.x) * warps) {
    WarpScores(logits + r * experts, experts, c.sigmoid, w.scores);
    for (int e = lane; e < experts; e += 32) {
      w.select[e] = bias != nullptr ? w.scores[e] + static_cast<A>(bias[e]) : w.scores[e];
      w.taken[e] = 0;
    }
    __syncwarp();
    if (c.groups > 1) {
      // Group score: the best selection score, or with a bias the sum of the best two.
      int size = experts / c.groups;
      for (int g = lane; g < c.groups; g += 32) {
        A first = A(-INFINITY), second = A(-INFINITY);
        for (int e = g * size; e < (g + 1) * size; ++e) {
          A v = w.select[e];
          if (v > first) {
            second = first;
            first = v;
          } else if (v > second) {
            second = v;
          }
        }
        w.group_score[g] = bias != nullptr ? first + (size > 1 ? second : A(0)) : first;
      }
      __syncwarp();
      // A group's place in the CPU's stable sort (descending, ties by index): keep the first
      // topk_group.
      for (int g = lane; g < c.groups; g += 32) {
        A mine = w.group_score[g];
        int ahead = 0;
        for (int o = 0; o < c.groups; ++o) {
          A other = w.group_score[o];
          ahead += (other > mine || (other == mine && o < g)) ? 1 : 0;
        }
        w.keep[g] = ahead < c.topk_group ? 1 : 0;
      }
      __syncwarp();
      for (int e = lane; e < experts; e += 32)
        if (!w.keep[e / size]) w.select[e] = A(-INFINITY);
      __syncwarp();
    }
    // Top-K: K rounds of an argmax (highest, then lowest index) over the experts not taken.
    for (int k = 0; k < c.k; ++k) {
      A best = A(-INFINITY);
      int best_index = -1;
      for (int e = lane; e < experts; e += 32) {  // ascending e: a tie keeps the lower index
        if (w.taken[e]) continue;
        A v = w.select[e];
        if (best_index < 0 || v > best) {
          best = v;
          best_index = e;
        }
      }
      for (int offset = 16; offset > 0; offset >>= 1) {
        A other = __shfl_xor_sync(kFullMask, best, offset);
        int other_index = __shfl_xor_sync(kFullMask, best_index, offset);
        if (other_index >= 0 &&
            (best_index < 0 || other > best || (other == best && other_index < best_index))) {
          best = other;
          best_index = other_index;
        }
      }
      best_index = __shfl_sync(kFullMask, best_index, 0);  // one answer even for NaN scores
      if (best_index >= 0 && best_index % 32 == lane) w.taken[best_index] = 1;
      if (lane == 0) w.chosen[k] = best_index;
      __syncwarp();
    }
    // Weights from the unbiased scores, summed in slot order as the CPU does.
    A total = 0;
    for (int k = 0; k < c.k; ++k) total += w.scores[w.chosen[k]];
    for (int k = lane; k < c.k; k += 32) {
      int e = w.chosen[k];
      A v = w.scores[e];
      if (c.normalize) v /= total;
      weights[r * c.k + k] = Store<DeviceT<T>>(v * static_cast<A>(c.scale));
      ids[r * c.k + k] = e;
      atomicAdd(load + e, 1.0f);  // whole numbers: exact in any order below 2^24
    }
    __syncwarp();  // the scratch is reused by the next row
  }
}

// Inputs: logits, indices, dweights. The gradient flows through the scores of the selected
// experts only (router.cc's RouterGradCpu).
template <typename T, typename A = AccumulatorOf<T>>
__global__ void RouterGradKernel(const DeviceT<T>* logits, const int64_t* indices,
                                 const DeviceT<T>* dweights, int64_t rows, RouterConfig c,
                                 DeviceT<T>* dlogits) {
  extern __shared__ __align__(16) unsigned char shared[];
  int lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = blockDim.x / 32;
  const int experts = c.experts;
  A* s = reinterpret_cast<A*>(shared) + static_cast<size_t>(warp) * 2 * experts;
  A* ds = s + experts;
  A scale = static_cast<A>(c.scale);
  for (int64_t r = static_cast<int64_t>(blockIdx.x) * warps + warp; r < rows;
       r += static_cast<int64_t>(gridDim.x) * warps) {
    WarpScores(logits + r * experts, experts, c.sigmoid, s);
    for (int e = lane; e < experts; e += 32) ds[e] = 0;
    __syncwarp();
    if (lane == 0) {
      const int64_t* idx = indices + r * c.k;
      const DeviceT<T>* g = dweights + r * c.k;
      A total = 0, dot = 0;  // Σ s_sel and Σ g·s_sel over the selected experts
      for (int k = 0; k < c.k; ++k) {
        if (idx[k] < 0 || idx[k] >= experts) continue;
        A sk = s[idx[k]];
        total += sk;
        dot += A(Load(g[k])) * sk;
      }
      for (int k = 0; k < c.k; ++k) {
        if (idx[k] < 0 || idx[k] >= experts) continue;
        A gk = Load(g[k]);
        ds[idx[k]] += c.normalize ? scale * (gk / total - dot / (total * total)) : scale * gk;
      }
    }
    __syncwarp();
    DeviceT<T>* out = dlogits + r * experts;
    if (c.sigmoid) {
      for (int e = lane; e < experts; e += 32)
        out[e] = Store<DeviceT<T>>(ds[e] * s[e] * (A(1) - s[e]));
    } else {
      A sum = 0;
      for (int e = lane; e < experts; e += 32) sum += s[e] * ds[e];
      sum = WarpSum(sum);
      for (int e = lane; e < experts; e += 32) out[e] = Store<DeviceT<T>>(s[e] * (ds[e] - sum));
    }
    __syncwarp();
  }
}

constexpr size_t kMaxSharedBytes = 48 * 1024;

// Warps per block such that each has `warp_bytes` of shared memory within the default limit.
StatusOr<int> WarpsFor(size_t warp_bytes, int64_t experts) {
  if (warp_bytes > kMaxSharedBytes) {
    return InvalidArgument("moe.Router on cuda keeps a row's scores in shared memory: " +
                           std::to_string(experts) + " experts do not fit");
  }
  return static_cast<int>(std::min<size_t>(8, kMaxSharedBytes / warp_bytes));
}

unsigned RowBlocks(int64_t rows, int warps) {
  return static_cast<unsigned>(std::clamp<int64_t>((rows + warps - 1) / warps, 1, 16384));
}

Status RouterCuda(KernelContext& ctx) {
  const Tensor& logits = ctx.input(0);
  bool has_bias = ctx.num_inputs() > 1;
  int64_t experts = logits.dim(-1), rows = experts == 0 ? 0 : logits.numel() / experts;
  WEIR_ASSIGN_OR_RETURN(RouterConfig c, GetConfig(ctx.attrs(), experts));
  float* load = ctx.output(2).data<float>();
  WEIR_RETURN_IF_ERROR(weir::cuda::Check(
      cudaMemsetAsync(load, 0, ctx.output(2).nbytes(), Stream(ctx)), "moe.Router: zero the load"));
  if (rows == 0) return Status();
  const float* bias = has_bias ? ctx.input(1).data<float>() : nullptr;
  return DispatchFloat(logits.dtype(), [&](auto tag) -> Status {
    using T = decltype(tag);
    using A = AccumulatorOf<T>;
    size_t warp_bytes = WarpScratchBytes<A>(c);
    WEIR_ASSIGN_OR_RETURN(int warps, WarpsFor(warp_bytes, experts));
    RouterKernel<T><<<RowBlocks(rows, warps), warps * 32, warps * warp_bytes, Stream(ctx)>>>(
        Data<T>(logits), bias, rows, c, warp_bytes, Data<T>(ctx.output(0)),
        ctx.output(1).data<int64_t>(), load);
    return CheckLaunch("moe.Router");
  });
}

Status RouterGradCuda(KernelContext& ctx) {
  const Tensor& logits = ctx.input(0);
  int64_t experts = logits.dim(-1), rows = experts == 0 ? 0 : logits.numel() / experts;
  WEIR_ASSIGN_OR_RETURN(RouterConfig c, GetConfig(ctx.attrs(), experts));
  if (ctx.input(1).numel() != rows * c.k || ctx.input(2).numel() != rows * c.k) {
    return InvalidArgument("moe.RouterGrad: indices " + ctx.input(1).DebugString() +
                           " and dweights " + ctx.input(2).DebugString() + " do not hold " +
                           std::to_string(c.k) + " slots for each of the " + std::to_string(rows) +
                           " rows of the logits");
  }
  if (rows == 0) return Status();
  return DispatchFloat(logits.dtype(), [&](auto tag) -> Status {
    using T = decltype(tag);
    using A = AccumulatorOf<T>;
    size_t warp_bytes = 2 * static_cast<size_t>(experts) * sizeof(A);
    WEIR_ASSIGN_OR_RETURN(int warps, WarpsFor(warp_bytes, experts));
    RouterGradKernel<T><<<RowBlocks(rows, warps), warps * 32, warps * warp_bytes, Stream(ctx)>>>(
        Data<T>(logits), ctx.input(1).data<int64_t>(), Data<T>(ctx.input(2)), rows, c,
        Data<T>(ctx.output(0)));
    return CheckLaunch("moe.RouterGrad");
  });
}

}  // namespace

void RegisterRouterCuda(Registrar& r) {
  r.Kernel("moe.Router", "cuda", RouterCuda, KernelFloatTypes());
  r.Kernel("moe.RouterGrad", "cuda", RouterGradCuda, KernelFloatTypes());
}

}  // namespace weir::moe
