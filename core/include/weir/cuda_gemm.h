// GEMMs on the GPU through cuBLASLt (DESIGN.md §7), for every op that multiplies matrices:
// nn.MatMul, nn.Linear, the MoE experts, attention projections. Row-major, like weir's tensors.
//
//   C[b] = alpha · op(A[b]) · op(B[b]) + beta · C[b]    for b < batch
//
// op(A) is [m, k]: A is stored [m, k] (lda ≥ k), or [k, m] when trans_a (lda ≥ m); op(B) is
// [k, n]: B is [k, n] (ldb ≥ n), or [n, k] when trans_b. C is [m, n] (ldc ≥ n). Strides and
// leading dimensions are in elements; a stride of 0 shares one matrix across the batch, and
// strides smaller than a matrix interleave the batch (the heads of a [rows, heads, d] tensor:
// stride d, ld heads·d). bf16 and f32 inputs accumulate in f32 (f32 with full f32 precision: no
// TF32), f64 in f64; C may be f32 for bf16 inputs. k = 0 writes zeros (beta must then be 0).
#pragma once

#include <cstdint>

#include "weir/tensor_op.h"

namespace weir::cuda {

struct GemmArgs {
  DataType type = DT_F32;    // of A and B
  DataType c_type = DT_F32;  // of C: `type`, or f32 for bf16 inputs
  int64_t m = 0, n = 0, k = 0;
  bool trans_a = false, trans_b = false;
  const void* a = nullptr;
  int64_t lda = 0, stride_a = 0;
  const void* b = nullptr;
  int64_t ldb = 0, stride_b = 0;
  void* c = nullptr;
  int64_t ldc = 0, stride_c = 0;
  int64_t batch = 1;
  double alpha = 1, beta = 0;
};

// Queues the GEMM on the kernel's stream; its workspace comes from the kernel's scratch memory.
// One cuBLASLt handle per device and thread, and per thread a cache of the descriptors and
// heuristic choice for each shape, type, layout and pointer alignment. Makes the context's
// device current (cudaSetDevice). Bad arguments are an InvalidArgument naming the shape.
Status Gemm(const KernelContext& ctx, const GemmArgs& args);

// FP8 e4m3 GEMM with DeepSeek-V3's fine-grained scaling (spec deepseek.md §6): A [m, k] in 1×128
// tiles along k (scales [m, k/128], f32), B stored [n, k] in 128×128 blocks (scales
// [ceil(n/128), k/128], f32; a last partial block of rows has its own scale); C = A · Bᵀ, dense
// [m, n], in bf16 or f32, dequantized inside the GEMM: each 128-wide slice of k is summed in f32
// and added to the f32 total times a_scale · b_scale. k must be a multiple of 128; A and B must
// be 16-byte aligned.
struct Fp8GemmArgs {
  int64_t m = 0, n = 0, k = 0;
  const void* a = nullptr;  // e4m3 [m, k]
  const float* a_scales = nullptr;
  const void* b = nullptr;  // e4m3 [n, k]
  const float* b_scales = nullptr;
  void* c = nullptr;  // [m, n]
  DataType c_type = DT_BF16;
};
Status GemmFp8BlockScaled(const KernelContext& ctx, const Fp8GemmArgs& args);

// Quantizes x [..., k] (bf16 or f32; rows = the product of the leading dims) to e4m3 in 1×128
// tiles: s = max(amax, 1e-4) / 448, q = x / s rounded to nearest even (saturating at ±448);
// writes q [rows, k] and s [rows, ceil(k/128)] (a last partial tile has its own scale).
Status QuantizeFp8Tiles(const KernelContext& ctx, const Tensor& x, void* q, float* scales);

}  // namespace weir::cuda
