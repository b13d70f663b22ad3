// The rank-order reduction of the NCCL communicator on the GPU (NcclReduction::kRankOrder): the
// same combination order and accumulators as comm::ReduceInOrder on the host, and the same
// narrowing to bf16 and f16 bit for bit (weir/half.h), so every backend gives the same sums.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "weir/runtime/nccl_communicator.h"

namespace weir {
namespace {

__device__ __forceinline__ float Widen(__nv_bfloat16 v) { return __bfloat162float(v); }
__device__ __forceinline__ float Widen(__half v) { return __half2float(v); }
template <typename T>
__device__ __forceinline__ T Widen(T v) {
  return v;
}

template <typename T, typename A>
__device__ __forceinline__ T Narrow(A v) {
  if constexpr (std::is_same_v<T, __nv_bfloat16>) {
    // weir::bf16(float): round to nearest even, a NaN stays a quiet NaN with its payload.
    const uint32_t u = __float_as_uint(v);
    const uint32_t rounded = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
    const uint32_t quiet_nan = (u >> 16) | 0x40u;
    return __ushort_as_bfloat16(static_cast<unsigned short>(v != v ? quiet_nan : rounded));
  } else if constexpr (std::is_same_v<T, __half>) {
    // weir::f16::FromFloat: IEEE round to nearest even, every NaN 0x7e00.
    return v != v ? __ushort_as_half(static_cast<unsigned short>(0x7e00u)) : __float2half_rn(v);
  } else {
    return v;
  }
}

template <typename A>
__device__ __forceinline__ A Combine(A acc, A x, bool max) {
  if (max) {
    if constexpr (std::is_floating_point_v<A>) {
      // NaN wins whichever rank holds it (as on the host).
      return (isnan(acc) || acc >= x) ? acc : x;
    } else {
      return acc >= x ? acc : x;
    }
  }
  if constexpr (std::is_floating_point_v<A>) {
    return acc + x;
  } else {
    // Integers wrap around, in unsigned arithmetic (signed overflow is undefined).
    using U = std::make_unsigned_t<A>;
    return static_cast<A>(static_cast<U>(acc) + static_cast<U>(x));
  }
}

// A grid-stride loop over the elements; consecutive threads read consecutive elements of each
// part, so every part streams through coalesced.
template <typename T, typename A>
__global__ void ReduceRanksKernel(const T* __restrict__ parts, int64_t stride, int count, int64_t n,
                                  T* __restrict__ out, bool max) {
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += step) {
    A acc = static_cast<A>(Widen(parts[i]));
    for (int r = 1; r < count; ++r) {
      acc =
          Combine<A>(acc, static_cast<A>(Widen(parts[static_cast<int64_t>(r) * stride + i])), max);
    }
    out[i] = Narrow<T, A>(acc);
  }
}

template <typename T, typename A>
Status Launch(ReduceOp op, const void* parts, int64_t stride, int count, int64_t n, void* out,
              cudaStream_t stream) {
  constexpr unsigned kThreads = 256;
  const int64_t blocks = std::clamp<int64_t>((n + kThreads - 1) / kThreads, 1, 8192);
  ReduceRanksKernel<T, A><<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(
      static_cast<const T*>(parts), stride, count, n, static_cast<T*>(out), op == ReduceOp::kMax);
  cudaError_t error = cudaGetLastError();
  if (error != cudaSuccess) {
    return Unavailable(std::string("launching the NCCL communicator's rank-order reduction: ") +
                       cudaGetErrorName(error) + " (" + cudaGetErrorString(error) + ")");
  }
  return Status::Ok();
}

}  // namespace

Status ReduceRanksOnDevice(DataType dtype, ReduceOp op, const void* parts, int64_t stride,
                           int count, int64_t n, void* out, StreamId stream_id) {
  if (count < 1) return InvalidArgument("ReduceRanksOnDevice: no parts to reduce");
  if (n < 0 || stride < n) {
    return InvalidArgument("ReduceRanksOnDevice: " + std::to_string(n) +
                           " elements per part do not fit the stride " + std::to_string(stride));
  }
  if (n == 0) return Status::Ok();
  auto stream = reinterpret_cast<cudaStream_t>(stream_id);
  switch (dtype) {
    case DT_F32:
      return Launch<float, float>(op, parts, stride, count, n, out, stream);
    case DT_F64:
      return Launch<double, double>(op, parts, stride, count, n, out, stream);
    case DT_BF16:
      return Launch<__nv_bfloat16, float>(op, parts, stride, count, n, out, stream);
    case DT_F16:
      return Launch<__half, float>(op, parts, stride, count, n, out, stream);
    case DT_I32:
      return Launch<int32_t, int32_t>(op, parts, stride, count, n, out, stream);
    case DT_I64:
      return Launch<int64_t, int64_t>(op, parts, stride, count, n, out, stream);
    default:
      return InvalidArgument(std::string("ReduceRanksOnDevice: no reduction for ") +
                             DataTypeName(dtype));
  }
}

}  // namespace weir
