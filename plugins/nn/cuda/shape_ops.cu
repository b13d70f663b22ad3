// CUDA kernels of the nn shape ops: nn.Reshape, nn.Cached and nn.Weight (plain copies where the
// program cannot use a view), nn.Transpose, nn.Concat, nn.Split, nn.Slice, nn.SliceGrad,
// nn.Expand (one strided copy serves them all) and nn.ExpandGrad (a sum over the expanded dim).
//
// The copies move bytes, so they take any dtype, as their CPU kernels do. A copy is described by
// a shape and the element strides of its source and destination; before launching, dims of size
// 1 are dropped, dims that are contiguous in both are merged, and a contiguous innermost run is
// moved in wider words (up to 16 bytes), so the common cases become one memcpy or a vectorized,
// coalesced loop. A copy whose source is contiguous along another dim than the destination (a
// real transpose of the two innermost dims) goes through shared-memory tiles instead, so that
// both reads and writes are coalesced.
#include <algorithm>
#include <cstdint>
#include <limits>
#include <string>
#include <type_traits>
#include <vector>

#include "weir/cuda_kernel.h"

namespace weir::nn::pointwise_cuda {
namespace {

using weir::cuda::Blocks;
using weir::cuda::Check;
using weir::cuda::CheckLaunch;
using weir::cuda::Data;
using weir::cuda::DeviceT;
using weir::cuda::Load;
using weir::cuda::Store;
using weir::cuda::Stream;

// Dims a copy may have after merging; a tensor of more dims that do not merge is refused.
constexpr int kMaxCopyRank = 8;

template <typename Index>
struct CopyDims {
  int rank = 0;
  Index shape[kMaxCopyRank] = {};
  Index src_stride[kMaxCopyRank] = {};  // in elements of the (possibly widened) word
  Index dst_stride[kMaxCopyRank] = {};
};

// Element i of the copy's index space (row-major over its shape) goes from its offset under the
// source strides to its offset under the destination strides, so the same kernel gathers strided
// views (transposes, slices, broadcasts) and scatters into strided parts of outputs (concat,
// slice gradients). Index is 32-bit when every offset fits, since
// 64-bit division costs several times more.
template <typename Word, typename Index>
__global__ void StridedCopyKernel(const Word* __restrict__ src, Word* __restrict__ dst, Index n,
                                  CopyDims<Index> dims) {
  Index stride = static_cast<Index>(gridDim.x) * blockDim.x;
  for (Index i = static_cast<Index>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    Index rest = i, from = 0, to = 0;
    for (int d = dims.rank - 1; d > 0; --d) {
      Index q = rest / dims.shape[d];
      Index coord = rest - q * dims.shape[d];
      from += coord * dims.src_stride[d];
      to += coord * dims.dst_stride[d];
      rest = q;
    }
    from += rest * dims.src_stride[0];
    to += rest * dims.dst_stride[0];
    dst[to] = src[from];
  }
}

// A transpose through shared memory: dim `a` is contiguous in the source, the last dim `b` in the
// destination. A block reads a kTile × kTile tile along a (coalesced), and writes it along b
// (coalesced); the remaining dims are a batch, decomposed once per tile.
constexpr int kTile = 32, kTileRows = 8;

struct TileDims {
  int batch_rank = 0;
  int64_t batch_shape[kMaxCopyRank] = {};
  int64_t batch_src[kMaxCopyRank] = {};
  int64_t batch_dst[kMaxCopyRank] = {};
  int64_t batch = 1;
  int64_t len_a = 0, len_b = 0;  // extents of the two transposed dims
  int64_t src_stride_b = 0;      // the source stride of b (a's is 1)
  int64_t dst_stride_a = 0;      // the destination stride of a (b's is 1)
  int64_t tiles_a = 0, tiles_b = 0;
};

template <typename Word>
__global__ void __launch_bounds__(kTile* kTileRows)
    TiledTransposeKernel(const Word* __restrict__ src, Word* __restrict__ dst, TileDims p) {
  __shared__ Word tile[kTile][kTile + 1];  // +1: the column reads hit distinct banks
  int64_t tiles = p.batch * p.tiles_a * p.tiles_b;
  for (int64_t t = blockIdx.x; t < tiles; t += gridDim.x) {  // uniform across the block
    int64_t tile_b = t % p.tiles_b, rest = t / p.tiles_b;
    int64_t tile_a = rest % p.tiles_a, batch = rest / p.tiles_a;
    int64_t from = 0, to = 0;
    for (int d = p.batch_rank - 1; d >= 0; --d) {
      int64_t coord = batch % p.batch_shape[d];
      batch /= p.batch_shape[d];
      from += coord * p.batch_src[d];
      to += coord * p.batch_dst[d];
    }
    int64_t a0 = tile_a * kTile, b0 = tile_b * kTile;
    int64_t a = a0 + threadIdx.x;
    for (int j = threadIdx.y; j < kTile; j += kTileRows) {
      int64_t b = b0 + j;
      if (a < p.len_a && b < p.len_b) tile[j][threadIdx.x] = src[from + a + b * p.src_stride_b];
    }
    __syncthreads();
    int64_t b = b0 + threadIdx.x;
    for (int j = threadIdx.y; j < kTile; j += kTileRows) {
      int64_t a_row = a0 + j;
      if (a_row < p.len_a && b < p.len_b)
        dst[to + b + a_row * p.dst_stride_a] = tile[threadIdx.x][j];
    }
    __syncthreads();  // the next tile overwrites this one
  }
}

// One dim of a copy: its extent and its strides (in elements) on both sides.
struct Dim {
  int64_t size, src, dst;
};

// The copy with dims of size 1 dropped and neighbours that are contiguous on both sides merged.
std::vector<Dim> Normalize(const std::vector<Dim>& dims) {
  std::vector<Dim> out;
  for (const Dim& d : dims) {
    if (d.size == 1) continue;
    if (!out.empty() && out.back().src == d.size * d.src && out.back().dst == d.size * d.dst) {
      out.back() = {out.back().size * d.size, d.src, d.dst};
      continue;
    }
    out.push_back(d);
  }
  return out;
}

template <typename Index>
CopyDims<Index> ToCopyDims(const std::vector<Dim>& dims) {
  CopyDims<Index> c;
  c.rank = static_cast<int>(dims.size());
  for (size_t d = 0; d < dims.size(); ++d) {
    c.shape[d] = static_cast<Index>(dims[d].size);
    c.src_stride[d] = static_cast<Index>(dims[d].src);
    c.dst_stride[d] = static_cast<Index>(dims[d].dst);
  }
  return c;
}

template <typename Word>
Status LaunchFlat(const char* src, char* dst, const std::vector<Dim>& dims, cudaStream_t stream) {
  int64_t n = 1, last_src = 0, last_dst = 0;
  for (const Dim& d : dims) {
    n *= d.size;
    last_src += (d.size - 1) * d.src;
    last_dst += (d.size - 1) * d.dst;
  }
  constexpr unsigned kThreads = 256;
  const Word* from = reinterpret_cast<const Word*>(src);
  Word* to = reinterpret_cast<Word*>(dst);
  // The grid-stride loop may compute i + stride past n: keep that below 2^32 too.
  int64_t limit = n + int64_t{8192} * kThreads;
  if (std::max({limit, last_src, last_dst}) < (int64_t{1} << 32)) {
    StridedCopyKernel<Word, uint32_t><<<Blocks(n, kThreads), kThreads, 0, stream>>>(
        from, to, static_cast<uint32_t>(n), ToCopyDims<uint32_t>(dims));
  } else {
    StridedCopyKernel<Word, int64_t>
        <<<Blocks(n, kThreads), kThreads, 0, stream>>>(from, to, n, ToCopyDims<int64_t>(dims));
  }
  return CheckLaunch("StridedCopyKernel");
}

template <typename Word>
Status LaunchTiled(const char* src, char* dst, const std::vector<Dim>& dims, size_t a,
                   cudaStream_t stream) {
  size_t b = dims.size() - 1;
  TileDims p;
  for (size_t d = 0; d < dims.size(); ++d) {
    if (d == a || d == b) continue;
    p.batch_shape[p.batch_rank] = dims[d].size;
    p.batch_src[p.batch_rank] = dims[d].src;
    p.batch_dst[p.batch_rank] = dims[d].dst;
    p.batch *= dims[d].size;
    ++p.batch_rank;
  }
  p.len_a = dims[a].size;
  p.len_b = dims[b].size;
  p.src_stride_b = dims[b].src;
  p.dst_stride_a = dims[a].dst;
  p.tiles_a = (p.len_a + kTile - 1) / kTile;
  p.tiles_b = (p.len_b + kTile - 1) / kTile;
  int64_t tiles = p.batch * p.tiles_a * p.tiles_b;
  unsigned blocks = static_cast<unsigned>(std::min<int64_t>(tiles, 65535));
  TiledTransposeKernel<Word><<<blocks, dim3(kTile, kTileRows), 0, stream>>>(
      reinterpret_cast<const Word*>(src), reinterpret_cast<Word*>(dst), p);
  return CheckLaunch("TiledTransposeKernel");
}

// The index of the dim that is contiguous in the source but not the last one, where tiling pays
// (the last dim is contiguous in the destination and both transposed dims are long enough to fill
// a good part of a tile); -1 otherwise.
int TiledDim(const std::vector<Dim>& dims) {
  if (dims.size() < 2 || dims.back().dst != 1 || dims.back().src == 1) return -1;
  if (dims.back().size < kTile / 2) return -1;
  for (size_t d = 0; d + 1 < dims.size(); ++d)
    if (dims[d].src == 1 && dims[d].size >= kTile / 2) return static_cast<int>(d);
  return -1;
}

// How a copy runs: over `dims` (normalized) in words of `word_bytes`, as one memcpy, through
// tiles with dim `tiled_dim` contiguous in the source, or with the flat kernel.
struct CopyPlan {
  std::vector<Dim> dims;
  size_t word_bytes = 0;
  bool memcpy = false;
  int tiled_dim = -1;
};

// The plan for copying elements of `element_bytes` bytes from src to dst over `dims` (none of
// them empty, no negative strides).
CopyPlan PlanCopy(const void* src, const void* dst, size_t element_bytes,
                  const std::vector<Dim>& dims) {
  CopyPlan plan;
  plan.dims = Normalize(dims);
  std::vector<Dim>& d = plan.dims;
  if (d.empty()) d.push_back({1, 1, 1});  // one element
  // Wider words while the innermost dim is contiguous on both sides, of even length, and every
  // other stride and both addresses stay aligned to the wider word.
  auto aligned = [&](size_t bytes) {
    return reinterpret_cast<uintptr_t>(src) % bytes == 0 &&
           reinterpret_cast<uintptr_t>(dst) % bytes == 0;
  };
  auto even_strides = [&] {
    for (size_t k = 0; k + 1 < d.size(); ++k)
      if (d[k].src % 2 != 0 || d[k].dst % 2 != 0) return false;
    return true;
  };
  plan.memcpy = d.size() == 1 && d[0].src == 1 && d[0].dst == 1;
  while (!plan.memcpy && element_bytes < 16 && d.back().src == 1 && d.back().dst == 1 &&
         d.back().size % 2 == 0 && aligned(element_bytes * 2) && even_strides()) {
    for (size_t k = 0; k + 1 < d.size(); ++k) {
      d[k].src /= 2;
      d[k].dst /= 2;
    }
    d.back().size /= 2;
    element_bytes *= 2;
  }
  plan.word_bytes = element_bytes;
  if (!plan.memcpy && element_bytes <= 8) plan.tiled_dim = TiledDim(d);
  return plan;
}

// Copies elements of `element_bytes` bytes from src to dst over `dims` (strides in elements).
Status StridedCopy(const KernelContext& ctx, const void* src, void* dst, size_t element_bytes,
                   const std::vector<Dim>& dims) {
  for (const Dim& d : dims) {
    if (d.size == 0) return Status();  // nothing to copy
    if (d.src < 0 || d.dst < 0) return Internal("a strided copy with negative strides");
  }
  CopyPlan plan = PlanCopy(src, dst, element_bytes, dims);
  cudaStream_t stream = Stream(ctx);
  if (plan.memcpy) {
    return Check(cudaMemcpyAsync(dst, src, static_cast<size_t>(plan.dims[0].size) * element_bytes,
                                 cudaMemcpyDeviceToDevice, stream),
                 "cudaMemcpyAsync");
  }
  if (plan.dims.size() > static_cast<size_t>(kMaxCopyRank))
    return InvalidArgument("a copy over " + std::to_string(plan.dims.size()) +
                           " dims that do not merge (at most " + std::to_string(kMaxCopyRank) +
                           " are supported)");
  const char* from = static_cast<const char*>(src);
  char* to = static_cast<char*>(dst);
  if (plan.tiled_dim >= 0) {
    size_t a = static_cast<size_t>(plan.tiled_dim);
    switch (plan.word_bytes) {
      case 1:
        return LaunchTiled<uint8_t>(from, to, plan.dims, a, stream);
      case 2:
        return LaunchTiled<uint16_t>(from, to, plan.dims, a, stream);
      case 4:
        return LaunchTiled<uint32_t>(from, to, plan.dims, a, stream);
      default:
        return LaunchTiled<uint64_t>(from, to, plan.dims, a, stream);
    }
  }
  switch (plan.word_bytes) {
    case 1:
      return LaunchFlat<uint8_t>(from, to, plan.dims, stream);
    case 2:
      return LaunchFlat<uint16_t>(from, to, plan.dims, stream);
    case 4:
      return LaunchFlat<uint32_t>(from, to, plan.dims, stream);
    case 8:
      return LaunchFlat<uint64_t>(from, to, plan.dims, stream);
    case 16:
      return LaunchFlat<uint4>(from, to, plan.dims, stream);
    default:
      return InvalidArgument("no copy for elements of " + std::to_string(plan.word_bytes) +
                             " bytes");
  }
}

// The dims of a tensor with its own strides on the source side and `dst_strides` on the other.
std::vector<Dim> DimsOf(const Shape& shape, const Shape& src_strides, const Shape& dst_strides) {
  std::vector<Dim> dims(shape.size());
  for (size_t d = 0; d < shape.size(); ++d) dims[d] = {shape[d], src_strides[d], dst_strides[d]};
  return dims;
}

// `elements` elements past a device pointer (the host only computes the address).
template <typename P>
P* Offset(P* p, int64_t elements, size_t element_bytes) {
  using Byte = std::conditional_t<std::is_const_v<P>, const char, char>;
  return static_cast<Byte*>(p) + elements * static_cast<int64_t>(element_bytes);
}

int Axis(int64_t axis, int rank) { return static_cast<int>(axis < 0 ? axis + rank : axis); }

Status CheckAxis(int axis, int rank, const char* op) {
  if (axis < 0 || axis >= rank)
    return InvalidArgument(std::string(op) + ": axis " + std::to_string(axis) +
                           " is outside a tensor of " + std::to_string(rank) + " dims");
  return Status();
}

// Output `out` as a copy of the dense view of `in` (its own strides).
Status CopyInto(const KernelContext& ctx, const Tensor& in, Tensor& out) {
  if (in.numel() != out.numel() || in.dtype() != out.dtype())
    return Internal("copy of " + in.DebugString() + " into " + out.DebugString());
  if (in.numel() == 0 || in.raw_data() == out.raw_data()) return Status();  // nothing to move
  if (in.is_contiguous()) {
    return Check(cudaMemcpyAsync(out.raw_data(), in.raw_data(), out.nbytes(),
                                 cudaMemcpyDeviceToDevice, Stream(ctx)),
                 "cudaMemcpyAsync");
  }
  // A strided input (not expected: programs keep values dense) is walked in its own shape.
  if (out.shape() != in.shape()) return Internal("a strided input to a reshaping copy");
  return StridedCopy(ctx, in.raw_data(), out.raw_data(), DataTypeSize(in.dtype()),
                     DimsOf(in.shape(), in.strides(), out.strides()));
}

}  // namespace

// nn.Reshape, nn.Cached and nn.Weight: the same bytes in the output.
Status CopyCuda(KernelContext& ctx) { return CopyInto(ctx, ctx.input(0), ctx.output(0)); }

Status TransposeCuda(KernelContext& ctx) {
  const Tensor& x = ctx.input(0);
  Tensor& y = ctx.output(0);
  std::vector<int64_t> perm = ctx.attrs().IntList("perm");
  if (static_cast<int>(perm.size()) != x.rank() || y.rank() != x.rank())
    return InvalidArgument("nn.Transpose: perm of " + std::to_string(perm.size()) + " dims for " +
                           x.DebugString());
  // Output dim i walks input dim perm[i].
  std::vector<Dim> dims(perm.size());
  for (size_t i = 0; i < perm.size(); ++i) {
    size_t from = static_cast<size_t>(perm[i]);
    if (perm[i] < 0 || from >= perm.size() || x.shape()[from] != y.shape()[i])
      return InvalidArgument("nn.Transpose: perm does not map " + x.DebugString() + " to " +
                             y.DebugString());
    dims[i] = {y.shape()[i], x.strides()[from], y.strides()[i]};
  }
  return StridedCopy(ctx, x.raw_data(), y.raw_data(), DataTypeSize(x.dtype()), std::move(dims));
}

// Each input goes into its range of the output's axis: a strided destination.
Status ConcatCuda(KernelContext& ctx) {
  Tensor& out = ctx.output(0);
  int axis = Axis(ctx.attrs().Int("axis"), out.rank());
  WEIR_RETURN_IF_ERROR(CheckAxis(axis, out.rank(), "nn.Concat"));
  size_t element_bytes = DataTypeSize(out.dtype());
  int64_t offset = 0;
  for (int i = 0; i < ctx.num_inputs(); ++i) {
    const Tensor& in = ctx.input(i);
    if (in.rank() != out.rank() || in.dtype() != out.dtype())
      return InvalidArgument("nn.Concat: input " + in.DebugString() + " for " + out.DebugString());
    int64_t n = in.dim(axis);
    if (offset + n > out.dim(axis))
      return InvalidArgument("nn.Concat: the inputs overrun " + out.DebugString());
    void* dst =
        Offset(out.raw_data(), offset * out.strides()[static_cast<size_t>(axis)], element_bytes);
    WEIR_RETURN_IF_ERROR(StridedCopy(ctx, in.raw_data(), dst, element_bytes,
                                     DimsOf(in.shape(), in.strides(), out.strides())));
    offset += n;
  }
  return Status();
}

// Each output is the range of the input's axis that its size says: a strided source.
Status SplitCuda(KernelContext& ctx) {
  const Tensor& x = ctx.input(0);
  int axis = Axis(ctx.attrs().Int("axis"), x.rank());
  WEIR_RETURN_IF_ERROR(CheckAxis(axis, x.rank(), "nn.Split"));
  size_t element_bytes = DataTypeSize(x.dtype());
  int64_t begin = 0;
  for (int i = 0; i < ctx.num_outputs(); ++i) {
    Tensor& part = ctx.output(i);
    if (part.rank() != x.rank() || part.dtype() != x.dtype())
      return InvalidArgument("nn.Split: output " + part.DebugString() + " of " + x.DebugString());
    int64_t n = part.dim(axis);
    if (begin + n > x.dim(axis))
      return InvalidArgument("nn.Split: the parts overrun " + x.DebugString());
    const void* src = Offset(static_cast<const void*>(x.raw_data()),
                             begin * x.strides()[static_cast<size_t>(axis)], element_bytes);
    WEIR_RETURN_IF_ERROR(StridedCopy(ctx, src, part.raw_data(), element_bytes,
                                     DimsOf(part.shape(), x.strides(), part.strides())));
    begin += n;
  }
  return Status();
}

Status SliceCuda(KernelContext& ctx) {
  const Tensor& x = ctx.input(0);
  Tensor& y = ctx.output(0);
  int axis = Axis(ctx.attrs().Int("axis"), x.rank());
  WEIR_RETURN_IF_ERROR(CheckAxis(axis, x.rank(), "nn.Slice"));
  // [begin, end) as the CPU kernel reads it: negative counts from the end, the default end
  // (int64 max) is the end.
  int64_t n = x.dim(axis), begin = ctx.attrs().Int("begin"), end = ctx.attrs().Int("end");
  if (end == std::numeric_limits<int64_t>::max()) end = n;
  if (begin < 0) begin += n;
  if (end < 0) end += n;
  if (begin < 0 || end < begin || end > n || y.dim(axis) != end - begin || y.rank() != x.rank())
    return InvalidArgument("nn.Slice: [" + std::to_string(begin) + ", " + std::to_string(end) +
                           ") of axis " + std::to_string(axis) + " of " + x.DebugString() +
                           " into " + y.DebugString());
  size_t element_bytes = DataTypeSize(x.dtype());
  const void* src = Offset(static_cast<const void*>(x.raw_data()),
                           begin * x.strides()[static_cast<size_t>(axis)], element_bytes);
  return StridedCopy(ctx, src, y.raw_data(), element_bytes,
                     DimsOf(y.shape(), x.strides(), y.strides()));
}

// Zeros, then dy into [begin, begin + len) of the axis.
Status SliceGradCuda(KernelContext& ctx) {
  const Tensor& dy = ctx.input(0);
  Tensor& dx = ctx.output(0);
  int axis = Axis(ctx.attrs().Int("axis"), dx.rank());
  WEIR_RETURN_IF_ERROR(CheckAxis(axis, dx.rank(), "nn.SliceGrad"));
  int64_t begin = ctx.attrs().Int("begin");
  if (dy.rank() != dx.rank() || begin < 0 || begin + dy.dim(axis) > dx.dim(axis))
    return InvalidArgument("nn.SliceGrad: " + dy.DebugString() + " at " + std::to_string(begin) +
                           " of axis " + std::to_string(axis) + " of " + dx.DebugString());
  if (dx.numel() == 0) return Status();
  WEIR_RETURN_IF_ERROR(
      Check(cudaMemsetAsync(dx.raw_data(), 0, dx.nbytes(), Stream(ctx)), "cudaMemsetAsync"));
  size_t element_bytes = DataTypeSize(dx.dtype());
  void* dst = Offset(dx.raw_data(), begin * dx.strides()[static_cast<size_t>(axis)], element_bytes);
  return StridedCopy(ctx, dy.raw_data(), dst, element_bytes,
                     DimsOf(dy.shape(), dy.strides(), dx.strides()));
}

// The source repeats along the axis: stride 0 there.
Status ExpandCuda(KernelContext& ctx) {
  const Tensor& x = ctx.input(0);
  Tensor& y = ctx.output(0);
  int axis = Axis(ctx.attrs().Int("axis"), x.rank());
  WEIR_RETURN_IF_ERROR(CheckAxis(axis, x.rank(), "nn.Expand"));
  if (x.dim(axis) != 1 || y.rank() != x.rank())
    return InvalidArgument("nn.Expand: axis " + std::to_string(axis) + " of " + x.DebugString() +
                           " is not 1");
  Shape src_strides = x.strides();
  src_strides[static_cast<size_t>(axis)] = 0;
  return StridedCopy(ctx, x.raw_data(), y.raw_data(), DataTypeSize(x.dtype()),
                     DimsOf(y.shape(), src_strides, y.strides()));
}

namespace {

// dx[o, i] = Σ_r dy[o, r, i], r in order (the CPU kernel's order), in the accumulator type. One
// thread per output element; neighbouring threads read neighbouring elements of each row r.
template <typename D>
__global__ void ExpandGradKernel(const D* __restrict__ dy, D* __restrict__ dx, int64_t outer,
                                 int64_t size, int64_t inner) {
  using A = decltype(Load(D{}));
  int64_t n = outer * inner, stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t k = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; k < n;
       k += stride) {
    int64_t o = k / inner, i = k - o * inner;
    const D* column = dy + o * size * inner + i;
    A sum = 0;
    for (int64_t r = 0; r < size; ++r) sum += Load(column[r * inner]);
    dx[k] = Store<D>(sum);
  }
}

}  // namespace

