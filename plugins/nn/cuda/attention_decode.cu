// nn.Attention on cuda for what the flash kernels (attention.cu) do not serve well: head dims
// above their 256 (MLA's absorbed decode attends with d = 576 and dv = 512 over one shared
// latent head, spec §2.2), and decoding, where a few queries face a long cache and one block per
// query tile would leave most of the GPU idle.
//
// Split-key attention (flash-decoding): the keys are cut into splits; a block takes one split,
// one kv head and up to kRows query rows of that kv head's group (heads × time), stages key and
// value tiles in shared memory once for all of them, and keeps an online softmax per row. A
// second kernel combines the splits' partial maxima, sums and outputs per row. Without segments
// only (decoding has none; segments need keys == time).
//
// The keys come from a source: nn.Attention's dense k and v, or nn.PagedLatentAttention's paged
// cache followed by the new tokens' rows (one key head whose value is the key's first columns).
// The kernels are the same for both; only where a key row lives differs.
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>
#include <type_traits>

#include "weir/cuda_kernel.h"

namespace weir::nn {

Status AttentionForwardCuda(KernelContext& ctx);  // attention.cu: the flash kernels

namespace {

constexpr int kThreads = 256;
constexpr int kRows = 16;    // query rows per block
constexpr int kKeys = 32;    // keys per tile: one per lane in the softmax step
constexpr int kMaxCols = 4;  // value columns per thread: dv up to 1024
constexpr int kFlashMaxDim = 256;

template <typename A>
struct DecodeGeometry {
  int batch, time, heads, kv_heads, d, dv;
  int keys;  // the most keys a sequence has: what the splits are sized for
  bool causal;
  A scale;
  int splits, split_keys;
  int group_rows;  // (heads / kv_heads) · time: the query rows of one kv head
};

using cuda::Exp;
using cuda::Infinity;
using cuda::QuietNaN;
using cuda::WarpMax;
using cuda::WarpSum;

// nn.Attention's keys: k [batch, keys, kv_heads, d] and v [batch, keys, kv_heads, dv].
template <typename T>
struct DenseKeys {
  const T* k;
  const T* v;
  int keys, kv_heads, d, dv;
  __device__ int Count(int) const { return keys; }
  // Whether sequence b's keys cannot be read: never for dense keys.
  __device__ bool Bad(int, int, int) const { return false; }
  __device__ const T* Key(int b, int kv_head, int j) const {
    return k + ((static_cast<int64_t>(b) * keys + j) * kv_heads + kv_head) * d;
  }
  __device__ const T* Value(int b, int kv_head, int j) const {
    return v + ((static_cast<int64_t>(b) * keys + j) * kv_heads + kv_head) * dv;
  }
};

// nn.PagedLatentAttention's keys: sequence b's lengths[b] cached rows, found through its row of
// the block table in cache [blocks, block_size, d], then its `time` new rows of kv
// [batch, time, d]. One key head; a value is its key row's first columns.
template <typename T>
struct PagedKeys {
  const T* kv;
  const T* cache;
  const int64_t* table;    // [batch, max_blocks]
  const int64_t* lengths;  // [batch]
  int time, d, block_size, max_blocks;
  int64_t blocks;
  __device__ bool BadLength(int b) const {
    return lengths[b] < 0 || lengths[b] > static_cast<int64_t>(max_blocks) * block_size;
  }
  __device__ int Count(int b) const {
    return BadLength(b) ? time : static_cast<int>(lengths[b]) + time;
  }
  // Whether sequence b's cache cannot be read (a length beyond its table, a block not in the
  // cache); thread `first` of `stride` checks every stride-th block. The kernels cannot report
  // it without a wait, so such a sequence's outputs are NaN.
  __device__ bool Bad(int b, int first, int stride) const {
    if (BadLength(b)) return true;
    const int64_t used = (lengths[b] + block_size - 1) / block_size;
    for (int64_t p = first; p < used; p += stride) {
      int64_t id = table[static_cast<int64_t>(b) * max_blocks + p];
      if (id < 0 || id >= blocks) return true;
    }
    return false;
  }
  __device__ const T* Key(int b, int, int j) const {
    const int64_t cached = lengths[b];
    if (j >= cached) return kv + (static_cast<int64_t>(b) * time + (j - cached)) * d;
    const int64_t id = table[static_cast<int64_t>(b) * max_blocks + j / block_size];
    return cache + (id * block_size + j % block_size) * d;
  }
  __device__ const T* Value(int b, int kv_head, int j) const { return Key(b, kv_head, j); }
};

// Row r of a kv head's group is head (kv_head · group + r / time) at time r % time.
template <typename T, typename A, typename Keys>
__global__ void __launch_bounds__(kThreads)
    SplitKeyAttentionKernel(DecodeGeometry<A> g, const T* __restrict__ q, Keys source,
                            A* __restrict__ part_max, A* __restrict__ part_sum,
                            A* __restrict__ part_out) {
  extern __shared__ unsigned char shared_bytes[];
  A* qs = reinterpret_cast<A*>(shared_bytes);  // [kRows][d]
  // Key rows are padded by one: the lanes of a warp read one column of 32 keys.
  const int key_stride = g.d + 1;
  A* ks = qs + kRows * g.d;         // [kKeys][key_stride]
  A* vs = ks + kKeys * key_stride;  // [kKeys][dv]
  A* ps = vs + kKeys * g.dv;        // [kRows][kKeys]
  A* row_max = ps + kRows * kKeys;  // [kRows]
  A* row_sum = row_max + kRows;
  A* row_rescale = row_sum + kRows;
  __shared__ const T* key_rows[kKeys];
  __shared__ const T* value_rows[kKeys];

  const int split = blockIdx.x;
  const int row0 = blockIdx.y * kRows;
  const int b = blockIdx.z / g.kv_heads, kv_head = blockIdx.z % g.kv_heads;
  const int group = g.heads / g.kv_heads;
  const int rows = min(kRows, g.group_rows - row0);
  const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
  const A neg_inf = -Infinity<A>();

  auto head_of = [&](int r) { return kv_head * group + (row0 + r) / g.time; };
  auto time_of = [&](int r) { return (row0 + r) % g.time; };
  const bool bad = __syncthreads_or(source.Bad(b, tid, kThreads));
  const int keys = bad ? 0 : source.Count(b);
  // Keys [0, end) are visible to a row: the causal rule aligns the last query with the last key.
  auto end_of = [&](int r) { return g.causal ? time_of(r) + keys - g.time + 1 : keys; };

  for (int i = tid; i < kRows * g.d; i += kThreads) {
    int r = i / g.d, c = i % g.d;
    qs[i] =
        r < rows
            ? cuda::Load(
                  q[((static_cast<int64_t>(b) * g.time + time_of(r)) * g.heads + head_of(r)) * g.d +
                    c])
            : A(0);
  }
  if (tid < kRows) {
    row_max[tid] = neg_inf;
    row_sum[tid] = 0;
  }
  A acc[kRows][kMaxCols];
  for (int r = 0; r < kRows; ++r)
    for (int j = 0; j < kMaxCols; ++j) acc[r][j] = 0;

  const int begin = split * g.split_keys;
  int end = min(keys, begin + g.split_keys);
  int visible_end = 0;  // no row sees a key at or after this one
  for (int r = 0; r < rows; ++r) visible_end = max(visible_end, end_of(r));
  end = min(end, visible_end);

  for (int k0 = begin; k0 < end; k0 += kKeys) {
    const int nk = min(kKeys, end - k0);
    __syncthreads();  // the previous tile's readers are done
    if (tid < nk) {
      key_rows[tid] = source.Key(b, kv_head, k0 + tid);
      value_rows[tid] = source.Value(b, kv_head, k0 + tid);
    }
    __syncthreads();
    for (int i = tid; i < kKeys * g.d; i += kThreads) {
      int j = i / g.d, c = i % g.d;
      ks[j * key_stride + c] = j < nk ? cuda::Load(key_rows[j][c]) : A(0);
    }
    for (int i = tid; i < kKeys * g.dv; i += kThreads) {
      int j = i / g.dv, c = i % g.dv;
      vs[i] = j < nk ? cuda::Load(value_rows[j][c]) : A(0);
    }
    __syncthreads();
    for (int i = tid; i < kRows * kKeys; i += kThreads) {
      int r = i / kKeys, j = i % kKeys;
      A score = neg_inf;
      if (r < rows && j < nk && k0 + j < end_of(r)) {
        A dot = 0;
        const A* qr = qs + r * g.d;
        const A* kj = ks + j * key_stride;
        for (int c = 0; c < g.d; ++c) dot += qr[c] * kj[c];
        score = dot * g.scale;
      }
      ps[i] = score;
    }
    __syncthreads();
    // The online softmax: a warp per row, a lane per key of the tile.
    for (int r = warp; r < kRows; r += kThreads / 32) {
      A x = ps[r * kKeys + lane];
      A old_max = row_max[r];
      A new_max = max(old_max, WarpMax(x));
      A e = x == neg_inf ? A(0) : Exp(x - new_max);
      A sum = WarpSum(e);
      ps[r * kKeys + lane] = e;
      if (lane == 0) {
        A rescale = old_max == neg_inf ? A(0) : Exp(old_max - new_max);
        row_sum[r] = row_sum[r] * rescale + sum;
        row_max[r] = new_max;
        row_rescale[r] = rescale;
      }
    }
    __syncthreads();
    for (int r = 0; r < kRows; ++r) {
      const A rescale = row_rescale[r];
      for (int j = 0; j < kMaxCols; ++j) acc[r][j] *= rescale;
    }
    for (int jk = 0; jk < nk; ++jk) {
      A p[kRows];
      for (int r = 0; r < kRows; ++r) p[r] = ps[r * kKeys + jk];
      const A* vj = vs + jk * g.dv;
      for (int j = 0; j < kMaxCols; ++j) {
        int c = tid + j * kThreads;
        if (c >= g.dv) break;
        A value = vj[c];
        for (int r = 0; r < kRows; ++r) acc[r][j] += p[r] * value;
      }
    }
  }
  __syncthreads();
  for (int r = 0; r < rows; ++r) {
    int64_t at =
        ((static_cast<int64_t>(b) * g.heads + head_of(r)) * g.time + time_of(r)) * g.splits + split;
    if (tid == 0) {
      part_max[at] = row_max[r];
      part_sum[at] = row_sum[r];
    }
    for (int j = 0; j < kMaxCols; ++j) {
      int c = tid + j * kThreads;
      if (c < g.dv) part_out[at * g.dv + c] = acc[r][j];
    }
  }
}

// One block per (batch, head, time) row: o = Σ_s out_s·e^(m_s − M) / Σ_s sum_s·e^(m_s − M),
// lse = M + log of that sum; a row that sees no key gets o = 0 and lse = −∞, as on the CPU, and a
// row whose keys could not be read gets NaN.
template <typename T, typename A, typename Keys>
__global__ void CombineSplitsKernel(DecodeGeometry<A> g, Keys source,
                                    const A* __restrict__ part_max, const A* __restrict__ part_sum,
                                    const A* __restrict__ part_out, T* __restrict__ out,
                                    A* __restrict__ lse) {
  const int64_t row = blockIdx.x;  // (b · heads + head) · time + t
  const int t = static_cast<int>(row % g.time);
  const int head = static_cast<int>((row / g.time) % g.heads);
  const int64_t b = row / (static_cast<int64_t>(g.time) * g.heads);
  const bool bad = __syncthreads_or(
      source.Bad(static_cast<int>(b), static_cast<int>(threadIdx.x), static_cast<int>(blockDim.x)));
  const A* m = part_max + row * g.splits;
  const A* l = part_sum + row * g.splits;
  const A neg_inf = -Infinity<A>();
  A total_max = neg_inf;
  for (int s = 0; s < g.splits; ++s) total_max = max(total_max, m[s]);
  A total = 0;
  for (int s = 0; s < g.splits; ++s)
    if (m[s] != neg_inf) total += l[s] * Exp(m[s] - total_max);
  T* o = out + ((b * g.time + t) * g.heads + head) * g.dv;
  const A nan = QuietNaN<A>();
  for (int c = threadIdx.x; c < g.dv; c += blockDim.x) {
    A value = bad ? nan : A(0);
    if (!bad && total > 0) {
      for (int s = 0; s < g.splits; ++s)
        if (m[s] != neg_inf)
          value += part_out[(row * g.splits + s) * g.dv + c] * Exp(m[s] - total_max);
      value /= total;
    }
    o[c] = cuda::Store<T>(value);
  }
  if (threadIdx.x == 0)
    lse[(b * g.heads + head) * g.time + t] = bad         ? nan
                                             : total > 0 ? total_max + log(total)
                                                         : neg_inf;
}

int Multiprocessors() {
  static int count = [] {
    int device = 0, n = 132;
    if (cudaGetDevice(&device) == cudaSuccess)
      cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, device);
    return n;
  }();
  return count;
}

// The geometry's query side, from q [batch, time, heads, d].
template <typename A>
DecodeGeometry<A> QueryGeometry(const Tensor& q) {
  DecodeGeometry<A> g{};
  g.batch = static_cast<int>(q.dim(0));
  g.time = static_cast<int>(q.dim(1));
  g.heads = static_cast<int>(q.dim(2));
  g.d = static_cast<int>(q.dim(3));
  return g;
}

// Launches both kernels over `source`. g is filled but for scale, the splits and group_rows;
// o [batch, time, heads, dv] and lse [batch, heads, time] are the outputs.
template <typename Host, typename Keys>
Status LaunchSplitKey(KernelContext& ctx, DecodeGeometry<AccumulatorOf<Host>> g, Keys source,
                      const Tensor& q, const Tensor& o, const Tensor& lse) {
  using T = cuda::DeviceT<Host>;
  using A = AccumulatorOf<Host>;
  if (g.dv > kMaxCols * kThreads) {
    return InvalidArgument("the value head dim " + std::to_string(g.dv) + " is above the " +
                           std::to_string(kMaxCols * kThreads) + " the CUDA kernel takes");
  }
  if (lse.dtype() != DataTypeOf<A>())
    return InvalidArgument(std::string("lse must be ") + DataTypeName(DataTypeOf<A>()));
  if (g.batch == 0 || g.time == 0 || g.heads == 0) return Status();
  double scale = ctx.attrs().Float("scale");
  g.scale = static_cast<A>(scale > 0 ? scale : 1.0 / std::sqrt(static_cast<double>(g.d)));
  g.group_rows = g.heads / g.kv_heads * g.time;
  const int64_t row_blocks = (g.group_rows + kRows - 1) / kRows;
  const int64_t sequences = static_cast<int64_t>(g.batch) * g.kv_heads;
  // Enough splits for two blocks per multiprocessor, none shorter than two tiles.
  const int64_t blocks = row_blocks * sequences;
  int64_t splits = std::clamp<int64_t>((2 * Multiprocessors() + blocks - 1) / blocks, 1,
                                       std::max<int64_t>(1, g.keys / (2 * kKeys)));
  g.split_keys = static_cast<int>((g.keys + splits - 1) / splits);
  g.split_keys = std::max(kKeys, (g.split_keys + kKeys - 1) / kKeys * kKeys);
  g.splits = static_cast<int>(std::max<int64_t>(1, (g.keys + g.split_keys - 1) / g.split_keys));
  if (row_blocks > 65535 || sequences > 65535)
    return InvalidArgument("too many query rows or batch·kv heads for the CUDA decode kernel");

  const size_t smem =
      sizeof(A) * (static_cast<size_t>(kRows) * g.d + static_cast<size_t>(kKeys) * (g.d + 1) +
                   static_cast<size_t>(kKeys) * g.dv + kRows * kKeys + 3 * kRows);
  auto* kernel = SplitKeyAttentionKernel<T, A, Keys>;
  WEIR_RETURN_IF_ERROR(cuda::Check(
      cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                           static_cast<int>(smem)),
      ("shared memory (" + std::to_string(smem) + " bytes) for head dims " + std::to_string(g.d) +
       "/" + std::to_string(g.dv) + " in " + DataTypeName(q.dtype()))
          .c_str()));
  const int64_t partials = static_cast<int64_t>(g.batch) * g.heads * g.time * g.splits;
  WEIR_ASSIGN_OR_RETURN(Tensor part_max, cuda::Scratch(ctx, DataTypeOf<A>(), {partials}));
  WEIR_ASSIGN_OR_RETURN(Tensor part_sum, cuda::Scratch(ctx, DataTypeOf<A>(), {partials}));
  WEIR_ASSIGN_OR_RETURN(
      Tensor part_out, cuda::Scratch(ctx, DataTypeOf<A>(), {partials, static_cast<int64_t>(g.dv)}));
  cudaStream_t stream = cuda::Stream(ctx);
  dim3 grid(static_cast<unsigned>(g.splits), static_cast<unsigned>(row_blocks),
            static_cast<unsigned>(sequences));
  kernel<<<grid, kThreads, smem, stream>>>(g, cuda::Data<Host>(q), source, part_max.data<A>(),
                                           part_sum.data<A>(), part_out.data<A>());
  WEIR_RETURN_IF_ERROR(cuda::CheckLaunch("SplitKeyAttentionKernel"));
  const unsigned rows = static_cast<unsigned>(static_cast<int64_t>(g.batch) * g.heads * g.time);
  CombineSplitsKernel<T, A, Keys><<<rows, 128, 0, stream>>>(g, source, part_max.data<A>(),
                                                            part_sum.data<A>(), part_out.data<A>(),
                                                            cuda::Data<Host>(o), lse.data<A>());
  return cuda::CheckLaunch("CombineSplitsKernel");
}

