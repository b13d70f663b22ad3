// moe.Experts, moe.ExpertsGrad and moe.ExpertsWeightGrad on CUDA: permute → grouped GEMM →
// unpermute, as experts/experts.cc computes them (see experts_cuda.h for the plan).
//
// The grouped GEMMs are SIMT tiles (64×64 outputs per block of 256 threads, 4×4 per thread, 16
// deep through shared memory) accumulating in f32 (f64 for f64), so f32 runs in full f32 as on
// the CPU and bf16 rounds only what the CPU rounds: h, dh and the activations the GEMMs read.
// Everything is deterministic: each output is written by one thread, every sum has a fixed order
// (the combine adds a token's slots in slot order, the weight gradients an expert's rows in row
// order), and the permutation is the CPU's stable counting sort.
#include <string>

#include "cuda/common.cuh"
#include "cuda/experts_cuda.h"
#include "cuda/register.h"
#include "weir/cuda_kernel.h"

namespace weir::moe {
namespace cuda_experts {
namespace {

using namespace cuda_detail;
using weir::cuda::Blocks;
using weir::cuda::Check;
using weir::cuda::CheckLaunch;
using weir::cuda::Data;
using weir::cuda::DeviceT;
using weir::cuda::Load;
using weir::cuda::Scratch;
using weir::cuda::Store;
using weir::cuda::Stream;

constexpr int kTileM = 64, kTileN = 64, kTileK = 16, kGemmThreads = 256;
// Slots per chunk of the permutation.
constexpr int kChunk = 1024;
constexpr int64_t kMaxExperts = 12 * 1024;  // a chunk's counters fit in 48 KiB of shared memory

// ---- exclusive scan (i32) -----------------------------------------------------------------

// The exclusive prefix sum over the block of `v`, and the block's total. `shared` holds 33 ints;
// every thread of the block calls it.
__device__ int BlockExclusiveScan(int v, int* shared, int* total) {
  int lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = blockDim.x / 32;
  int inclusive = v;
  for (int o = 1; o < 32; o <<= 1) {
    int t = __shfl_up_sync(kFullMask, inclusive, o);
    if (lane >= o) inclusive += t;
  }
  __syncthreads();  // a previous call may still read `shared`
  if (lane == 31) shared[warp] = inclusive;
  __syncthreads();
  if (warp == 0) {
    int mine = lane < warps ? shared[lane] : 0, running = mine;
    for (int o = 1; o < 32; o <<= 1) {
      int t = __shfl_up_sync(kFullMask, running, o);
      if (lane >= o) running += t;
    }
    if (lane < warps) shared[lane] = running - mine;
    if (lane == 31) shared[32] = running;
  }
  __syncthreads();
  *total = shared[32];
  return shared[warp] + inclusive - v;
}

constexpr int kScanThreads = 256, kScanItems = 4, kScanTile = kScanThreads * kScanItems;

__global__ void ScanTiles(const int* in, int64_t n, int* out, int* tile_sums) {
  __shared__ int shared[33];
  int64_t base = static_cast<int64_t>(blockIdx.x) * kScanTile + threadIdx.x * kScanItems;
  int v[kScanItems], sum = 0;
  for (int q = 0; q < kScanItems; ++q) {
    v[q] = base + q < n ? in[base + q] : 0;
    sum += v[q];
  }
  int total, prefix = BlockExclusiveScan(sum, shared, &total);
  for (int q = 0; q < kScanItems; ++q) {
    if (base + q < n) out[base + q] = prefix;
    prefix += v[q];
  }
  if (threadIdx.x == 0) tile_sums[blockIdx.x] = total;
}

// One block: the tiles' sums scanned in place, and the grand total.
__global__ void ScanTileSums(int* tile_sums, int64_t tiles, int* grand_total) {
  __shared__ int shared[33];
  int carry = 0;
  for (int64_t start = 0; start < tiles; start += blockDim.x) {
    int64_t i = start + threadIdx.x;
    int v = i < tiles ? tile_sums[i] : 0, total;
    int before = BlockExclusiveScan(v, shared, &total);
    if (i < tiles) tile_sums[i] = carry + before;
    carry += total;
  }
  if (threadIdx.x == 0) *grand_total = carry;
}

__global__ void AddTileOffsets(int* out, int64_t n, const int* tile_sums) {
  int64_t base = static_cast<int64_t>(blockIdx.x) * kScanTile + threadIdx.x * kScanItems;
  int add = tile_sums[blockIdx.x];
  for (int q = 0; q < kScanItems; ++q)
    if (base + q < n) out[base + q] += add;
}

// ---- permutation ----------------------------------------------------------------------------

// counts[e · chunks + c]: the slots of chunk c routed to expert e.
__global__ void CountChunks(const int64_t* indices, int64_t slots, int experts, int64_t chunks,
                            int* counts) {
  extern __shared__ int histogram[];
  for (int e = threadIdx.x; e < experts; e += blockDim.x) histogram[e] = 0;
  __syncthreads();
  int64_t begin = static_cast<int64_t>(blockIdx.x) * kChunk, end = min(begin + kChunk, slots);
  for (int64_t s = begin + threadIdx.x; s < end; s += blockDim.x) {
    int64_t e = indices[s];
    if (e >= 0 && e < experts) atomicAdd(histogram + e, 1);
  }
  __syncthreads();
  for (int e = threadIdx.x; e < experts; e += blockDim.x)
    counts[e * chunks + blockIdx.x] = histogram[e];
}

// From the scanned counts (base, E·chunks + 1 entries): offsets[e] = first row of expert e
// (offsets[E] = rows used), and tile_offsets[e] = the GEMMs' first row tile of expert e.
__global__ void ExpertOffsets(const int* base, int experts, int64_t chunks, int* offsets,
                              int* tile_offsets) {
  __shared__ int shared[33];
  for (int e = threadIdx.x; e <= experts; e += blockDim.x) offsets[e] = base[e * chunks];
  int carry = 0;
  for (int start = 0; start < experts; start += blockDim.x) {
    int e = start + threadIdx.x, tiles = 0, total;
    if (e < experts) tiles = (base[(e + 1) * chunks] - base[e * chunks] + kTileM - 1) / kTileM;
    int before = BlockExclusiveScan(tiles, shared, &total);
    if (e < experts) tile_offsets[e] = carry + before;
    carry += total;
  }
  if (threadIdx.x == 0) tile_offsets[experts] = carry;
}

// One warp per chunk, 32 slots at a time in order: each slot goes after the earlier slots of its
// expert (its rank among equal lanes, from __match_any_sync), so the sort is stable.
__global__ void ScatterChunks(const int64_t* indices, int64_t slots, int experts, int64_t chunks,
                              const int* base, int* slot_of_row, int* row_of_slot) {
  extern __shared__ int next_row[];
  int lane = threadIdx.x;
  for (int e = lane; e < experts; e += 32) next_row[e] = base[e * chunks + blockIdx.x];
  __syncwarp();
  int64_t begin = static_cast<int64_t>(blockIdx.x) * kChunk, end = min(begin + kChunk, slots);
  for (int64_t s0 = begin; s0 < end; s0 += 32) {
    int64_t s = s0 + lane;
    int e = -1;
    if (s < end) {
      int64_t v = indices[s];
      e = v >= 0 && v < experts ? static_cast<int>(v) : -1;
    }
    unsigned peers = __match_any_sync(kFullMask, e);
    int rank = __popc(peers & ((1u << lane) - 1u));
    int row = e >= 0 ? next_row[e] + rank : -1;
    __syncwarp();
    if (e >= 0 && rank == 0) next_row[e] += __popc(peers);
    __syncwarp();
    if (s < end) {
      row_of_slot[s] = row;
      if (row >= 0) slot_of_row[row] = static_cast<int>(s);
    }
  }
}

// The (token, slot) pairs sorted stably by expert.
struct Permutation {
  Tensor offsets;       // i32 [E + 1]
  Tensor tile_offsets;  // i32 [E + 1]
  Tensor slot_of_row;   // i32 [S]; rows past offsets[E] unused
  Tensor row_of_slot;   // i32 [S]; -1: an unused slot
  int64_t slots = 0, k = 1, experts = 0;

