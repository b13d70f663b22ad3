// Device helpers the moe plugin's CUDA kernels share: weir's warp and block reductions and exp
// (weir/cuda_kernel.h), and reading a scalar of a runtime dtype.
#pragma once

#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>

#include "weir/cuda_kernel.h"

namespace weir::moe::cuda_detail {

using weir::cuda::BlockMax;
using weir::cuda::BlockSum;
using weir::cuda::Exp;
using weir::cuda::kFullMask;
using weir::cuda::WarpMax;
using weir::cuda::WarpSum;

// A scalar of dtype f32, f64 or bf16 (a loss gradient's seed) as double.
__device__ __forceinline__ double ScalarAsDouble(const void* p, DataType dtype) {
  if (dtype == DT_F64) return *static_cast<const double*>(p);
  if (dtype == DT_BF16) return __bfloat162float(*static_cast<const __nv_bfloat16*>(p));
  return *static_cast<const float*>(p);
}

}  // namespace weir::moe::cuda_detail
