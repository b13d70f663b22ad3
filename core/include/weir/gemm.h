// Matrix multiplication for CPU kernels, through oneDNN's matmul (the only library on Debian 12
// that reaches the AMX bf16 units). Primitives are created once per shape and cached.
//
// Row-major. C = op(A) · op(B), op = transpose when asked:
//   A: [..., M, K] (or [..., K, M] transposed), B: [..., K, N] (or [..., N, K] transposed),
//   C: [..., M, N]. Leading (batch) dims of A and B must be equal, or B may have none (a weight
//   shared across the batch). f32 and bf16 (bf16 accumulates in f32 inside oneDNN); f64, which
//   only gradient checks use, runs a plain loop because oneDNN has no f64 matmul on CPU.
#pragma once

#include "weir/status.h"
#include "weir/tensor.h"

namespace weir {

// Writes C (contiguous, preallocated). With accumulate, adds to C instead of overwriting it.
Status Gemm(const Tensor& a, bool transpose_a, const Tensor& b, bool transpose_b, Tensor& c,
            bool accumulate = false);

// The output shape of Gemm, or an error naming both shapes.
StatusOr<Shape> GemmShape(const Shape& a, bool transpose_a, const Shape& b, bool transpose_b);

}  // namespace weir