  // An upper bound of the row tiles: Σ_e ceil(rows_e / kTileM) ≤ S / kTileM + E.
  int64_t MaxTiles() const { return (slots + kTileM - 1) / kTileM + experts; }
  const int* Offsets() const { return offsets.data<int32_t>(); }
  const int* TileOffsets() const { return tile_offsets.data<int32_t>(); }
  const int* SlotOfRow() const { return slot_of_row.data<int32_t>(); }
  const int* RowOfSlot() const { return row_of_slot.data<int32_t>(); }
};

StatusOr<Permutation> Permute(const KernelContext& ctx, const Tensor& indices, int64_t experts) {
  Permutation p;
  p.slots = indices.numel();
  p.k = indices.shape().empty() ? 1 : indices.dim(-1);
  p.experts = experts;
  if (experts < 1 || experts > kMaxExperts) {
    return InvalidArgument("moe.Experts on cuda handles 1 to " + std::to_string(kMaxExperts) +
                           " experts, not " + std::to_string(experts));
  }
  if (p.slots >= (int64_t{1} << 31) - kChunk) {
    return InvalidArgument("moe.Experts on cuda: " + std::to_string(p.slots) +
                           " (token, slot) pairs exceed its 32-bit row numbers");
  }
  cudaStream_t stream = Stream(ctx);
  int e = static_cast<int>(experts);
  WEIR_ASSIGN_OR_RETURN(p.offsets, Scratch(ctx, DT_I32, {experts + 1}));
  WEIR_ASSIGN_OR_RETURN(p.tile_offsets, Scratch(ctx, DT_I32, {experts + 1}));
  WEIR_ASSIGN_OR_RETURN(p.slot_of_row, Scratch(ctx, DT_I32, {p.slots}));
  WEIR_ASSIGN_OR_RETURN(p.row_of_slot, Scratch(ctx, DT_I32, {p.slots}));
  if (p.slots == 0) {  // every expert without rows
    WEIR_RETURN_IF_ERROR(Check(cudaMemsetAsync(p.offsets.raw_data(), 0, p.offsets.nbytes(), stream),
                               "moe.Experts offsets"));
    WEIR_RETURN_IF_ERROR(
        Check(cudaMemsetAsync(p.tile_offsets.raw_data(), 0, p.tile_offsets.nbytes(), stream),
              "moe.Experts tile offsets"));
    return p;
  }
  int64_t chunks = (p.slots + kChunk - 1) / kChunk;
  WEIR_ASSIGN_OR_RETURN(Tensor counts, Scratch(ctx, DT_I32, {experts * chunks}));
  WEIR_ASSIGN_OR_RETURN(Tensor base, Scratch(ctx, DT_I32, {experts * chunks + 1}));
  size_t shared = static_cast<size_t>(experts) * sizeof(int);
  const int64_t* idx = indices.data<int64_t>();
  CountChunks<<<static_cast<unsigned>(chunks), 256, shared, stream>>>(idx, p.slots, e, chunks,
                                                                      counts.data<int32_t>());
  WEIR_RETURN_IF_ERROR(CheckLaunch("moe.Experts count"));
  WEIR_RETURN_IF_ERROR(
      ExclusiveScan(ctx, counts.data<int32_t>(), experts * chunks, base.data<int32_t>()));
  ExpertOffsets<<<1, 1024, 0, stream>>>(base.data<int32_t>(), e, chunks, p.offsets.data<int32_t>(),
                                        p.tile_offsets.data<int32_t>());
  WEIR_RETURN_IF_ERROR(CheckLaunch("moe.Experts offsets"));
  ScatterChunks<<<static_cast<unsigned>(chunks), 32, shared, stream>>>(
      idx, p.slots, e, chunks, base.data<int32_t>(), p.slot_of_row.data<int32_t>(),
      p.row_of_slot.data<int32_t>());
  WEIR_RETURN_IF_ERROR(CheckLaunch("moe.Experts scatter"));
  return p;
}

// ---- grouped GEMMs --------------------------------------------------------------------------

// The rows of a GEMM operand in the permuted order: row r reads source row gather[r] / divisor
// (a slot's token), or row r itself without a gather.
template <typename D>
struct Rows {
  const D* data;
  int64_t ld;
  const int* gather;
  int divisor;

