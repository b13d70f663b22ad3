// Expert parallelism's dispatch and combine on the device (experts.cc's RouteTokens, GatherRows
// and CombineRows): which ranks each token goes to, the send buffers in the CPU's order (by
// destination rank, then token), and the sum over the ranks of what came back.
#include "cuda/common.cuh"
#include "cuda/experts_cuda.h"
#include "weir/cuda_kernel.h"

namespace weir::moe::cuda_experts {
namespace {

using weir::cuda::Blocks;
using weir::cuda::CheckLaunch;
using weir::cuda::Data;
using weir::cuda::DeviceT;
using weir::cuda::Load;
using weir::cuda::Store;
using weir::cuda::Stream;

// flags[j · N + t] = 1 when one of token t's experts lives on rank j (indices outside
// [0, G · per_rank) are skipped).
__global__ void RouteFlagsKernel(const int64_t* indices, int64_t tokens, int64_t k, int ranks,
                                 int64_t per_rank, int* flags) {
  for (int64_t q = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; q < tokens * ranks;
       q += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    int64_t j = q / tokens, t = q % tokens;
    int flag = 0;
    for (int64_t s = t * k; s < (t + 1) * k; ++s) {
      int64_t e = indices[s];
      if (e >= 0 && e < ranks * per_rank && e / per_rank == j) flag = 1;
    }
    flags[q] = flag;
  }
}

__global__ void RankFencesKernel(const int* position, int ranks, int64_t tokens, int* fence) {
  int j = threadIdx.x;
  if (j <= ranks) fence[j] = position[j * tokens];
}

// Row position[j·N + t] of the send buffer = row t of `rows`, copied in units of U.
template <typename U>
__global__ void GatherSendRowsKernel(const U* rows, int64_t units, const int* flags,
                                     const int* position, int ranks, int64_t tokens, U* out) {
  for (int64_t q = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
       q < ranks * tokens * units; q += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    int64_t pair = q / units, u = q % units;  // pair = j · N + t
    if (!flags[pair]) continue;
    out[static_cast<int64_t>(position[pair]) * units + u] = rows[(pair % tokens) * units + u];
  }
}

// The indices of the sent rows as their rank numbers its experts: e − j · per_rank for rank j's
// experts, -1 for the others.
__global__ void SendIndicesKernel(const int64_t* indices, int64_t k, const int* flags,
                                  const int* position, int ranks, int64_t tokens, int64_t per_rank,
                                  int64_t* out) {
  for (int64_t q = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
       q < ranks * tokens * k; q += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    int64_t pair = q / k, slot = q % k, j = pair / tokens, t = pair % tokens;
    if (!flags[pair]) continue;
    int64_t e = indices[t * k + slot];
    bool mine = e >= 0 && e < ranks * per_rank && e / per_rank == j;
    out[static_cast<int64_t>(position[pair]) * k + slot] = mine ? e - j * per_rank : -1;
  }
}

template <typename D, typename A>
__global__ void CombineRanksKernel(const D* back, const int* flags, const int* position, int ranks,
                                   int64_t tokens, int64_t width, D* dst) {
  for (int64_t q = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; q < tokens * width;
       q += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    int64_t t = q / width, c = q % width;
    A acc = 0;
    for (int j = 0; j < ranks; ++j) {
      int64_t pair = j * tokens + t;
      if (flags[pair]) acc += A(Load(back[static_cast<int64_t>(position[pair]) * width + c]));
    }
    dst[q] = Store<D>(acc);
  }
}

}  // namespace

Status RouteFlags(const KernelContext& ctx, const Tensor& indices, int ranks, int64_t per_rank,
                  int32_t* flags) {
  int64_t k = indices.shape().empty() ? 1 : indices.dim(-1);
  int64_t tokens = k == 0 ? 0 : indices.numel() / k;
  if (tokens == 0) return Status();
  RouteFlagsKernel<<<Blocks(tokens * ranks), 256, 0, Stream(ctx)>>>(indices.data<int64_t>(), tokens,
                                                                    k, ranks, per_rank, flags);
  return CheckLaunch("moe.ExpertsParallel route");
}

Status RankFences(const KernelContext& ctx, const int32_t* position, int ranks, int64_t tokens,
                  int32_t* fence) {
  if (ranks + 1 > 1024) return InvalidArgument("moe.ExpertsParallel: more than 1023 ranks");
  RankFencesKernel<<<1, 1024, 0, Stream(ctx)>>>(position, ranks, tokens, fence);
  return CheckLaunch("moe.ExpertsParallel fences");
}

Status GatherSendRows(const KernelContext& ctx, const void* rows, int64_t row_bytes,
                      const int32_t* flags, const int32_t* position, int ranks, int64_t tokens,
                      void* rows_out) {
  int64_t pairs = ranks * tokens;
  if (pairs == 0 || row_bytes == 0) return Status();
  cudaStream_t stream = Stream(ctx);
  // The widest unit that divides a row (and the pointers, which the allocator aligns).
  if (row_bytes % 8 == 0) {
    int64_t units = row_bytes / 8;
    GatherSendRowsKernel<<<Blocks(pairs * units), 256, 0, stream>>>(
        static_cast<const uint64_t*>(rows), units, flags, position, ranks, tokens,
        static_cast<uint64_t*>(rows_out));
  } else if (row_bytes % 4 == 0) {
    int64_t units = row_bytes / 4;
    GatherSendRowsKernel<<<Blocks(pairs * units), 256, 0, stream>>>(
        static_cast<const uint32_t*>(rows), units, flags, position, ranks, tokens,
        static_cast<uint32_t*>(rows_out));
  } else {
    int64_t units = row_bytes / 2;
    GatherSendRowsKernel<<<Blocks(pairs * units), 256, 0, stream>>>(
        static_cast<const uint16_t*>(rows), units, flags, position, ranks, tokens,
        static_cast<uint16_t*>(rows_out));
  }
  return CheckLaunch("moe.ExpertsParallel gather");
}

Status SendIndices(const KernelContext& ctx, const Tensor& indices, const int32_t* flags,
                   const int32_t* position, int ranks, int64_t per_rank, int64_t* indices_out) {
  int64_t k = indices.shape().empty() ? 1 : indices.dim(-1);
  int64_t tokens = k == 0 ? 0 : indices.numel() / k;
  if (tokens == 0 || k == 0) return Status();
  SendIndicesKernel<<<Blocks(ranks * tokens * k), 256, 0, Stream(ctx)>>>(
      indices.data<int64_t>(), k, flags, position, ranks, tokens, per_rank, indices_out);
  return CheckLaunch("moe.ExpertsParallel indices");
}

Status CombineRanks(const KernelContext& ctx, const Tensor& back, const int32_t* flags,
                    const int32_t* position, int ranks, int64_t tokens, const Tensor& dst) {
  int64_t width = tokens == 0 ? 0 : dst.numel() / tokens;
  if (tokens * width == 0) return Status();
  return DispatchFloat(dst.dtype(), [&](auto tag) {
    using T = decltype(tag);
    CombineRanksKernel<DeviceT<T>, AccumulatorOf<T>>
        <<<Blocks(tokens * width), 256, 0, Stream(ctx)>>>(Data<T>(back), flags, position, ranks,
                                                          tokens, width, Data<T>(dst));
    return CheckLaunch("moe.ExpertsParallel combine");
  });
}

}  // namespace weir::moe::cuda_experts
