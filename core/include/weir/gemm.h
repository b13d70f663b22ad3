// Matrix multiplication for CPU kernels, through oneDNN's matmul (the only library on Debian 12
// that reaches the AMX bf16 units). Primitives are created once per shape and cached.
//
// Row-major. C = op(A) · op(B), op = transpose when asked:
//   A: [..., M, K] (or [..., K, M] transposed), B: [..., K, N] (or [..., N, K] transposed),
//   C: [..., M, N]. Leading (batch) dims of A and B must be equal, or B may have none (a weight
//   shared across the batch). f32 and bf16 (bf16 accumulates in f32 inside oneDNN); f64, which
//   only gradient checks use, runs a plain loop because oneDNN has no f64 matmul on CPU.
//   Matrix-vector products (M = 1, batch-1 decoding) in f32 and bf16 run weir's own loops
//   instead, bound by streaming B: each output one f32 sum in a fixed order on any thread count.
#pragma once

#include "weir/status.h"
#include "weir/tensor.h"

namespace weir {

// Writes C (contiguous, preallocated). With accumulate, adds to C instead of overwriting it.
Status Gemm(const Tensor& a, bool transpose_a, const Tensor& b, bool transpose_b, Tensor& c,
            bool accumulate = false);

// The output shape of Gemm, or an error naming both shapes.
StatusOr<Shape> GemmShape(const Shape& a, bool transpose_a, const Shape& b, bool transpose_b);

// One matrix inside a larger buffer, for kernels that multiply blocks of their tensors in place
// (a head of a [batch, time, heads, d] tensor is rows of `d` with leading dimension heads·d).
// Row-major: element (i, j) of the stored matrix is at data[i·ld + j]; `transposed` means the
// product uses the stored matrix's transpose.
struct MatrixRef {
  const void* data;
  int64_t ld;
  bool transposed = false;
};

// C[m, n] (leading dimension ldc, of type c_type) = op(A)[m, k] · op(B)[k, n], or C += ... with
// accumulate. A and B have type ab_type; c_type is the same or f32 (bf16 inputs, f32 result).
// f64 runs a plain loop.
Status GemmBlock(DataType ab_type, DataType c_type, int64_t m, int64_t n, int64_t k, MatrixRef a,
                 MatrixRef b, void* c, int64_t ldc, bool accumulate = false);

// The instruction sets of the bf16 matrix-vector loops (M = 1), best last. LimitGemvIsa caps what
// they may use, for tests that check the fallbacks on a CPU that has the best; the default is
// whatever the CPU has.
enum class GemvIsa { kPlain, kAvx2, kAvx512, kAvx512Bf16 };
void LimitGemvIsa(GemvIsa isa);

// Makes the GEMMs of the calling thread single-threaded while it lives. Kernels that already
// split their work over TBB threads use it so oneDNN's OpenMP team does not fight TBB for the
// cores. Primitives are cached per thread count, so a given thread count always computes the
// same bits, whichever thread runs the product and whatever ran before.
class SingleThreadedGemms {
 public:
  SingleThreadedGemms();
  ~SingleThreadedGemms();
  SingleThreadedGemms(const SingleThreadedGemms&) = delete;
  SingleThreadedGemms& operator=(const SingleThreadedGemms&) = delete;

 private:
  int saved_;
};

}  // namespace weir