Status SplitKeyAttention(KernelContext& ctx) {
  const Tensor &q = ctx.input(0), &k = ctx.input(1), &v = ctx.input(2);
  if (ctx.num_inputs() > 3) {
    return InvalidArgument(
        "segments with head dims above " + std::to_string(kFlashMaxDim) +
        " or with cached keys are not supported by the CUDA kernels (decoding uses none)");
  }
  return DispatchFloat(q.dtype(), [&](auto tag) -> Status {
    using Host = decltype(tag);
    using T = cuda::DeviceT<Host>;
    auto g = QueryGeometry<AccumulatorOf<Host>>(q);
    g.keys = static_cast<int>(k.dim(1));
    g.kv_heads = static_cast<int>(k.dim(2));
    g.dv = static_cast<int>(v.dim(3));
    g.causal = ctx.attrs().Bool("causal");
    DenseKeys<T> keys{cuda::Data<Host>(k), cuda::Data<Host>(v), g.keys, g.kv_heads, g.d, g.dv};
    return LaunchSplitKey<Host>(ctx, g, keys, q, ctx.output(0), ctx.output(1));
  });
}

}  // namespace

// nn.Attention's CUDA kernel: the flash kernels, or split-key attention for head dims above
// theirs and for decoding (a few queries over a long cache).
Status AttentionCuda(KernelContext& ctx) {
  const Tensor &q = ctx.input(0), &k = ctx.input(1), &v = ctx.input(2);
  if (q.rank() != 4 || k.rank() != 4 || v.rank() != 4) return AttentionForwardCuda(ctx);
  const bool large_dims = q.dim(3) > kFlashMaxDim || v.dim(3) > kFlashMaxDim;
  const bool decoding = q.dim(1) <= 8 && k.dim(1) >= 8 * kKeys && ctx.num_inputs() == 3;
  const bool same_types = q.dtype() == k.dtype() && q.dtype() == v.dtype();
  const bool shapes_agree = k.dim(0) == q.dim(0) && v.dim(0) == q.dim(0) && k.dim(3) == q.dim(3) &&
                            v.dim(1) == k.dim(1) && v.dim(2) == k.dim(2) && k.dim(2) > 0 &&
                            q.dim(2) % k.dim(2) == 0;
  // Malformed inputs take the flash path, whose checks name them as the CPU's do.
  if (same_types && shapes_agree && (large_dims || decoding)) return SplitKeyAttention(ctx);
  return AttentionForwardCuda(ctx);
}

