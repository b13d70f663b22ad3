// What an op's CUDA kernels use (DESIGN.md §7): the stream and scratch memory of the run, launch
// checks, dtype dispatch, the device element types, and warp and block reductions. Plugins
// compile their .cu files only when weir is built with CUDA (WEIR_HAVE_CUDA), register those
// kernels with Registrar::Kernel(op, "cuda", fn, dtypes), and link weir::cuda.
//
// A CUDA kernel function runs on the host: it checks shapes, then queues device work on
// Stream(ctx) and returns without waiting. Its inputs and outputs are dense device tensors (the
// program keeps every value contiguous); temporaries come from Scratch(ctx, ...), which may be
// dropped as soon as the work using them is queued.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <type_traits>

#include "weir/dispatch.h"
#include "weir/tensor_op.h"

namespace weir::cuda {

// The CUDA runtime's error as a Status naming `what` (OK for cudaSuccess).
Status Check(cudaError_t error, const char* what);
// The error of the last launch (cudaGetLastError), naming the kernel.
Status CheckLaunch(const char* kernel);

inline cudaStream_t Stream(const KernelContext& ctx) {
  return ctx.device() == nullptr ? nullptr : reinterpret_cast<cudaStream_t>(ctx.device()->stream());
}

inline StatusOr<Tensor> Scratch(const KernelContext& ctx, DataType dtype, const Shape& shape) {
  if (ctx.device() == nullptr) return Internal("a CUDA kernel ran without its device context");
  return ctx.device()->Empty(dtype, shape);
}

// Blocks of `threads` for a grid-stride loop over `n` items: enough to fill an H200 several
// times over, each thread striding over the rest.
inline unsigned Blocks(int64_t n, unsigned threads = 256) {
  int64_t blocks = (n + threads - 1) / threads;
  return static_cast<unsigned>(std::clamp<int64_t>(blocks, 1, 8192));
}

// The device type that stores weir's host type T: bf16 is __nv_bfloat16, f16 is __half.
template <typename T>
struct DeviceTypeOf {
  using type = T;
};
template <>
struct DeviceTypeOf<bf16> {
  using type = __nv_bfloat16;
};
template <>
struct DeviceTypeOf<f16> {
  using type = __half;
};
template <typename T>
using DeviceT = typename DeviceTypeOf<T>::type;

// A device pointer to a tensor's elements as the device type of T.
template <typename T>
DeviceT<T>* Data(const Tensor& t) {
  return reinterpret_cast<DeviceT<T>*>(t.data<T>());
}

#ifdef __CUDACC__
// Loads widen to the accumulator (float, or double for f64); stores round to nearest even.
__device__ __forceinline__ float Load(const __nv_bfloat16& v) { return __bfloat162float(v); }
__device__ __forceinline__ float Load(const __half& v) { return __half2float(v); }
__device__ __forceinline__ float Load(const float& v) { return v; }
__device__ __forceinline__ double Load(const double& v) { return v; }
template <typename D>
__device__ __forceinline__ D Store(float v) {
  if constexpr (std::is_same_v<D, __nv_bfloat16>)
    return __float2bfloat16_rn(v);
  else if constexpr (std::is_same_v<D, __half>)
    return __float2half_rn(v);
  else
    return static_cast<D>(v);
}
template <typename D>
__device__ __forceinline__ D Store(double v) {
  if constexpr (std::is_same_v<D, double>)
    return v;
  else
    return Store<D>(static_cast<float>(v));
}

__device__ __forceinline__ float Exp(float x) { return expf(x); }
__device__ __forceinline__ double Exp(double x) { return exp(x); }

template <typename A>
__device__ __forceinline__ A Infinity() {
  return static_cast<A>(INFINITY);
}
// What a kernel writes where it cannot report an error without a wait (a bad id, a bad block).
template <typename A>
__device__ __forceinline__ A QuietNaN() {
  if constexpr (std::is_same_v<A, double>)
    return nan("");
  else
    return nanf("");
}

constexpr unsigned kFullMask = 0xffffffffu;  // every lane of a warp

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

// The sum (max) over the block, returned to every thread, which must all call it. `shared` holds
// one A per warp; blockDim.x is a multiple of 32. The order is fixed by the launch shape, so the
// result is deterministic.
template <typename A>
__device__ A BlockSum(A v, A* shared) {
  int lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = blockDim.x / 32;
  v = WarpSum(v);
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
  v = WarpMax(v);
  __syncthreads();
  if (lane == 0) shared[warp] = v;
  __syncthreads();
  A best = shared[0];
  for (int w = 1; w < warps; ++w) best = shared[w] > best ? shared[w] : best;
  return best;
}
#endif

}  // namespace weir::cuda
