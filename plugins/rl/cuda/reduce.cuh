// Block-wide reductions for the rl plugin's CUDA kernels.
#pragma once

#include <cuda_runtime.h>

namespace weir::rl::cuda_detail {

constexpr unsigned kFullMask = 0xffffffffu;

// The sum or max over the block, returned to every thread. `shared` holds one A per warp;
// blockDim.x is a multiple of 32; every thread of the block calls it. The order is fixed by the
// launch shape, so results are deterministic.
template <typename A>
__device__ A BlockSum(A v, A* shared) {
  int lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = blockDim.x / 32;
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(kFullMask, v, offset);
  __syncthreads();  // a previous call may still read `shared`
  if (lane == 0) shared[warp] = v;
  __syncthreads();
  A total = 0;
  for (int w = 0; w < warps; ++w) total += shared[w];
  return total;
}

template <typename A>
__device__ A BlockMax(A v, A* shared) {
  int lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = blockDim.x / 32;
  for (int offset = 16; offset > 0; offset >>= 1) {
    A other = __shfl_xor_sync(kFullMask, v, offset);
    v = other > v ? other : v;
  }
  __syncthreads();
  if (lane == 0) shared[warp] = v;
  __syncthreads();
  A best = shared[0];
  for (int w = 1; w < warps; ++w) best = shared[w] > best ? shared[w] : best;
  return best;
}

}  // namespace weir::rl::cuda_detail