  __device__ const D* Row(int64_t r) const {
    return data + (gather != nullptr ? gather[r] / divisor : r) * ld;
  }
};

template <typename D>
Rows<D> Direct(const D* data, int64_t ld) {
  return {data, ld, nullptr, 1};
}
template <typename D>
Rows<D> Gathered(const D* data, int64_t ld, const Permutation& p) {
  return {data, ld, p.SlotOfRow(), static_cast<int>(p.k)};
}

// One 16-deep step of a 64×64 tile: acc[i][j] += a[·][ty + 16i] · b[·][tx + 16j].
template <typename A>
__device__ __forceinline__ void MultiplyTile(const A (*a)[kTileM + 1], const A (*b)[kTileN + 1],
                                             int tx, int ty, A (&acc)[4][4]) {
#pragma unroll
  for (int kk = 0; kk < kTileK; ++kk) {
    A av[4], bv[4];
#pragma unroll
    for (int i = 0; i < 4; ++i) av[i] = a[kk][ty + 16 * i];
#pragma unroll
    for (int j = 0; j < 4; ++j) bv[j] = b[kk][tx + 16 * j];
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
      for (int j = 0; j < 4; ++j) acc[i][j] += av[i] * bv[j];
  }
}

// C[r, 0:n) (=|+=) A[r, 0:k) · B_e for the rows r of each expert e, B_e = b + e · b_stride:
// B_e(kk, c) = B_e[c · ldb + kk] when kTransB (B_e stored [n, k]), else B_e[kk · ldb + c].
// blockIdx.x: a row tile over all experts (past the last: exit); blockIdx.y: a column tile.
template <typename D, typename A, bool kTransB, typename O>
__global__ void __launch_bounds__(kGemmThreads)
    GroupedRowGemm(const int* offsets, const int* tile_offsets, int experts, Rows<D> a, const D* b,
                   int64_t b_stride, int64_t ldb, O* c, int64_t ldc, int n, int k,
                   bool accumulate) {
  __shared__ A as[kTileK][kTileM + 1];
  __shared__ A bs[kTileK][kTileN + 1];
  int tile = blockIdx.x;
  if (tile >= tile_offsets[experts]) return;
  int lo = 0, hi = experts - 1;  // the last expert whose first tile is at or before this one
  while (lo < hi) {
    int mid = (lo + hi + 1) / 2;
    if (tile_offsets[mid] <= tile)
      lo = mid;
    else
      hi = mid - 1;
  }
  int e = lo;
  int64_t row0 = offsets[e] + static_cast<int64_t>(tile - tile_offsets[e]) * kTileM;
  int rows = static_cast<int>(min(static_cast<int64_t>(kTileM), offsets[e + 1] - row0));
  int col0 = blockIdx.y * kTileN;
  const D* be = b + e * b_stride;
  int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
  // Each thread loads rows ty + 16i of A at depth tx (and of B's columns when transposed).
  const D* a_row[4];
  const D* b_col[4];
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    int r = ty + 16 * i, col = col0 + ty + 16 * i;
    a_row[i] = r < rows ? a.Row(row0 + r) : nullptr;
    b_col[i] = kTransB && col < n ? be + col * ldb : nullptr;
  }
  A acc[4][4] = {};
  for (int k0 = 0; k0 < k; k0 += kTileK) {
    bool in_k = k0 + tx < k;
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      as[tx][ty + 16 * i] = a_row[i] != nullptr && in_k ? A(Load(a_row[i][k0 + tx])) : A(0);
      if constexpr (kTransB) {
        bs[tx][ty + 16 * i] = b_col[i] != nullptr && in_k ? A(Load(b_col[i][k0 + tx])) : A(0);
      } else {
        int kk = threadIdx.x / kTileN + 4 * i, col = threadIdx.x % kTileN;
        bs[kk][col] = k0 + kk < k && col0 + col < n
                          ? A(Load(be[static_cast<int64_t>(k0 + kk) * ldb + col0 + col]))
                          : A(0);
      }
    }
    __syncthreads();
    MultiplyTile<A>(as, bs, tx, ty, acc);
    __syncthreads();
  }
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    int r = ty + 16 * i;
    if (r >= rows) continue;
    O* out = c + (row0 + r) * ldc + col0;
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      int col = tx + 16 * j;
      if (col0 + col >= n) continue;
      A v = acc[i][j];
      if (accumulate) v += A(Load(out[col]));
      out[col] = Store<O>(v);
    }
  }
}

