// nn.Attention and nn.AttentionGrad on CUDA, FlashAttention-2 style: the [time, keys] score
// matrix never exists; each thread block keeps a tile of scores on chip, with an online softmax
// in the forward pass and probabilities recomputed from the saved log-sum-exp in the backward
// pass. The kernels use CUDA cores (no tensor cores): shared-memory tiles, register blocking and
// warp-shuffle row reductions, math in f32 for f32 and bf16 and in f64 for f64.
//
// Semantics are the CPU kernel's (plugins/nn/attention/attention.cc), down to where it rounds:
//  - Query t sees keys [Begin(t), End(t)): Begin is the start of t's segment (0 without
//    segments); End is t + (keys - time) + 1 when causal (the last query sees the last key, so a
//    cached prefix is visible to every query), else the end of t's segment (keys without them).
//    A query that sees no key (causal, fewer keys than queries) gets o = 0 and lse = −∞.
//  - The forward pass rounds each probability to the input type (bf16) before it multiplies v,
//    relative to the running maximum of the CPU's blocks: key blocks of 256 starting at the Begin
//    of the first query of the CPU's 128-query block. The kernel walks the same 256-key blocks,
//    so bf16 results round exactly where the CPU's do (other blockings differ by a bf16 rounding
//    per probability, which exceeds a 2e-2 relative tolerance on outputs near zero).
//  - The backward pass rounds p and ds = p·(dp − delta)·scale to the input type before their
//    products, accumulates dq, dk and dv in f32 (f64) and rounds once at the end.
//  - exp for f32 is the CPU's own polynomial (FastExp), and delta is summed in the CPU's order,
//    so that given the same scores the probabilities, and their bf16 roundings, agree bitwise.
//
// Backward: delta = rowsum(do ⊙ o) first (a scratch buffer); then one kernel per key tile
// accumulates dk and dv in registers over every query tile (and every query head of a kv-head
// group) that sees it, and a second kernel per query tile accumulates dq over the key tiles it
// sees. Recomputing the scores in both costs more arithmetic than FlashAttention-2's dq atomics,
// but dq needs no f32 copy and every result is deterministic.
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <type_traits>

#include "weir/cuda_kernel.h"

