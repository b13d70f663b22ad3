// The routed experts on CUDA (DESIGN.md §7; experts/experts.cc describes the computation), as
// host functions over device tensors: moe.Experts' kernels call them on their inputs and
// outputs, moe.ExpertsParallel's on the tokens it received from the other ranks.
//
// Every step stays on the device, with no wait: the (token, slot) pairs are sorted stably by
// expert (per-chunk counts, an exclusive scan, then one warp per chunk that places each pair
// after the earlier pairs of its expert), and the grouped GEMMs read the experts' row offsets
// from device memory: their grid covers an upper bound of the row tiles, and each block finds its
// expert by a binary search over the tile offsets, or exits.
//
// All functions queue work on the kernel's stream and return without waiting. Tensors are dense
// device tensors of the compute dtype (f32, bf16 or f64) unless said otherwise. An index outside
// [0, experts) is treated as -1 (an unused slot): the CPU kernel reports it, which the device
// cannot without a wait.
#pragma once

#include <cstdint>

#include "weir/tensor_op.h"

namespace weir::moe::cuda_experts {

// y [N, d] = Σ_k weights[t, k] · SwiGLU expert e = indices[t, k] of x_t; h [N·K, 2I] the gate and
// up pre-activations, permuted (rows past the used slots are zeros). w1, w3 [E, I, d], w2
// [E, d, I]; indices i64 [N, K].
Status Forward(const KernelContext& ctx, const Tensor& x, const Tensor& weights,
               const Tensor& indices, const Tensor& w1, const Tensor& w3, const Tensor& w2,
               const Tensor& y, const Tensor& h);

// moe.ExpertsGrad: dx [N, d], dweights [N, K] (0 for unused slots) and dh [N·K, 2I].
Status Backward(const KernelContext& ctx, const Tensor& weights, const Tensor& indices,
                const Tensor& w1, const Tensor& w3, const Tensor& w2, const Tensor& h,
                const Tensor& dy, const Tensor& dx, const Tensor& dweights, const Tensor& dh);

// moe.ExpertsWeightGrad: dw1, dw3 [experts, I, d] and dw2 [experts, d, I] at the given device
// pointers (each dense, of x's dtype), zero for experts without rows.
Status WeightBackward(const KernelContext& ctx, const Tensor& x, const Tensor& weights,
                      const Tensor& indices, const Tensor& h, const Tensor& dh, const Tensor& dy,
                      int64_t experts, void* dw1, void* dw3, void* dw2);

// out[0, n] = the exclusive prefix sums of in[0, n) (i32), and out[n] their total.
Status ExclusiveScan(const KernelContext& ctx, const int32_t* in, int64_t n, int32_t* out);

// Expert parallelism's routing (experts.cc's RouteTokens) over G ranks of `per_rank` experts:
// flags [G, N] (i32): whether token t goes to rank j; position [G·N + 1]: its exclusive scan, so
// that row position[j·N + t] of the send buffer holds token t for rank j (by rank, then token).
Status RouteFlags(const KernelContext& ctx, const Tensor& indices, int ranks, int64_t per_rank,
                  int32_t* flags);
// fence[j] = position[j·N] for j ≤ G: the send buffer's rows of rank j are [fence[j],
// fence[j + 1]).
Status RankFences(const KernelContext& ctx, const int32_t* position, int ranks, int64_t tokens,
                  int32_t* fence);
// The send buffer: rows_out [R, w] of x or weights (any dtype, rows of `row_bytes`), and the
// indices as the receiving rank numbers its experts (-1 for another rank's).
Status GatherSendRows(const KernelContext& ctx, const void* rows, int64_t row_bytes,
                      const int32_t* flags, const int32_t* position, int ranks, int64_t tokens,
                      void* rows_out);
Status SendIndices(const KernelContext& ctx, const Tensor& indices, const int32_t* flags,
                   const int32_t* position, int ranks, int64_t per_rank, int64_t* indices_out);
// dst [N, w] = for each token the rows that came back for it ([R, w], in send order), summed over
// the ranks in order in the accumulator type; 0 for a token that went nowhere.
Status CombineRanks(const KernelContext& ctx, const Tensor& back, const int32_t* flags,
                    const int32_t* position, int ranks, int64_t tokens, const Tensor& dst);

}  // namespace weir::moe::cuda_experts