// out_e[m, c] = Σ_r P[r, m] · Q[r, c] over the rows r of expert e (blockIdx.z), in row order:
// the weight gradients. An expert without rows gets zeros.
template <typename D, typename A>
__global__ void __launch_bounds__(kGemmThreads)
    GroupedColGemm(const int* offsets, Rows<D> p, Rows<D> q, D* out, int64_t out_stride,
                   int64_t ldo, int m, int n) {
  __shared__ A ps[kTileK][kTileM + 1];
  __shared__ A qs[kTileK][kTileN + 1];
  int e = blockIdx.z, m0 = blockIdx.y * kTileM, n0 = blockIdx.x * kTileN;
  int64_t begin = offsets[e], end = offsets[e + 1];
  int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
  A acc[4][4] = {};
  for (int64_t r0 = begin; r0 < end; r0 += kTileK) {
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      int rr = threadIdx.x / kTileM + 4 * i, col = threadIdx.x % kTileM;
      bool in_rows = r0 + rr < end;
      ps[rr][col] = in_rows && m0 + col < m ? A(Load(p.Row(r0 + rr)[m0 + col])) : A(0);
      qs[rr][col] = in_rows && n0 + col < n ? A(Load(q.Row(r0 + rr)[n0 + col])) : A(0);
    }
    __syncthreads();
    MultiplyTile<A>(ps, qs, tx, ty, acc);
    __syncthreads();
  }
  D* oe = out + e * out_stride;
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    int row = m0 + ty + 16 * i;
    if (row >= m) continue;
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      int col = n0 + tx + 16 * j;
      if (col < n) oe[static_cast<int64_t>(row) * ldo + col] = Store<D>(acc[i][j]);
    }
  }
}

template <typename D, typename A, bool kTransB, typename O>
Status RowGemm(const KernelContext& ctx, const Permutation& p, Rows<D> a, const D* b,
               int64_t b_stride, int64_t ldb, O* c, int64_t ldc, int64_t n, int64_t k,
               bool accumulate, const char* what) {
  if (n == 0) return Status();
  dim3 grid(static_cast<unsigned>(p.MaxTiles()), static_cast<unsigned>((n + kTileN - 1) / kTileN));
  if (grid.y > 65535) return InvalidArgument(std::string(what) + ": too many columns");
  GroupedRowGemm<D, A, kTransB, O><<<grid, kGemmThreads, 0, Stream(ctx)>>>(
      p.Offsets(), p.TileOffsets(), static_cast<int>(p.experts), a, b, b_stride, ldb, c, ldc,
      static_cast<int>(n), static_cast<int>(k), accumulate);
  return CheckLaunch(what);
}

template <typename D, typename A>
Status ColGemm(const KernelContext& ctx, const Permutation& p, Rows<D> pr, Rows<D> qr, D* out,
               int64_t out_stride, int64_t ldo, int64_t m, int64_t n, const char* what) {
  if (m == 0 || n == 0) return Status();
  dim3 grid(static_cast<unsigned>((n + kTileN - 1) / kTileN),
            static_cast<unsigned>((m + kTileM - 1) / kTileM), static_cast<unsigned>(p.experts));
  if (grid.y > 65535 || grid.z > 65535) return InvalidArgument(std::string(what) + ": too large");
  GroupedColGemm<D, A><<<grid, kGemmThreads, 0, Stream(ctx)>>>(
      p.Offsets(), pr, qr, out, out_stride, ldo, static_cast<int>(m), static_cast<int>(n));
  return CheckLaunch(what);
}

// ---- elementwise steps ----------------------------------------------------------------------

template <typename A>
__device__ __forceinline__ A Sigmoid(A v) {
  return A(1) / (A(1) + Exp(-v));
}

// silu(gate) · up from the stored (rounded) pre-activations, rounded to D: what w2 reads.
template <typename D, typename A>
__device__ __forceinline__ D Activation(D gate, D up) {
  A g = Load(gate);
  return Store<D>(g * Sigmoid(g) * A(Load(up)));
}