namespace weir::nn {
namespace {

using cuda::Load;
using cuda::Store;

// Every kernel runs 8 warps.
constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
// The CPU kernel's blocks (kQueryBlock and kKeyBlock in attention.cc): the forward pass follows
// them to round probabilities exactly as the CPU does. Change them together.
constexpr int kCpuQueryBlock = 128;
constexpr int kCpuKeyBlock = 256;
// The largest head dims (d and dv): the accumulators of one row live in registers, 32 columns
// per lane chunk.
constexpr int kMaxHeadDim = 256;

// Floats (doubles) of padding that keep rows of a transposed tile 16-byte aligned for vector
// loads.
template <typename A>
constexpr int kVecPad = 16 / static_cast<int>(sizeof(A));

// The problem, as the kernels see it. Positions fit in int (checked on the host); element offsets
// are computed in int64_t.
template <typename A>
struct Geometry {
  int batch, time, keys, heads, kv_heads, d, dv;
  bool causal;
  A scale;
  const int64_t* segments;  // [batch, time], or null
};

// Rounding to nearest that the compiler must not fuse into an FMA: the CPU computes
// s·scale − m as two roundings, and so do these.
__device__ __forceinline__ float MulRn(float a, float b) { return __fmul_rn(a, b); }
__device__ __forceinline__ double MulRn(double a, double b) { return __dmul_rn(a, b); }
__device__ __forceinline__ float SubRn(float a, float b) { return __fsub_rn(a, b); }
__device__ __forceinline__ double SubRn(double a, double b) { return __dsub_rn(a, b); }
// The CPU's exp (weir::FastExp in vec_math.h, the Cephes polynomial) for float, operation by
// operation, with the multiply-adds GCC contracts into FMAs there (C++ allows contraction and
// the build targets the host CPU), so a probability rounds to bf16 as it does on the CPU.
__device__ __forceinline__ float ExpA(float x) {
  constexpr float kMax = 88.3762626647949f, kMin = -87.3365447504019f;
  const float clamped = fminf(fmaxf(x, kMin), kMax);
  constexpr float kRound = 12582912.0f;  // 1.5·2^23: adding and subtracting it rounds to integer
  const float n = __fsub_rn(__fmaf_rn(clamped, 1.44269504088896341f, kRound), kRound);
  const float r = __fmaf_rn(n, 2.12194440e-4f, __fmaf_rn(-n, 0.693359375f, clamped));
  float p = 1.9875691500e-4f;
  p = __fmaf_rn(p, r, 1.3981999507e-3f);
  p = __fmaf_rn(p, r, 8.3334519073e-3f);
  p = __fmaf_rn(p, r, 4.1665795894e-2f);
  p = __fmaf_rn(p, r, 1.6666665459e-1f);
  p = __fmaf_rn(p, r, 5.0000001201e-1f);
  p = __fadd_rn(__fmaf_rn(__fmul_rn(p, r), r, r), 1.0f);
  float y = __fmul_rn(p, __int_as_float((static_cast<int>(n) + 127) << 23));
  y = x < kMin ? 0.0f : y;  // underflow (and −∞, a masked score) is exactly 0
  y = x > kMax ? INFINITY : y;
  return x != x ? x : y;  // NaN stays NaN
}
__device__ __forceinline__ double ExpA(double x) { return exp(x); }  // std::exp on the CPU
__device__ __forceinline__ float LogA(float x) { return logf(x); }
__device__ __forceinline__ double LogA(double x) { return log(x); }
template <typename A>
__device__ __forceinline__ A NegInf() {
  return -static_cast<A>(INFINITY);
}
template <typename A>
__device__ __forceinline__ A MaxA(A a, A b) {
  return a < b ? b : a;  // std::max's choice, as the CPU's RowMax makes it
}

// v rounded to the storage type D and widened back: the CPU's Narrow<T> of a probability.
template <typename D, typename A>
__device__ __forceinline__ A RoundTo(A v) {
  return static_cast<A>(Load(Store<D>(v)));
}

template <typename A>
__device__ __forceinline__ A WarpMax(A v) {
#pragma unroll
  for (int offset = 16; offset > 0; offset /= 2)
    v = MaxA(v, __shfl_xor_sync(0xffffffffu, v, offset));
  return v;
}

template <typename A>
__device__ __forceinline__ A WarpSum(A v) {
#pragma unroll
  for (int offset = 16; offset > 0; offset /= 2) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

// N consecutive values from 16-byte aligned shared memory, 16 bytes per load.
template <int N, typename A>
__device__ __forceinline__ void LoadVec(const A* p, A (&out)[N]) {
  static_assert((N * sizeof(A)) % 16 == 0, "vector loads move 16 bytes");
  if constexpr (std::is_same_v<A, float>) {
#pragma unroll
    for (int i = 0; i < N / 4; ++i) {
      float4 x = reinterpret_cast<const float4*>(p)[i];
      out[4 * i] = x.x;
      out[4 * i + 1] = x.y;
      out[4 * i + 2] = x.z;
      out[4 * i + 3] = x.w;
    }
  } else {
#pragma unroll
    for (int i = 0; i < N / 2; ++i) {
      double2 x = reinterpret_cast<const double2*>(p)[i];
      out[2 * i] = x.x;
      out[2 * i + 1] = x.y;
    }
  }
}

// The first key query t of row b sees: the start of its segment. Segments never decrease along
// time, so that is the first position whose id is not below t's (a binary search; with ids that
// do decrease, which the CPU rejects, it still returns a position in [0, t]).
template <typename A>
__device__ int RowBegin(const Geometry<A>& g, int b, int t) {
  if (g.segments == nullptr) return 0;
  const int64_t* ids = g.segments + static_cast<int64_t>(b) * g.time;
  const int64_t id = ids[t];
  int lo = 0, hi = t;
  while (lo < hi) {
    int mid = lo + (hi - lo) / 2;
    if (ids[mid] < id)
      lo = mid + 1;
    else
      hi = mid;
  }
  return lo;
}

// One past the last key query t sees (may be <= 0: a causal query before the first key).
template <typename A>
__device__ int RowEnd(const Geometry<A>& g, int b, int t) {
  if (g.causal) return t + (g.keys - g.time) + 1;  // within t's segment: segments need keys == time
  if (g.segments == nullptr) return g.keys;
  const int64_t* ids = g.segments + static_cast<int64_t>(b) * g.time;
  const int64_t id = ids[t];
  int lo = t + 1, hi = g.time;
  while (lo < hi) {
    int mid = lo + (hi - lo) / 2;
    if (ids[mid] <= id)
      lo = mid + 1;
    else
      hi = mid;
  }
  return lo;
}

// Element offset of [b, pos, head, 0] in a dense [batch, n, heads, width] tensor.
__device__ __forceinline__ int64_t At(int b, int pos, int head, int n, int heads, int width) {
  return ((static_cast<int64_t>(b) * n + pos) * heads + head) * width;
}

// ---- Forward

// Per thread block: kRows query rows per warp; kChunk columns of d per staged Q/K chunk, and
// keys per staged V chunk. One 8-warp block fills an SM's registers, so each chunk's loads wait
// between two barriers: large chunks make fewer waits. f64 uses smaller ones to fit the same
// shared memory and registers.
template <typename A>
struct ForwardTile {
  static constexpr int kRows = std::is_same_v<A, double> ? 4 : 8;
  static constexpr int kQueries = kWarps * kRows;  // 64 (f64: 32), divides kCpuQueryBlock
  static constexpr int kChunk = std::is_same_v<A, double> ? 16 : 64;
  static constexpr int kKeyCols = kCpuKeyBlock / 32;  // score columns per lane
  static constexpr int kPStride = kQueries + kVecPad<A>;
  static constexpr int kKStride = kCpuKeyBlock + 1;  // odd: conflict-free transposed stores

  // Shared memory: P transposed [key][query]; then either the Q chunk transposed [c][query]
  // and the K chunk transposed [c][key], or the V chunk [key][column].
  static size_t Bytes(int dv_cols) {
    size_t p = static_cast<size_t>(kCpuKeyBlock) * kPStride;
    size_t qk = static_cast<size_t>(kChunk) * kPStride + static_cast<size_t>(kChunk) * kKStride;
    size_t v = static_cast<size_t>(kChunk) * dv_cols;
    return (p + (qk > v ? qk : v)) * sizeof(A);
  }
};

// One block per (query tile, batch·head). Template DVJ: 32-column chunks of dv per lane.
template <typename T, typename A, int DVJ>
__global__ void __launch_bounds__(kThreads)
    AttentionForwardKernel(Geometry<A> g, const T* __restrict__ q, const T* __restrict__ k,
                           const T* __restrict__ v, T* __restrict__ o, A* __restrict__ lse) {
  using Tile = ForwardTile<A>;
  constexpr int R = Tile::kRows, BQ = Tile::kQueries, C = Tile::kChunk, KJ = Tile::kKeyCols;
  constexpr int PS = Tile::kPStride, KS = Tile::kKStride, VS = DVJ * 32;
  extern __shared__ __align__(16) unsigned char attention_smem[];
  A* ps = reinterpret_cast<A*>(attention_smem);
  A* qs = ps + kCpuKeyBlock * PS;
  A* ks = qs + C * PS;
  A* vs = qs;  // V chunks reuse the Q and K chunk space

  const int tid = static_cast<int>(threadIdx.x), warp = tid / 32, lane = tid % 32;
  const int tile = static_cast<int>(gridDim.x - 1 - blockIdx.x);  // long causal tiles first
  const int b = static_cast<int>(blockIdx.y) / g.heads, h = static_cast<int>(blockIdx.y) % g.heads;
  const int hk = h / (g.heads / g.kv_heads);
  const int q0 = tile * BQ, nq = min(BQ, g.time - q0);

  // This warp's rows: the keys each sees and its running max, sum and output.
  int row_begin[R], row_end[R];
  A m[R], l[R], acc[R][DVJ];
#pragma unroll
  for (int i = 0; i < R; ++i) {
    const int r = warp * R + i;
    row_begin[i] = r < nq ? RowBegin(g, b, q0 + r) : 0;
    row_end[i] = r < nq ? RowEnd(g, b, q0 + r) : 0;  // padding rows see nothing
    m[i] = NegInf<A>();
    l[i] = 0;
#pragma unroll
    for (int j = 0; j < DVJ; ++j) acc[i][j] = 0;
  }

  // The CPU's key blocks for this tile start at the Begin of its query block's first query; the
  // tile skips the leading ones none of its queries see and stops after the last one it sees.
  const int walk_begin = RowBegin(g, b, q0 / kCpuQueryBlock * kCpuQueryBlock);
  const int tile_begin = RowBegin(g, b, q0), tile_end = RowEnd(g, b, q0 + nq - 1);
  int k_first = walk_begin;
  if (tile_begin > walk_begin) k_first += (tile_begin - walk_begin) / kCpuKeyBlock * kCpuKeyBlock;

  for (int k0 = k_first; k0 < tile_end; k0 += kCpuKeyBlock) {
    const int nk = min(kCpuKeyBlock, tile_end - k0);

    // s = q·kᵀ for the block: lane owns key columns lane + 32·j.
    A s[R][KJ];
#pragma unroll
    for (int i = 0; i < R; ++i)
#pragma unroll
      for (int j = 0; j < KJ; ++j) s[i][j] = 0;
    for (int c0 = 0; c0 < g.d; c0 += C) {
      const int nc = min(C, g.d - c0);
      __syncthreads();  // the previous chunk (or block's V chunk) is no longer read
      for (int e = tid; e < BQ * C; e += kThreads) {
        const int r = e / C, c = e % C;
        qs[c * PS + r] =
            r < nq && c < nc ? Load(q[At(b, q0 + r, h, g.time, g.heads, g.d) + c0 + c]) : A(0);
      }
      for (int e = tid; e < kCpuKeyBlock * C; e += kThreads) {
        const int key = e / C, c = e % C;
        ks[c * KS + key] = key < nk && c < nc
                               ? Load(k[At(b, k0 + key, hk, g.keys, g.kv_heads, g.d) + c0 + c])
                               : A(0);
      }
      __syncthreads();
#pragma unroll 4
      for (int c = 0; c < nc; ++c) {
        A qv[R], kv[KJ];
        LoadVec(qs + c * PS + warp * R, qv);
#pragma unroll
        for (int j = 0; j < KJ; ++j) kv[j] = ks[c * KS + lane + 32 * j];
#pragma unroll
        for (int i = 0; i < R; ++i)
#pragma unroll
          for (int j = 0; j < KJ; ++j) s[i][j] += qv[i] * kv[j];
      }
    }

    // Online softmax over each row's visible keys of the block, as the CPU does it: the new
    // max, probabilities relative to it (rounded to T for the product with v), the sum of the
    // unrounded ones, and the rescaling of what came before. A row is one warp: the branches
    // are uniform across its lanes.
#pragma unroll
    for (int i = 0; i < R; ++i) {
      const int r = warp * R + i;
      const int vis_begin = max(0, min(nk, row_begin[i] - k0));
      const int vis_end = max(0, min(nk, row_end[i] - k0));
      if (vis_end <= vis_begin) {  // m, l and the output stay; p is 0
#pragma unroll
        for (int j = 0; j < KJ; ++j) ps[(lane + 32 * j) * PS + r] = 0;
        continue;
      }
      A row_max = NegInf<A>();
#pragma unroll
      for (int j = 0; j < KJ; ++j) {
        const int col = lane + 32 * j;
        if (col >= vis_begin && col < vis_end) row_max = MaxA(row_max, s[i][j]);
      }
      const A new_max = MaxA(m[i], MulRn(WarpMax(row_max), g.scale));  // scale > 0
      A sum = 0;
#pragma unroll
      for (int j = 0; j < KJ; ++j) {
        const int col = lane + 32 * j;
        A e = 0;
        if (col >= vis_begin && col < vis_end) e = ExpA(SubRn(MulRn(s[i][j], g.scale), new_max));
        sum += e;
        ps[col * PS + r] = RoundTo<T>(e);
      }
      sum = WarpSum(sum);
      const A correction = ExpA(SubRn(m[i], new_max));  // 0 at the row's first block (m = −∞)
      l[i] = l[i] * correction + sum;
#pragma unroll
      for (int j = 0; j < DVJ; ++j) acc[i][j] *= correction;
      m[i] = new_max;
    }
    __syncthreads();  // P is complete; the Q and K chunks are no longer read

    // acc += p·v, V staged in chunks of C keys; P and V are zero past the block's keys.
    for (int kc = 0; kc < nk; kc += C) {
      for (int e = tid; e < C * VS; e += kThreads) {
        const int key = e / VS, col = e % VS;
        vs[key * VS + col] = kc + key < nk && col < g.dv
                                 ? Load(v[At(b, k0 + kc + key, hk, g.keys, g.kv_heads, g.dv) + col])
                                 : A(0);
      }
      __syncthreads();
#pragma unroll 4
      for (int key = 0; key < C; ++key) {
        A pv[R], vv[DVJ];
        LoadVec(ps + (kc + key) * PS + warp * R, pv);
#pragma unroll
        for (int j = 0; j < DVJ; ++j) vv[j] = vs[key * VS + lane + 32 * j];
#pragma unroll
        for (int i = 0; i < R; ++i)
#pragma unroll
          for (int j = 0; j < DVJ; ++j) acc[i][j] += pv[i] * vv[j];
      }
      __syncthreads();  // before the next chunk or block overwrites V (and P)
    }
  }

#pragma unroll
  for (int i = 0; i < R; ++i) {
    const int r = warp * R + i;
    if (r >= nq) continue;
    const A inv = l[i] > 0 ? A(1) / l[i] : A(0);
    T* out = o + At(b, q0 + r, h, g.time, g.heads, g.dv);
#pragma unroll
    for (int j = 0; j < DVJ; ++j) {
      const int col = lane + 32 * j;
      if (col < g.dv) out[col] = Store<T>(acc[i][j] * inv);
    }
    if (lane == 0) {
      lse[(static_cast<int64_t>(b) * g.heads + h) * g.time + q0 + r] =
          l[i] > 0 ? m[i] + LogA(l[i]) : NegInf<A>();
    }
  }
}

// ---- Backward

// delta[b, h, t] = Σ_x do[b, t, h, x]·o[b, t, h, x], laid out as lse. One thread per row sums in
// order with FMAs, as the CPU's loop does, so delta (and the rounding of ds) matches it.
template <typename T, typename A>
__global__ void __launch_bounds__(kThreads)
    AttentionDeltaKernel(Geometry<A> g, const T* __restrict__ o, const T* __restrict__ dout,
                         A* __restrict__ delta) {
  const int64_t rows = static_cast<int64_t>(g.batch) * g.time * g.heads;
  const int64_t threads = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t row = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; row < rows; row += threads) {
    const T* o_row = o + row * g.dv;
    const T* do_row = dout + row * g.dv;
    A sum = 0;
    for (int x = 0; x < g.dv; ++x) sum = fma(Load(do_row[x]), Load(o_row[x]), sum);
    const int64_t h = row % g.heads, bt = row / g.heads, t = bt % g.time, b = bt / g.time;
    delta[(b * g.heads + h) * g.time + t] = sum;
  }
}

// The dk/dv kernel: one block per (key tile, batch·kv head). Warp w owns kRows keys; for the
// scores lanes own queries lane + 32·j, for dk and dv columns lane + 32·j.
template <typename A>
struct KeyGradTile {
  static constexpr int kRows = std::is_same_v<A, double> ? 2 : 4;
  static constexpr int kKeys = kWarps * kRows;                          // 32 (f64: 16)
  static constexpr int kQueryCols = std::is_same_v<A, double> ? 1 : 2;  // per lane
  static constexpr int kQueries = 32 * kQueryCols;                      // 64 (f64: 32)
  static constexpr int kTStride = kKeys + kVecPad<A>;                   // K, V transposed
  static constexpr int kPStride = kKeys + 1;                            // P, dS [query][key]