// nn.PagedLatentAttention's CUDA kernel: split-key attention over the paged cache and the new
// rows. The splits are sized for a full block table (the lengths stay on the device); splits
// past a sequence's keys end at once.
Status PagedLatentAttentionCuda(KernelContext& ctx) {
  const Tensor &q = ctx.input(0), &kv = ctx.input(1), &cache = ctx.input(2);
  const Tensor &table = ctx.input(3), &lengths = ctx.input(4);
  const int64_t value_dim = ctx.attrs().Int("value_dim");
  const int64_t keys = table.dim(1) * cache.dim(1) + q.dim(1);
  if (keys > std::numeric_limits<int>::max() / 2)
    return InvalidArgument("the block table holds too many tokens for the CUDA kernel");
  return DispatchFloat(q.dtype(), [&](auto tag) -> Status {
    using Host = decltype(tag);
    using T = cuda::DeviceT<Host>;
    auto g = QueryGeometry<AccumulatorOf<Host>>(q);
    g.keys = static_cast<int>(keys);
    g.kv_heads = 1;
    g.dv = static_cast<int>(value_dim > 0 ? value_dim : q.dim(3));
    g.causal = true;
    PagedKeys<T> source{cuda::Data<Host>(kv),
                        cuda::Data<Host>(cache),
                        table.data<int64_t>(),
                        lengths.data<int64_t>(),
                        g.time,
                        g.d,
                        static_cast<int>(cache.dim(1)),
                        static_cast<int>(table.dim(1)),
                        cache.dim(0)};
    return LaunchSplitKey<Host>(ctx, g, source, q, ctx.output(0), ctx.output(1));
  });
}

}  // namespace weir::nn