// act[r, j] for the used rows r < offsets[E]; with `weights`, times the routing weight of the
// row's slot and rounded again (the input of dw2, as the CPU computes it).
template <typename D, typename A>
__global__ void ActivationKernel(const D* h, const int* offsets, int experts, int64_t slots,
                                 int64_t inter, const D* weights, const int* slot_of_row, D* act) {
  int64_t used = offsets[experts], total = slots * inter;
  for (int64_t q = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; q < total;
       q += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    int64_t r = q / inter, j = q % inter;
    if (r >= used) break;  // rows grow with q
    const D* hr = h + r * 2 * inter;
    D a = Activation<D, A>(hr[j], hr[inter + j]);
    if (weights != nullptr) a = Store<D>(A(Load(weights[slot_of_row[r]])) * A(Load(a)));
    act[q] = a;
  }
}

// Zeros rows [offsets[E], slots) of a [slots, width] matrix: the rows of unused slots.
template <typename D>
__global__ void ZeroUnusedRows(D* data, const int* offsets, int experts, int64_t slots,
                               int64_t width) {
  int64_t begin = static_cast<int64_t>(offsets[experts]) * width, end = slots * width;
  for (int64_t q = begin + blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; q < end;
       q += static_cast<int64_t>(gridDim.x) * blockDim.x)
    data[q] = Store<D>(0.0f);
}

// dst[t, j] = Σ_k scale(t, k) · src[row of (t, k), j], over the slots in order; scale is the
// routing weight, or 1 without weights.
template <typename D, typename A>
__global__ void CombineSlots(const A* src, const int* row_of_slot, const D* weights, int64_t tokens,
                             int64_t k, int64_t width, D* dst) {
  for (int64_t q = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; q < tokens * width;
       q += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    int64_t t = q / width, j = q % width;
    A acc = 0;
    for (int64_t s = t * k; s < (t + 1) * k; ++s) {
      int r = row_of_slot[s];
      if (r < 0) continue;
      A w = weights != nullptr ? A(Load(weights[s])) : A(1);
      acc += w * src[static_cast<int64_t>(r) * width + j];
    }
    dst[q] = Store<D>(acc);
  }
}

// One warp per slot: dh of its row from g = dy · w2[e] (the gradient of the activation before
// the routing weight), and dweights[slot] = g · act; 0 for an unused slot.
template <typename D, typename A>
__global__ void GateUpGrad(const A* g, const D* h, const D* weights, const int* row_of_slot,
                           int64_t slots, int64_t inter, D* dh, D* dweights) {
  int lane = threadIdx.x % 32, warps = blockDim.x / 32;
  for (int64_t s = static_cast<int64_t>(blockIdx.x) * warps + threadIdx.x / 32; s < slots;
       s += static_cast<int64_t>(gridDim.x) * warps) {
    int r = row_of_slot[s];
    if (r < 0) {
      if (lane == 0) dweights[s] = Store<D>(A(0));
      continue;
    }
    const D* hr = h + static_cast<int64_t>(r) * 2 * inter;
    D* dhr = dh + static_cast<int64_t>(r) * 2 * inter;
    const A* gr = g + static_cast<int64_t>(r) * inter;
    A w = Load(weights[s]), dot = 0;
    for (int64_t j = lane; j < inter; j += 32) {
      A gate = Load(hr[j]), up = Load(hr[inter + j]), sig = Sigmoid(gate);
      dot += gr[j] * A(Load(Activation<D, A>(hr[j], hr[inter + j])));
      A da = w * gr[j];
      dhr[j] = Store<D>(da * up * sig * (A(1) + gate * (A(1) - sig)));
      dhr[inter + j] = Store<D>(da * gate * sig);
    }
    dot = WarpSum(dot);
    if (lane == 0) dweights[s] = Store<D>(dot);
  }
}

// ---- the ops' computations ------------------------------------------------------------------

int64_t LeadingCount(const Shape& s) {
  int64_t n = 1;
  for (size_t i = 0; i + 1 < s.size(); ++i) n *= s[i];
  return n;
}

constexpr int kWarpsPerBlock = 8;

unsigned WarpBlocks(int64_t items) {
  return static_cast<unsigned>(
      std::clamp<int64_t>((items + kWarpsPerBlock - 1) / kWarpsPerBlock, 1, 16384));
}