  // Shared memory: K and V transposed [c][key], Q and dO [query][c] (odd rows, conflict-free
  // column reads), P and dS [query][key], then per query lse, delta and its visible keys.
  static size_t Bytes(int d, int dv) {
    size_t values = static_cast<size_t>(d + dv) * kTStride +
                    static_cast<size_t>(kQueries) * ((d | 1) + (dv | 1) + 2 * kPStride + 2);
    return values * sizeof(A) + 2 * kQueries * sizeof(int);
  }
};

template <typename T, typename A, int MAXJ>
__global__ void __launch_bounds__(kThreads)
    AttentionKeyGradKernel(Geometry<A> g, const T* __restrict__ q, const T* __restrict__ k,
                           const T* __restrict__ v, const T* __restrict__ dout,
                           const A* __restrict__ lse, const A* __restrict__ delta,
                           T* __restrict__ dk, T* __restrict__ dv) {
  using Tile = KeyGradTile<A>;
  constexpr int R = Tile::kRows, BK = Tile::kKeys, QJ = Tile::kQueryCols, BQ = Tile::kQueries;
  constexpr int TS = Tile::kTStride, PS = Tile::kPStride;
  const int qs_stride = g.d | 1, dos_stride = g.dv | 1;
  extern __shared__ __align__(16) unsigned char attention_smem[];
  A* kt = reinterpret_cast<A*>(attention_smem);
  A* vt = kt + g.d * TS;
  A* qs = vt + g.dv * TS;
  A* dos = qs + BQ * qs_stride;
  A* ps = dos + BQ * dos_stride;
  A* dss = ps + BQ * PS;
  A* lse_s = dss + BQ * PS;
  A* delta_s = lse_s + BQ;
  int* begin_s = reinterpret_cast<int*>(delta_s + BQ);
  int* end_s = begin_s + BQ;

  const int tid = static_cast<int>(threadIdx.x), warp = tid / 32, lane = tid % 32;
  const int b = static_cast<int>(blockIdx.y) / g.kv_heads;
  const int hk = static_cast<int>(blockIdx.y) % g.kv_heads;
  const int k0 = static_cast<int>(blockIdx.x) * BK, nk = min(BK, g.keys - k0);
  const int group = g.heads / g.kv_heads;

  for (int e = tid; e < BK * g.d; e += kThreads) {
    const int key = e / g.d, c = e % g.d;
    kt[c * TS + key] = key < nk ? Load(k[At(b, k0 + key, hk, g.keys, g.kv_heads, g.d) + c]) : A(0);
  }
  for (int e = tid; e < BK * g.dv; e += kThreads) {
    const int key = e / g.dv, c = e % g.dv;
    vt[c * TS + key] = key < nk ? Load(v[At(b, k0 + key, hk, g.keys, g.kv_heads, g.dv) + c]) : A(0);
  }

  A dk_acc[R][MAXJ], dv_acc[R][MAXJ];
#pragma unroll
  for (int i = 0; i < R; ++i)
#pragma unroll
    for (int j = 0; j < MAXJ; ++j) dk_acc[i][j] = dv_acc[i][j] = 0;

  for (int h = hk * group; h < (hk + 1) * group; ++h) {
    for (int q0 = 0; q0 < g.time; q0 += BQ) {
      const int nq = min(BQ, g.time - q0);
      // Visible ranges move forward with the query: skip the tiles that end before these keys,
      // stop at the first that starts after them.
      if (RowEnd(g, b, q0 + nq - 1) <= k0) continue;
      if (RowBegin(g, b, q0) >= k0 + nk) break;

      __syncthreads();  // the previous tile is no longer read (and K, V are staged)
      for (int e = tid; e < BQ * g.d; e += kThreads) {
        const int r = e / g.d, c = e % g.d;
        qs[r * qs_stride + c] = r < nq ? Load(q[At(b, q0 + r, h, g.time, g.heads, g.d) + c]) : A(0);
      }
      for (int e = tid; e < BQ * g.dv; e += kThreads) {
        const int r = e / g.dv, c = e % g.dv;
        dos[r * dos_stride + c] =
            r < nq ? Load(dout[At(b, q0 + r, h, g.time, g.heads, g.dv) + c]) : A(0);
      }
      for (int r = tid; r < BQ; r += kThreads) {
        const bool real = r < nq;
        const int64_t at = (static_cast<int64_t>(b) * g.heads + h) * g.time + q0 + r;
        lse_s[r] = real ? lse[at] : A(0);
        delta_s[r] = real ? delta[at] : A(0);
        begin_s[r] = real ? RowBegin(g, b, q0 + r) : 0;  // padding queries see nothing
        end_s[r] = real ? RowEnd(g, b, q0 + r) : 0;
      }
      __syncthreads();

      // sᵀ = k·qᵀ and dpᵀ = v·doᵀ for this warp's keys and this lane's queries.
      A st[R][QJ], dpt[R][QJ];
#pragma unroll
      for (int i = 0; i < R; ++i)
#pragma unroll
        for (int j = 0; j < QJ; ++j) st[i][j] = dpt[i][j] = 0;
#pragma unroll 4
      for (int c = 0; c < g.d; ++c) {
        A kv[R], qv[QJ];
        LoadVec(kt + c * TS + warp * R, kv);
#pragma unroll
        for (int j = 0; j < QJ; ++j) qv[j] = qs[(lane + 32 * j) * qs_stride + c];
#pragma unroll
        for (int i = 0; i < R; ++i)
#pragma unroll
          for (int j = 0; j < QJ; ++j) st[i][j] += kv[i] * qv[j];
      }
#pragma unroll 4
      for (int c = 0; c < g.dv; ++c) {
        A vv[R], dov[QJ];
        LoadVec(vt + c * TS + warp * R, vv);
#pragma unroll
        for (int j = 0; j < QJ; ++j) dov[j] = dos[(lane + 32 * j) * dos_stride + c];
#pragma unroll
        for (int i = 0; i < R; ++i)
#pragma unroll
          for (int j = 0; j < QJ; ++j) dpt[i][j] += vv[i] * dov[j];
      }

      // p = exp(s·scale − lse) and ds = p·(dp − delta)·scale where the query sees the key,
      // each rounded to T as the CPU rounds them before its GEMMs.
#pragma unroll
      for (int i = 0; i < R; ++i) {
        const int key_in_tile = warp * R + i, key = k0 + key_in_tile;
#pragma unroll
        for (int j = 0; j < QJ; ++j) {
          const int r = lane + 32 * j;
          A p = 0, ds = 0;
          if (key_in_tile < nk && key >= begin_s[r] && key < end_s[r]) {
            p = ExpA(SubRn(MulRn(st[i][j], g.scale), lse_s[r]));
            ds = RoundTo<T>(MulRn(MulRn(p, SubRn(dpt[i][j], delta_s[r])), g.scale));
            p = RoundTo<T>(p);
          }
          ps[r * PS + key_in_tile] = p;
          dss[r * PS + key_in_tile] = ds;
        }
      }
      __syncthreads();

      // dv += pᵀ·do and dk += dsᵀ·q.
      for (int r = 0; r < nq; ++r) {
        A pv[R], dsv[R];
#pragma unroll
        for (int i = 0; i < R; ++i) {
          pv[i] = ps[r * PS + warp * R + i];
          dsv[i] = dss[r * PS + warp * R + i];
        }
#pragma unroll
        for (int j = 0; j < MAXJ; ++j) {
          const int col = lane + 32 * j;
          if (col < g.dv) {
            const A x = dos[r * dos_stride + col];
#pragma unroll
            for (int i = 0; i < R; ++i) dv_acc[i][j] += pv[i] * x;
          }
          if (col < g.d) {
            const A x = qs[r * qs_stride + col];
#pragma unroll
            for (int i = 0; i < R; ++i) dk_acc[i][j] += dsv[i] * x;
          }
        }
      }
    }
  }

#pragma unroll
  for (int i = 0; i < R; ++i) {
    const int key_in_tile = warp * R + i;
    if (key_in_tile >= nk) continue;
    T* dk_row = dk + At(b, k0 + key_in_tile, hk, g.keys, g.kv_heads, g.d);
    T* dv_row = dv + At(b, k0 + key_in_tile, hk, g.keys, g.kv_heads, g.dv);
#pragma unroll
    for (int j = 0; j < MAXJ; ++j) {
      const int col = lane + 32 * j;
      if (col < g.d) dk_row[col] = Store<T>(dk_acc[i][j]);
      if (col < g.dv) dv_row[col] = Store<T>(dv_acc[i][j]);
    }
  }
}

// The dq kernel: one block per (query tile, batch·head), walking the key tiles its queries see.
// Warp w owns kRows queries; for the scores lane l owns key l of the tile, for dq columns
// lane + 32·j.
template <typename A>
struct QueryGradTile {
  static constexpr int kRows = std::is_same_v<A, double> ? 2 : 8;
  static constexpr int kQueries = kWarps * kRows;  // 64 (f64: 16)
  static constexpr int kKeys = 32;
  static constexpr int kTStride = kQueries + kVecPad<A>;  // Q, dO and dS transposed

