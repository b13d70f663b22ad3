// Device helpers the moe plugin's CUDA kernels share: warp and block reductions, exp in the
// accumulator type, and reading a scalar of a runtime dtype.
#pragma once

#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>

#include "weir/cuda_kernel.h"

namespace weir::moe::cuda_detail {

constexpr unsigned kFullMask = 0xffffffffu;

template <typename A>
__device__ __forceinline__ A WarpSum(A v) {
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(kFullMask, v, offset);
  return v;
}

template <typename A>
__device__ __forceinline__ A WarpMax(A v) {
  for (int offset = 16; offset > 0; offset >>= 1) {
    A other = __shfl_xor_sync(kFullMask, v, offset);
    v = other > v ? other : v;
  }
  return v;
}

// The sum over the block, returned to every thread. `shared` holds one A per warp; blockDim.x is
// a multiple of 32. The order is fixed by the launch shape, so the result is deterministic.
template <typename A>
__device__ A BlockSum(A v, A* shared) {
  int lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = blockDim.x / 32;
  v = WarpSum(v);
  __syncthreads();  // `shared` may still be read by a previous call
  if (lane == 0) shared[warp] = v;
  __syncthreads();
  A total = 0;
  for (int w = 0; w < warps; ++w) total += shared[w];
  return total;
}

template <typename A>
__device__ A BlockMax(A v, A* shared) {
  int lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = blockDim.x / 32;
  v = WarpMax(v);
  __syncthreads();
  if (lane == 0) shared[warp] = v;
  __syncthreads();
  A best = shared[0];
  for (int w = 1; w < warps; ++w) best = shared[w] > best ? shared[w] : best;
  return best;
}

__device__ __forceinline__ float Exp(float x) { return expf(x); }
__device__ __forceinline__ double Exp(double x) { return exp(x); }

// A scalar of dtype f32, f64 or bf16 (a loss gradient's seed) as double.
__device__ __forceinline__ double ScalarAsDouble(const void* p, DataType dtype) {
  if (dtype == DT_F64) return *static_cast<const double*>(p);
  if (dtype == DT_BF16) return __bfloat162float(*static_cast<const __nv_bfloat16*>(p));
  return *static_cast<const float*>(p);
}

}  // namespace weir::moe::cuda_detail