template <typename T>
Status ForwardT(const KernelContext& ctx, const Tensor& x, const Tensor& weights,
                const Tensor& indices, const Tensor& w1, const Tensor& w3, const Tensor& w2,
                const Tensor& y, const Tensor& h) {
  using D = DeviceT<T>;
  using A = AccumulatorOf<T>;
  const int64_t n = LeadingCount(x.shape()), d = x.dim(-1), k = weights.dim(-1),
                experts = w1.dim(0), inter = w1.dim(1), slots = n * k;
  cudaStream_t stream = Stream(ctx);
  if (slots == 0) {
    WEIR_RETURN_IF_ERROR(
        Check(cudaMemsetAsync(y.raw_data(), 0, y.nbytes(), stream), "moe.Experts"));
    return Check(cudaMemsetAsync(h.raw_data(), 0, h.nbytes(), stream), "moe.Experts");
  }
  WEIR_ASSIGN_OR_RETURN(Permutation p, Permute(ctx, indices, experts));
  WEIR_ASSIGN_OR_RETURN(Tensor act, Scratch(ctx, x.dtype(), {slots, inter}));
  WEIR_ASSIGN_OR_RETURN(Tensor out, Scratch(ctx, DataTypeOf<A>(), {slots, d}));
  D* hd = Data<T>(h);
  // h = [x · w1[e]ᵀ | x · w3[e]ᵀ], rounded to T.
  WEIR_RETURN_IF_ERROR(
      (RowGemm<D, A, true, D>(ctx, p, Gathered(Data<T>(x), d, p), Data<T>(w1), inter * d, d, hd,
                              2 * inter, inter, d, false, "moe.Experts gate")));
  WEIR_RETURN_IF_ERROR(
      (RowGemm<D, A, true, D>(ctx, p, Gathered(Data<T>(x), d, p), Data<T>(w3), inter * d, d,
                              hd + inter, 2 * inter, inter, d, false, "moe.Experts up")));
  ActivationKernel<D, A><<<Blocks(slots * inter), 256, 0, stream>>>(
      hd, p.Offsets(), static_cast<int>(experts), slots, inter, nullptr, nullptr, Data<T>(act));
  WEIR_RETURN_IF_ERROR(CheckLaunch("moe.Experts activation"));
  // The experts' outputs, unweighted, in A: act · w2[e]ᵀ.
  WEIR_RETURN_IF_ERROR(
      (RowGemm<D, A, true, A>(ctx, p, Direct(Data<T>(act), inter), Data<T>(w2), d * inter, inter,
                              out.data<A>(), d, d, inter, false, "moe.Experts down")));
  ZeroUnusedRows<D><<<Blocks(slots * 2 * inter), 256, 0, stream>>>(
      hd, p.Offsets(), static_cast<int>(experts), slots, 2 * inter);
  WEIR_RETURN_IF_ERROR(CheckLaunch("moe.Experts unused rows"));
  CombineSlots<D, A><<<Blocks(n * d), 256, 0, stream>>>(out.data<A>(), p.RowOfSlot(),
                                                        Data<T>(weights), n, k, d, Data<T>(y));
  return CheckLaunch("moe.Experts combine");
}

template <typename T>
Status BackwardT(const KernelContext& ctx, const Tensor& weights, const Tensor& indices,
                 const Tensor& w1, const Tensor& w3, const Tensor& w2, const Tensor& h,
                 const Tensor& dy, const Tensor& dx, const Tensor& dweights, const Tensor& dh) {
  using D = DeviceT<T>;
  using A = AccumulatorOf<T>;
  const int64_t n = LeadingCount(dy.shape()), d = dy.dim(-1), k = weights.dim(-1),
                experts = w1.dim(0), inter = w1.dim(1), slots = n * k;
  cudaStream_t stream = Stream(ctx);
  if (slots == 0) {
    WEIR_RETURN_IF_ERROR(
        Check(cudaMemsetAsync(dx.raw_data(), 0, dx.nbytes(), stream), "moe.ExpertsGrad"));
    return Check(cudaMemsetAsync(dweights.raw_data(), 0, dweights.nbytes(), stream),
                 "moe.ExpertsGrad");
  }
  WEIR_ASSIGN_OR_RETURN(Permutation p, Permute(ctx, indices, experts));
  WEIR_ASSIGN_OR_RETURN(Tensor g, Scratch(ctx, DataTypeOf<A>(), {slots, inter}));
  WEIR_ASSIGN_OR_RETURN(Tensor dxp, Scratch(ctx, DataTypeOf<A>(), {slots, d}));
  D* dhd = Data<T>(dh);
  // g = dy · w2[e] (w2[e] is [d, I]).
  WEIR_RETURN_IF_ERROR(
      (RowGemm<D, A, false, A>(ctx, p, Gathered(Data<T>(dy), d, p), Data<T>(w2), d * inter, inter,
                               g.data<A>(), inter, inter, d, false, "moe.ExpertsGrad g")));
  GateUpGrad<D, A><<<WarpBlocks(slots), kWarpsPerBlock * 32, 0, stream>>>(
      g.data<A>(), Data<T>(h), Data<T>(weights), p.RowOfSlot(), slots, inter, dhd,
      Data<T>(dweights));
  WEIR_RETURN_IF_ERROR(CheckLaunch("moe.ExpertsGrad dh"));
  ZeroUnusedRows<D><<<Blocks(slots * 2 * inter), 256, 0, stream>>>(
      dhd, p.Offsets(), static_cast<int>(experts), slots, 2 * inter);
  WEIR_RETURN_IF_ERROR(CheckLaunch("moe.ExpertsGrad unused rows"));
  // dx per row = dgate · w1[e] + dup · w3[e] (w1[e], w3[e] are [I, d]).
  WEIR_RETURN_IF_ERROR(
      (RowGemm<D, A, false, A>(ctx, p, Direct<D>(dhd, 2 * inter), Data<T>(w1), inter * d, d,
                               dxp.data<A>(), d, d, inter, false, "moe.ExpertsGrad dx gate")));
  WEIR_RETURN_IF_ERROR(
      (RowGemm<D, A, false, A>(ctx, p, Direct<D>(dhd + inter, 2 * inter), Data<T>(w3), inter * d, d,
                               dxp.data<A>(), d, d, inter, true, "moe.ExpertsGrad dx up")));
  CombineSlots<D, A><<<Blocks(n * d), 256, 0, stream>>>(dxp.data<A>(), p.RowOfSlot(), nullptr, n, k,
                                                        d, Data<T>(dx));
  return CheckLaunch("moe.ExpertsGrad combine");
}