  // Shared memory: Q and dO transposed [c][query], K and V [key][c] (odd rows), dS transposed
  // [key][query], then per query lse, delta and its visible keys.
  static size_t Bytes(int d, int dv) {
    size_t values = static_cast<size_t>(d + dv + kKeys) * kTStride +
                    static_cast<size_t>(kKeys) * ((d | 1) + (dv | 1)) + 2 * kQueries;
    return values * sizeof(A) + 2 * kQueries * sizeof(int);
  }
};

template <typename T, typename A, int MAXJ>
__global__ void __launch_bounds__(kThreads)
    AttentionQueryGradKernel(Geometry<A> g, const T* __restrict__ q, const T* __restrict__ k,
                             const T* __restrict__ v, const T* __restrict__ dout,
                             const A* __restrict__ lse, const A* __restrict__ delta,
                             T* __restrict__ dq) {
  using Tile = QueryGradTile<A>;
  constexpr int R = Tile::kRows, BQ = Tile::kQueries, BK = Tile::kKeys, TS = Tile::kTStride;
  const int ks_stride = g.d | 1, vs_stride = g.dv | 1;
  extern __shared__ __align__(16) unsigned char attention_smem[];
  A* qt = reinterpret_cast<A*>(attention_smem);
  A* dot = qt + g.d * TS;
  A* dst = dot + g.dv * TS;
  A* ks = dst + BK * TS;
  A* vs = ks + BK * ks_stride;
  A* lse_s = vs + BK * vs_stride;
  A* delta_s = lse_s + BQ;
  int* begin_s = reinterpret_cast<int*>(delta_s + BQ);
  int* end_s = begin_s + BQ;

  const int tid = static_cast<int>(threadIdx.x), warp = tid / 32, lane = tid % 32;
  const int tile = static_cast<int>(gridDim.x - 1 - blockIdx.x);  // long causal tiles first
  const int b = static_cast<int>(blockIdx.y) / g.heads, h = static_cast<int>(blockIdx.y) % g.heads;
  const int hk = h / (g.heads / g.kv_heads);
  const int q0 = tile * BQ, nq = min(BQ, g.time - q0);

  for (int e = tid; e < BQ * g.d; e += kThreads) {
    const int r = e / g.d, c = e % g.d;
    qt[c * TS + r] = r < nq ? Load(q[At(b, q0 + r, h, g.time, g.heads, g.d) + c]) : A(0);
  }
  for (int e = tid; e < BQ * g.dv; e += kThreads) {
    const int r = e / g.dv, c = e % g.dv;
    dot[c * TS + r] = r < nq ? Load(dout[At(b, q0 + r, h, g.time, g.heads, g.dv) + c]) : A(0);
  }
  for (int r = tid; r < BQ; r += kThreads) {
    const bool real = r < nq;
    const int64_t at = (static_cast<int64_t>(b) * g.heads + h) * g.time + q0 + r;
    lse_s[r] = real ? lse[at] : A(0);
    delta_s[r] = real ? delta[at] : A(0);
    begin_s[r] = real ? RowBegin(g, b, q0 + r) : 0;  // padding queries see nothing
    end_s[r] = real ? RowEnd(g, b, q0 + r) : 0;
  }

  A dq_acc[R][MAXJ];
#pragma unroll
  for (int i = 0; i < R; ++i)
#pragma unroll
    for (int j = 0; j < MAXJ; ++j) dq_acc[i][j] = 0;

  const int tile_begin = RowBegin(g, b, q0), tile_end = RowEnd(g, b, q0 + nq - 1);
  for (int k0 = tile_begin; k0 < tile_end; k0 += BK) {
    const int nk = min(BK, tile_end - k0);
    __syncthreads();  // the previous key tile is no longer read (and Q, dO are staged)
    for (int e = tid; e < BK * g.d; e += kThreads) {
      const int key = e / g.d, c = e % g.d;
      ks[key * ks_stride + c] =
          key < nk ? Load(k[At(b, k0 + key, hk, g.keys, g.kv_heads, g.d) + c]) : A(0);
    }
    for (int e = tid; e < BK * g.dv; e += kThreads) {
      const int key = e / g.dv, c = e % g.dv;
      vs[key * vs_stride + c] =
          key < nk ? Load(v[At(b, k0 + key, hk, g.keys, g.kv_heads, g.dv) + c]) : A(0);
    }
    __syncthreads();

    // s = q·kᵀ and dp = do·vᵀ for this warp's queries and this lane's key.
    A s[R], dp[R];
#pragma unroll
    for (int i = 0; i < R; ++i) s[i] = dp[i] = 0;
#pragma unroll 4
    for (int c = 0; c < g.d; ++c) {
      A qv[R];
      LoadVec(qt + c * TS + warp * R, qv);
      const A kv = ks[lane * ks_stride + c];
#pragma unroll
      for (int i = 0; i < R; ++i) s[i] += qv[i] * kv;
    }
#pragma unroll 4
    for (int c = 0; c < g.dv; ++c) {
      A dov[R];
      LoadVec(dot + c * TS + warp * R, dov);
      const A vv = vs[lane * vs_stride + c];
#pragma unroll
      for (int i = 0; i < R; ++i) dp[i] += dov[i] * vv;
    }
    const int key = k0 + lane;
#pragma unroll
    for (int i = 0; i < R; ++i) {
      const int r = warp * R + i;
      A ds = 0;
      if (lane < nk && key >= begin_s[r] && key < end_s[r]) {
        const A p = ExpA(SubRn(MulRn(s[i], g.scale), lse_s[r]));
        ds = RoundTo<T>(MulRn(MulRn(p, SubRn(dp[i], delta_s[r])), g.scale));
      }
      dst[lane * TS + r] = ds;
    }
    __syncthreads();

    // dq += ds·k.
    for (int kk = 0; kk < nk; ++kk) {
      A dsv[R];
      LoadVec(dst + kk * TS + warp * R, dsv);
#pragma unroll
      for (int j = 0; j < MAXJ; ++j) {
        const int col = lane + 32 * j;
        if (col < g.d) {
          const A x = ks[kk * ks_stride + col];
#pragma unroll
          for (int i = 0; i < R; ++i) dq_acc[i][j] += dsv[i] * x;
        }
      }
    }
  }

#pragma unroll
  for (int i = 0; i < R; ++i) {
    const int r = warp * R + i;
    if (r >= nq) continue;
    T* dq_row = dq + At(b, q0 + r, h, g.time, g.heads, g.d);
#pragma unroll
    for (int j = 0; j < MAXJ; ++j) {
      const int col = lane + 32 * j;
      if (col < g.d) dq_row[col] = Store<T>(dq_acc[i][j]);
    }
  }
}

// ---- Host side: shapes, launches.

struct Dims {
  int64_t batch, time, keys, heads, kv_heads, d, dv;
};

std::string TypeString(const Tensor& t) {
  return std::string(DataTypeName(t.dtype())) + ShapeString(t.shape());
}

// The CPU kernel's checks (GetDims, CheckSegments) and the limits of these kernels.
StatusOr<Dims> GetDims(const KernelContext& ctx, int segments_input) {
  const Tensor &q = ctx.input(0), &k = ctx.input(1), &v = ctx.input(2);
  auto bad = [&](const std::string& why) {
    return InvalidArgument("q " + TypeString(q) + ", k " + TypeString(k) + ", v " + TypeString(v) +
                           ": " + why);
  };
  if (q.rank() != 4 || k.rank() != 4 || v.rank() != 4)
    return bad("expected [batch, time, heads, dim] each");
  if (q.dtype() != k.dtype() || q.dtype() != v.dtype()) return bad("dtypes differ");
  const Shape &qs = q.shape(), &ks = k.shape(), &vs = v.shape();
  Dims d{qs[0], qs[1], ks[1], qs[2], ks[2], qs[3], vs[3]};
  if (ks[0] != d.batch || vs[0] != d.batch) return bad("batch sizes differ");
  if (vs[1] != d.keys || vs[2] != d.kv_heads) return bad("k and v disagree on time or heads");
  if (ks[3] != d.d) return bad("q and k head dims differ");
  if (d.kv_heads == 0 || d.heads % d.kv_heads != 0)
    return bad("heads must be a multiple of kv heads");
  if (d.d < 1 || d.d > kMaxHeadDim || d.dv < 1 || d.dv > kMaxHeadDim) {
    return bad("the CUDA kernels take head dims from 1 to " + std::to_string(kMaxHeadDim));
  }
  constexpr int64_t kMaxPositions = std::numeric_limits<int>::max() / 2;
  if (d.time > kMaxPositions || d.keys > kMaxPositions) return bad("too many positions");
  if (d.batch * d.heads > 65535) return bad("batch·heads above 65535 (a grid dimension)");
  if (ctx.num_inputs() > segments_input) {
    const Tensor& segments = ctx.input(segments_input);
    if (segments.dtype() != DT_I64 || segments.shape() != Shape{d.batch, d.time}) {
      return InvalidArgument("segments must be i64 [batch, time] = i64" +
                             ShapeString({d.batch, d.time}) + ", got " + TypeString(segments));
    }
    if (d.keys != d.time) {
      return InvalidArgument(
          "segments need as many keys as queries (no cached keys before them): " +
          std::to_string(d.time) + " queries, " + std::to_string(d.keys) + " keys");
    }
  }
  return d;
}

template <typename A>
Geometry<A> MakeGeometry(const KernelContext& ctx, const Dims& d, int segments_input) {
  double scale = ctx.attrs().Float("scale");
  if (!(scale > 0)) scale = 1.0 / std::sqrt(static_cast<double>(d.d));  // as the CPU: 0 → 1/√d
  return Geometry<A>{
      static_cast<int>(d.batch),
      static_cast<int>(d.time),
      static_cast<int>(d.keys),
      static_cast<int>(d.heads),
      static_cast<int>(d.kv_heads),
      static_cast<int>(d.d),
      static_cast<int>(d.dv),
      ctx.attrs().Bool("causal"),
      static_cast<A>(scale),
      ctx.num_inputs() > segments_input ? ctx.input(segments_input).data<int64_t>() : nullptr};
}

// Calls f with the number of 32-column chunks the kernels keep per lane for `dim` columns:
// 2, 4, 6 or 8 (a few instantiations rather than one per head dim).
template <typename F>
Status DispatchColumns(int64_t dim, F&& f) {
  const int64_t chunks = (dim + 31) / 32;
  if (chunks <= 2) return f(std::integral_constant<int, 2>{});
  if (chunks <= 4) return f(std::integral_constant<int, 4>{});
  if (chunks <= 6) return f(std::integral_constant<int, 6>{});
  return f(std::integral_constant<int, 8>{});
}

// Allows `bytes` of dynamic shared memory for `kernel` (above 48 KiB needs the opt-in).
template <typename Kernel>
Status AllowSharedMemory(Kernel* kernel, size_t bytes, const char* name) {
  return cuda::Check(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                          static_cast<int>(bytes)),
                     (std::string("shared memory for ") + name).c_str());
}

unsigned Tiles(int64_t n, int tile) { return static_cast<unsigned>((n + tile - 1) / tile); }

}  // namespace