Status ExpandGradCuda(KernelContext& ctx) {
  const Tensor& dy = ctx.input(0);
  Tensor& dx = ctx.output(0);
  int axis = Axis(ctx.attrs().Int("axis"), dy.rank());
  WEIR_RETURN_IF_ERROR(CheckAxis(axis, dy.rank(), "nn.ExpandGrad"));
  if (!dy.is_contiguous() || dx.rank() != dy.rank() || dx.dim(axis) != 1)
    return InvalidArgument("nn.ExpandGrad: " + dy.DebugString() + " into " + dx.DebugString());
  int64_t outer = 1, inner = 1, size = dy.dim(axis);
  for (int d = 0; d < axis; ++d) outer *= dy.dim(d);
  for (int d = axis + 1; d < dy.rank(); ++d) inner *= dy.dim(d);
  if (dx.numel() == 0) return Status();
  return DispatchFloat(dx.dtype(), [&](auto tag) {
    using T = decltype(tag);
    constexpr unsigned kThreads = 256;
    ExpandGradKernel<DeviceT<T>><<<Blocks(outer * inner, kThreads), kThreads, 0, Stream(ctx)>>>(
        Data<T>(dy), Data<T>(dx), outer, size, inner);
    return CheckLaunch("ExpandGradKernel");
  });
}

}  // namespace weir::nn::pointwise_cuda