template <typename T>
Status WeightBackwardT(const KernelContext& ctx, const Tensor& x, const Tensor& weights,
                       const Tensor& indices, const Tensor& h, const Tensor& dh, const Tensor& dy,
                       int64_t experts, void* dw1, void* dw3, void* dw2) {
  using D = DeviceT<T>;
  using A = AccumulatorOf<T>;
  const int64_t n = LeadingCount(x.shape()), d = x.dim(-1), k = weights.dim(-1),
                inter = h.dim(1) / 2, slots = n * k;
  // With no slots every expert has no rows: the GEMMs below write zeros.
  WEIR_ASSIGN_OR_RETURN(Permutation p, Permute(ctx, indices, experts));
  WEIR_ASSIGN_OR_RETURN(Tensor act, Scratch(ctx, x.dtype(), {slots, inter}));
  if (slots > 0) {
    ActivationKernel<D, A><<<Blocks(slots * inter), 256, 0, Stream(ctx)>>>(
        Data<T>(h), p.Offsets(), static_cast<int>(experts), slots, inter, Data<T>(weights),
        p.SlotOfRow(), Data<T>(act));
    WEIR_RETURN_IF_ERROR(CheckLaunch("moe.ExpertsWeightGrad activation"));
  }
  const D* dhd = Data<T>(dh);
  // dw1[e] = dgateᵀ · x, dw3[e] = dupᵀ · x over the expert's rows.
  WEIR_RETURN_IF_ERROR(
      (ColGemm<D, A>(ctx, p, Direct(dhd, 2 * inter), Gathered(Data<T>(x), d, p),
                     static_cast<D*>(dw1), inter * d, d, inter, d, "moe.ExpertsWeightGrad dw1")));
  WEIR_RETURN_IF_ERROR(
      (ColGemm<D, A>(ctx, p, Direct(dhd + inter, 2 * inter), Gathered(Data<T>(x), d, p),
                     static_cast<D*>(dw3), inter * d, d, inter, d, "moe.ExpertsWeightGrad dw3")));
  // dw2[e] = dyᵀ · (weight · act).
  return ColGemm<D, A>(ctx, p, Gathered(Data<T>(dy), d, p), Direct<D>(Data<T>(act), inter),
                       static_cast<D*>(dw2), d * inter, inter, d, inter,
                       "moe.ExpertsWeightGrad dw2");
}

}  // namespace

Status ExclusiveScan(const KernelContext& ctx, const int32_t* in, int64_t n, int32_t* out) {
  cudaStream_t stream = Stream(ctx);
  int64_t tiles = std::max<int64_t>(1, (n + kScanTile - 1) / kScanTile);
  WEIR_ASSIGN_OR_RETURN(Tensor tile_sums, Scratch(ctx, DT_I32, {tiles}));
  int* sums = tile_sums.data<int32_t>();
  ScanTiles<<<static_cast<unsigned>(tiles), kScanThreads, 0, stream>>>(in, n, out, sums);
  WEIR_RETURN_IF_ERROR(CheckLaunch("exclusive scan tiles"));
  ScanTileSums<<<1, 1024, 0, stream>>>(sums, tiles, out + n);
  WEIR_RETURN_IF_ERROR(CheckLaunch("exclusive scan sums"));
  AddTileOffsets<<<static_cast<unsigned>(tiles), kScanThreads, 0, stream>>>(out, n, sums);
  return CheckLaunch("exclusive scan offsets");
}

Status Forward(const KernelContext& ctx, const Tensor& x, const Tensor& weights,
               const Tensor& indices, const Tensor& w1, const Tensor& w3, const Tensor& w2,
               const Tensor& y, const Tensor& h) {
  return DispatchFloat(x.dtype(), [&](auto tag) {
    return ForwardT<decltype(tag)>(ctx, x, weights, indices, w1, w3, w2, y, h);
  });
}

Status Backward(const KernelContext& ctx, const Tensor& weights, const Tensor& indices,
                const Tensor& w1, const Tensor& w3, const Tensor& w2, const Tensor& h,
                const Tensor& dy, const Tensor& dx, const Tensor& dweights, const Tensor& dh) {
  return DispatchFloat(dy.dtype(), [&](auto tag) {
    return BackwardT<decltype(tag)>(ctx, weights, indices, w1, w3, w2, h, dy, dx, dweights, dh);
  });
}

Status WeightBackward(const KernelContext& ctx, const Tensor& x, const Tensor& weights,
                      const Tensor& indices, const Tensor& h, const Tensor& dh, const Tensor& dy,
                      int64_t experts, void* dw1, void* dw3, void* dw2) {
  return DispatchFloat(x.dtype(), [&](auto tag) {
    return WeightBackwardT<decltype(tag)>(ctx, x, weights, indices, h, dh, dy, experts, dw1, dw3,
                                          dw2);
  });
}

}  // namespace cuda_experts