// Inputs q, k, v and optional segments; outputs o and lse.
Status AttentionForwardCuda(KernelContext& ctx) {
  constexpr int kSegments = 3;
  WEIR_ASSIGN_OR_RETURN(Dims d, GetDims(ctx, kSegments));
  if (d.batch == 0 || d.time == 0 || d.heads == 0) return Status();  // nothing to write
  return DispatchFloat(ctx.input(0).dtype(), [&](auto tag) {
    using Host = decltype(tag);
    using T = cuda::DeviceT<Host>;
    using A = AccumulatorOf<Host>;
    const Tensor& lse = ctx.output(1);
    if (lse.dtype() != DataTypeOf<A>()) {
      return InvalidArgument("lse must be " + std::string(DataTypeName(DataTypeOf<A>())) +
                             ", got " + TypeString(lse));
    }
    Geometry<A> g = MakeGeometry<A>(ctx, d, kSegments);
    return DispatchColumns(d.dv, [&](auto dvj) {
      constexpr int DVJ = decltype(dvj)::value;
      auto* kernel = AttentionForwardKernel<T, A, DVJ>;
      const size_t smem = ForwardTile<A>::Bytes(DVJ * 32);
      WEIR_RETURN_IF_ERROR(AllowSharedMemory(kernel, smem, "AttentionForwardKernel"));
      dim3 grid(Tiles(d.time, ForwardTile<A>::kQueries), static_cast<unsigned>(d.batch * d.heads));
      kernel<<<grid, kThreads, smem, cuda::Stream(ctx)>>>(
          g, cuda::Data<Host>(ctx.input(0)), cuda::Data<Host>(ctx.input(1)),
          cuda::Data<Host>(ctx.input(2)), cuda::Data<Host>(ctx.output(0)), lse.data<A>());
      return cuda::CheckLaunch("AttentionForwardKernel");
    });
  });
}