namespace {

// The shapes the CPU kernels check in their shape functions, checked again on the tensors the
// kernels get (cheap, and a mismatch would be an out-of-bounds access on the device).
Status ExpectShape(const char* what, const Tensor& t, DataType dtype, const Shape& want) {
  if (t.dtype() == dtype && t.shape() == want) return Status();
  return InvalidArgument(std::string(what) + " " + t.DebugString() + ": expected " +
                         DataTypeName(dtype) + ShapeString(want));
}

Shape Leading(const Shape& s) { return Shape(s.begin(), s.end() - (s.empty() ? 0 : 1)); }

Status CheckRouting(const Tensor& x, const Tensor& weights, const Tensor& indices) {
  if (x.shape().empty() || weights.shape().empty() ||
      Leading(weights.shape()) != Leading(x.shape()))
    return InvalidArgument("weights " + weights.DebugString() + " do not fit x " + x.DebugString());
  WEIR_RETURN_IF_ERROR(ExpectShape("weights", weights, x.dtype(), weights.shape()));
  return ExpectShape("indices", indices, DT_I64, weights.shape());
}

// Inputs 0 x, 1 weights, 2 indices, 3 w1, 4 w3, 5 w2. Outputs 0 y, 1 h.
Status ExpertsCuda(KernelContext& ctx) {
  const Tensor &x = ctx.input(0), &weights = ctx.input(1), &indices = ctx.input(2),
               &w1 = ctx.input(3);
  WEIR_RETURN_IF_ERROR(CheckRouting(x, weights, indices));
  if (w1.shape().size() != 3)
    return InvalidArgument("w1 " + w1.DebugString() + " is not [E, I, d]");
  int64_t e = w1.dim(0), i = w1.dim(1), d = x.dim(-1);
  WEIR_RETURN_IF_ERROR(ExpectShape("w1", w1, x.dtype(), {e, i, d}));
  WEIR_RETURN_IF_ERROR(ExpectShape("w3", ctx.input(4), x.dtype(), {e, i, d}));
  WEIR_RETURN_IF_ERROR(ExpectShape("w2", ctx.input(5), x.dtype(), {e, d, i}));
  return cuda_experts::Forward(ctx, x, weights, indices, w1, ctx.input(4), ctx.input(5),
                               ctx.output(0), ctx.output(1));
}

// Inputs: weights, indices, w1, w3, w2, h, dy. Outputs: dx, dweights, dh.
Status ExpertsGradCuda(KernelContext& ctx) {
  const Tensor &weights = ctx.input(0), &indices = ctx.input(1), &w1 = ctx.input(2),
               &h = ctx.input(5), &dy = ctx.input(6);
  WEIR_RETURN_IF_ERROR(CheckRouting(dy, weights, indices));
  if (w1.shape().size() != 3)
    return InvalidArgument("w1 " + w1.DebugString() + " is not [E, I, d]");
  int64_t e = w1.dim(0), i = w1.dim(1), d = dy.dim(-1);
  WEIR_RETURN_IF_ERROR(ExpectShape("w1", w1, dy.dtype(), {e, i, d}));
  WEIR_RETURN_IF_ERROR(ExpectShape("w3", ctx.input(3), dy.dtype(), {e, i, d}));
  WEIR_RETURN_IF_ERROR(ExpectShape("w2", ctx.input(4), dy.dtype(), {e, d, i}));
  WEIR_RETURN_IF_ERROR(ExpectShape("h", h, dy.dtype(), {indices.numel(), 2 * i}));
  return cuda_experts::Backward(ctx, weights, indices, w1, ctx.input(3), ctx.input(4), h, dy,
                                ctx.output(0), ctx.output(1), ctx.output(2));
}

// Inputs: x, weights, indices, h, dh, dy. Outputs: dw1, dw3, dw2.
Status ExpertsWeightGradCuda(KernelContext& ctx) {
  const Tensor &x = ctx.input(0), &weights = ctx.input(1), &indices = ctx.input(2),
               &h = ctx.input(3);
  WEIR_RETURN_IF_ERROR(CheckRouting(x, weights, indices));
  if (h.shape().size() != 2 || h.dim(1) % 2 != 0)
    return InvalidArgument("h " + h.DebugString() + " is not [N·K, 2I]");
  int64_t e = ctx.attrs().Int("n_routed_experts"), i = h.dim(1) / 2, d = x.dim(-1);
  WEIR_RETURN_IF_ERROR(ExpectShape("h", h, x.dtype(), {indices.numel(), 2 * i}));
  WEIR_RETURN_IF_ERROR(ExpectShape("dh", ctx.input(4), x.dtype(), {indices.numel(), 2 * i}));
  WEIR_RETURN_IF_ERROR(ExpectShape("dy", ctx.input(5), x.dtype(), x.shape()));
  WEIR_RETURN_IF_ERROR(ExpectShape("dw1", ctx.output(0), x.dtype(), {e, i, d}));
  WEIR_RETURN_IF_ERROR(ExpectShape("dw3", ctx.output(1), x.dtype(), {e, i, d}));
  WEIR_RETURN_IF_ERROR(ExpectShape("dw2", ctx.output(2), x.dtype(), {e, d, i}));
  return cuda_experts::WeightBackward(ctx, x, weights, indices, h, ctx.input(4), ctx.input(5), e,
                                      ctx.output(0).raw_data(), ctx.output(1).raw_data(),
                                      ctx.output(2).raw_data());
}

}  // namespace

void RegisterExpertsCuda(Registrar& r) {
  r.Kernel("moe.Experts", "cuda", ExpertsCuda, KernelFloatTypes());
  r.Kernel("moe.ExpertsGrad", "cuda", ExpertsGradCuda, KernelFloatTypes());
  r.Kernel("moe.ExpertsWeightGrad", "cuda", ExpertsWeightGradCuda, KernelFloatTypes());
}

}  // namespace weir::moe