// Inputs q, k, v, o, lse, do and optional segments; outputs dq, dk, dv.
Status AttentionBackwardCuda(KernelContext& ctx) {
  constexpr int kSegments = 6;
  WEIR_ASSIGN_OR_RETURN(Dims d, GetDims(ctx, kSegments));
  if (ctx.num_inputs() < 6) return InvalidArgument("expected q, k, v, o, lse, do");
  const Tensor &o = ctx.input(3), &lse = ctx.input(4), &dout = ctx.input(5);
  const Shape o_shape{d.batch, d.time, d.heads, d.dv};
  if (o.dtype() != ctx.input(0).dtype() || o.shape() != o_shape || dout.dtype() != o.dtype() ||
      dout.shape() != o_shape) {
    return InvalidArgument("o and do must be " + std::string(DataTypeName(ctx.input(0).dtype())) +
                           ShapeString(o_shape) + ", got " + TypeString(o) + " and " +
                           TypeString(dout));
  }
  if (lse.shape() != Shape{d.batch, d.heads, d.time}) {
    return InvalidArgument("lse must be [batch, heads, time] = " +
                           ShapeString({d.batch, d.heads, d.time}) + ", got " + TypeString(lse));
  }
  if (d.batch == 0) return Status();  // nothing to write
  return DispatchFloat(ctx.input(0).dtype(), [&](auto tag) -> Status {
    using Host = decltype(tag);
    using T = cuda::DeviceT<Host>;
    using A = AccumulatorOf<Host>;
    if (lse.dtype() != DataTypeOf<A>()) {
      return InvalidArgument("lse must be " + std::string(DataTypeName(DataTypeOf<A>())) +
                             ", got " + TypeString(lse));
    }
    Geometry<A> g = MakeGeometry<A>(ctx, d, kSegments);
    cudaStream_t stream = cuda::Stream(ctx);
    const T *q = cuda::Data<Host>(ctx.input(0)), *k = cuda::Data<Host>(ctx.input(1)),
            *v = cuda::Data<Host>(ctx.input(2));
    const T* dout_data = cuda::Data<Host>(dout);
    const A* lse_data = lse.data<A>();
    if (d.time == 0 || d.heads == 0) {  // no queries: every key's gradient is 0
      for (int i : {1, 2}) {
        const Tensor& grad = ctx.output(i);
        if (grad.nbytes() == 0) continue;
        WEIR_RETURN_IF_ERROR(cuda::Check(cudaMemsetAsync(grad.raw_data(), 0, grad.nbytes(), stream),
                                         "clearing dk and dv"));
      }
      return Status();
    }

    WEIR_ASSIGN_OR_RETURN(Tensor delta,
                          cuda::Scratch(ctx, DataTypeOf<A>(), {d.batch, d.heads, d.time}));
    AttentionDeltaKernel<T, A>
        <<<cuda::Blocks(d.batch * d.time * d.heads, kWarps), kThreads, 0, stream>>>(
            g, cuda::Data<Host>(o), dout_data, delta.data<A>());
    WEIR_RETURN_IF_ERROR(cuda::CheckLaunch("AttentionDeltaKernel"));
    const A* delta_data = delta.data<A>();

    if (d.keys > 0) {
      WEIR_RETURN_IF_ERROR(DispatchColumns(std::max(d.d, d.dv), [&](auto j) {
        constexpr int MAXJ = decltype(j)::value;
        auto* kernel = AttentionKeyGradKernel<T, A, MAXJ>;
        const size_t smem = KeyGradTile<A>::Bytes(g.d, g.dv);
        WEIR_RETURN_IF_ERROR(AllowSharedMemory(kernel, smem, "AttentionKeyGradKernel"));
        dim3 grid(Tiles(d.keys, KeyGradTile<A>::kKeys),
                  static_cast<unsigned>(d.batch * d.kv_heads));
        kernel<<<grid, kThreads, smem, stream>>>(g, q, k, v, dout_data, lse_data, delta_data,
                                                 cuda::Data<Host>(ctx.output(1)),
                                                 cuda::Data<Host>(ctx.output(2)));
        return cuda::CheckLaunch("AttentionKeyGradKernel");
      }));
    }
    return DispatchColumns(d.d, [&](auto j) {
      constexpr int MAXJ = decltype(j)::value;
      auto* kernel = AttentionQueryGradKernel<T, A, MAXJ>;
      const size_t smem = QueryGradTile<A>::Bytes(g.d, g.dv);
      WEIR_RETURN_IF_ERROR(AllowSharedMemory(kernel, smem, "AttentionQueryGradKernel"));
      dim3 grid(Tiles(d.time, QueryGradTile<A>::kQueries),
                static_cast<unsigned>(d.batch * d.heads));
      kernel<<<grid, kThreads, smem, stream>>>(g, q, k, v, dout_data, lse_data, delta_data,
                                               cuda::Data<Host>(ctx.output(0)));
      return cuda::CheckLaunch("AttentionQueryGradKernel");
    });
  });
}

}  // namespace weir::nn
