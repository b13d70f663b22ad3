// CUDA kernels of the nn plugin's row reductions: nn.RMSNorm and its two gradients,
// nn.CrossEntropy and its gradient, nn.ArgmaxMatch and nn.SegmentIds. Each follows its CPU
// kernel (rms_norm/, cross_entropy/, segments/) in semantics and in accumulator precision: f32
// for f32 and bf16, f64 for f64, losses summed in f64.
//
// A row is reduced by one block; reductions combine per-thread partials in a fixed tree, so
// every result is deterministic (run to run), though not bit-equal to the CPU's serial sums.
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <type_traits>

#include "weir/cuda_kernel.h"

namespace weir::nn {
namespace {

using cuda::CheckLaunch;
using cuda::Data;
using cuda::DeviceT;
using cuda::Scratch;
using cuda::Stream;

constexpr unsigned kWarpSize = 32;
constexpr unsigned kFullMask = 0xffffffffu;
// Threads of the single block that finishes a reduction over rows.
constexpr unsigned kFinishThreads = 1024;

template <typename T>
constexpr DataType AccumulatorDtype() {
  return std::is_same_v<AccumulatorOf<T>, double> ? DT_F64 : DT_F32;
}

// Rows of a [..., width] tensor: the product of its leading dims (so width 0 is not a division).
int64_t LeadingRows(const Shape& shape) {
  int64_t rows = 1;
  for (size_t i = 0; i + 1 < shape.size(); ++i) rows *= shape[i];
  return rows;
}

// Threads for one block per row of `width` elements: at least four elements each up to
// `max_threads`, a whole number of warps.
unsigned RowThreads(int64_t width, unsigned max_threads = 512) {
  unsigned threads = kWarpSize;
  while (threads < max_threads && int64_t{threads} * 4 < width) threads *= 2;
  return threads;
}

// One block per row; a grid this large already fills the GPU many times, so further rows are
// strided over.
unsigned RowBlocks(int64_t rows) {
  return static_cast<unsigned>(std::clamp<int64_t>(rows, 1, int64_t{1} << 20));
}

// Device math in the accumulator type (float or double).
__device__ __forceinline__ float DeviceExp(float v) { return expf(v); }
__device__ __forceinline__ double DeviceExp(double v) { return exp(v); }
__device__ __forceinline__ float DeviceLog(float v) { return logf(v); }
__device__ __forceinline__ double DeviceLog(double v) { return log(v); }
__device__ __forceinline__ float DeviceSqrt(float v) { return sqrtf(v); }
__device__ __forceinline__ double DeviceSqrt(double v) { return sqrt(v); }
using cuda::Infinity;
using cuda::QuietNaN;

// ---- Block reductions ----------------------------------------------------------------------

template <typename V>
__device__ __forceinline__ V ShflDown(V v, unsigned offset) {
  return __shfl_down_sync(kFullMask, v, offset);
}

struct Plus {
  template <typename V>
  __device__ V operator()(V a, V b) const {
    return a + b;
  }
};

// Combines every thread's v with `op` (associative; the grouping is fixed, so the result is
// deterministic) and returns the result to every thread of the block. blockDim.x must be a whole
// number of warps; every thread must call it. `shared` holds kWarpSize + 1 values; a block may
// reduce again right away with the same array.
template <typename V, typename Op>
__device__ V BlockReduce(V v, Op op, V* shared) {
  for (unsigned offset = kWarpSize / 2; offset > 0; offset /= 2) v = op(v, ShflDown(v, offset));
  const unsigned lane = threadIdx.x % kWarpSize, warp = threadIdx.x / kWarpSize;
  __syncthreads();  // readers of the previous reduction's result are done with shared
  if (lane == 0) shared[warp] = v;
  __syncthreads();
  if (threadIdx.x == 0) {
    for (unsigned w = 1; w < blockDim.x / kWarpSize; ++w) v = op(v, shared[w]);
    shared[kWarpSize] = v;
  }
  __syncthreads();
  return shared[kWarpSize];
}

// ---- nn.RMSNorm ----------------------------------------------------------------------------

// 1 / sqrt(mean(row²) + eps) of the block's row, to every thread.
template <typename A, typename D>
__device__ A RowRstd(const D* row, int64_t d, A eps, A* shared) {
  A squares = 0;
  for (int64_t k = threadIdx.x; k < d; k += blockDim.x) {
    A v = cuda::Load(row[k]);
    squares += v * v;
  }
  squares = BlockReduce(squares, Plus{}, shared);
  return A(1) / DeviceSqrt(squares / static_cast<A>(d) + eps);
}

template <typename D, typename A>
__global__ void RmsNormKernel(const D* x, const D* weight, D* y, int64_t rows, int64_t d, A eps) {
  __shared__ A shared[kWarpSize + 1];
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    const D* xr = x + r * d;
    D* yr = y + r * d;
    const A rstd = RowRstd(xr, d, eps, shared);
    for (int64_t k = threadIdx.x; k < d; k += blockDim.x)
      yr[k] = cuda::Store<D>(cuda::Load(xr[k]) * rstd * cuda::Load(weight[k]));
  }
}

// dx = rstd · (g − xhat · mean(g · xhat)), g = dy · w, xhat = x · rstd: one pass for the two row
// sums, one for dx.
template <typename D, typename A>
__global__ void RmsNormGradXKernel(const D* x, const D* weight, const D* dy, D* dx, int64_t rows,
                                   int64_t d, A eps) {
  __shared__ A shared[kWarpSize + 1];
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    const D* xr = x + r * d;
    const D* gr = dy + r * d;
    A squares = 0, gwx = 0;
    for (int64_t k = threadIdx.x; k < d; k += blockDim.x) {
      A xv = cuda::Load(xr[k]);
      squares += xv * xv;
      gwx += cuda::Load(gr[k]) * cuda::Load(weight[k]) * xv;
    }
    squares = BlockReduce(squares, Plus{}, shared);
    gwx = BlockReduce(gwx, Plus{}, shared);
    const A rstd = A(1) / DeviceSqrt(squares / static_cast<A>(d) + eps);
    const A mean = gwx * rstd / static_cast<A>(d);
    D* dxr = dx + r * d;
    for (int64_t k = threadIdx.x; k < d; k += blockDim.x) {
      A xhat = cuda::Load(xr[k]) * rstd;
      dxr[k] = cuda::Store<D>(rstd * (cuda::Load(gr[k]) * cuda::Load(weight[k]) - xhat * mean));
    }
  }
}

template <typename D, typename A>
__global__ void RowRstdKernel(const D* x, A* rstd, int64_t rows, int64_t d, A eps) {
  __shared__ A shared[kWarpSize + 1];
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    const A value = RowRstd(x + r * d, d, eps, shared);
    if (threadIdx.x == 0) rstd[r] = value;
  }
}

// dw = Σ_rows dy · x · rstd, first pass: block (column tile, row chunk) sums its chunk's rows
// for kGradWColumns columns into partial[chunk, column]. A warp reads consecutive columns of a
// row (coalesced); the kGradWRowLanes rows in flight are summed in a fixed order.
constexpr unsigned kGradWColumns = 32;
constexpr unsigned kGradWRowLanes = 8;

template <typename D, typename A>
__global__ void RmsNormGradWPartials(const D* x, const D* dy, const A* rstd, A* partial,
                                     int64_t rows, int64_t d, int64_t rows_per_chunk) {
  __shared__ A lanes[kGradWRowLanes][kGradWColumns + 1];
  const int64_t column = int64_t{blockIdx.x} * kGradWColumns + threadIdx.x;
  const int64_t begin = int64_t{blockIdx.y} * rows_per_chunk;
  const int64_t end = begin + rows_per_chunk < rows ? begin + rows_per_chunk : rows;
  A sum = 0;
  if (column < d) {
    for (int64_t r = begin + threadIdx.y; r < end; r += kGradWRowLanes)
      sum += cuda::Load(dy[r * d + column]) * cuda::Load(x[r * d + column]) * rstd[r];
  }
  lanes[threadIdx.y][threadIdx.x] = sum;
  __syncthreads();
  if (threadIdx.y == 0 && column < d) {
    A chunk_sum = lanes[0][threadIdx.x];
    for (unsigned lane = 1; lane < kGradWRowLanes; ++lane) chunk_sum += lanes[lane][threadIdx.x];
    partial[int64_t{blockIdx.y} * d + column] = chunk_sum;
  }
}

// Second pass: each column sums its chunks in chunk order (deterministic).
template <typename D, typename A>
__global__ void RmsNormGradWFinish(const A* partial, D* dweight, int64_t chunks, int64_t d) {
  for (int64_t k = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; k < d;
       k += int64_t{gridDim.x} * blockDim.x) {
    A sum = 0;
    for (int64_t c = 0; c < chunks; ++c) sum += partial[c * d + k];
    dweight[k] = cuda::Store<D>(sum);
  }
}

Status CheckRmsNormInputs(const Tensor& x, const Tensor* weight, const Tensor& dy_or_y) {
  if (x.rank() < 1) return InvalidArgument("RMSNorm: x must have at least 1 dim");
  if (weight != nullptr && (weight->dtype() != x.dtype() || weight->numel() != x.dim(-1))) {
    return InvalidArgument("RMSNorm: weight " + weight->DebugString() + " must be [" +
                           std::to_string(x.dim(-1)) + "] of x's dtype, x is " + x.DebugString());
  }
  if (dy_or_y.dtype() != x.dtype() || dy_or_y.numel() != x.numel()) {
    return InvalidArgument("RMSNorm: " + dy_or_y.DebugString() + " does not match x " +
                           x.DebugString());
  }
  return Status();
}

}  // namespace

Status RmsNormCuda(KernelContext& ctx) {
  const Tensor& x = ctx.input(0);
  const Tensor& weight = ctx.input(1);
  Tensor& y = ctx.output(0);
  WEIR_RETURN_IF_ERROR(CheckRmsNormInputs(x, &weight, y));
  if (x.numel() == 0) return Status();
  const int64_t d = x.dim(-1), rows = LeadingRows(x.shape());
  const double eps = ctx.attrs().Float("eps");
  return DispatchFloat(x.dtype(), [&](auto tag) {
    using T = decltype(tag);
    using A = AccumulatorOf<T>;
    RmsNormKernel<<<RowBlocks(rows), RowThreads(d), 0, Stream(ctx)>>>(
        Data<T>(x), Data<T>(weight), Data<T>(y), rows, d, static_cast<A>(eps));
    return CheckLaunch("RmsNormKernel");
  });
}

Status RmsNormGradXCuda(KernelContext& ctx) {
  const Tensor& x = ctx.input(0);
  const Tensor& weight = ctx.input(1);
  const Tensor& dy = ctx.input(2);
  Tensor& dx = ctx.output(0);
  WEIR_RETURN_IF_ERROR(CheckRmsNormInputs(x, &weight, dy));
  WEIR_RETURN_IF_ERROR(CheckRmsNormInputs(x, nullptr, dx));
  if (x.numel() == 0) return Status();
  const int64_t d = x.dim(-1), rows = LeadingRows(x.shape());
  const double eps = ctx.attrs().Float("eps");
  return DispatchFloat(x.dtype(), [&](auto tag) {
    using T = decltype(tag);
    using A = AccumulatorOf<T>;
    RmsNormGradXKernel<<<RowBlocks(rows), RowThreads(d), 0, Stream(ctx)>>>(
        Data<T>(x), Data<T>(weight), Data<T>(dy), Data<T>(dx), rows, d, static_cast<A>(eps));
    return CheckLaunch("RmsNormGradXKernel");
  });
}

Status RmsNormGradWCuda(KernelContext& ctx) {
  const Tensor& x = ctx.input(0);
  const Tensor& dy = ctx.input(1);
  Tensor& dweight = ctx.output(0);
  WEIR_RETURN_IF_ERROR(CheckRmsNormInputs(x, &dweight, dy));
  const int64_t d = x.dim(-1), rows = LeadingRows(x.shape());
  if (d == 0) return Status();
  const double eps = ctx.attrs().Float("eps");
  const cudaStream_t stream = Stream(ctx);
  return DispatchFloat(x.dtype(), [&](auto tag) -> Status {
    using T = decltype(tag);
    using A = AccumulatorOf<T>;
    // Enough (tile, chunk) blocks to fill the GPU, each chunk at least kGradWRowLanes rows.
    const int64_t tiles = (d + kGradWColumns - 1) / kGradWColumns;
    const int64_t max_chunks = std::max<int64_t>(1, (rows + kGradWRowLanes - 1) / kGradWRowLanes);
    const int64_t chunks =
        std::clamp<int64_t>((2048 + tiles - 1) / tiles, 1, std::min<int64_t>(max_chunks, 65535));
    const int64_t rows_per_chunk = (rows + chunks - 1) / chunks;
    WEIR_ASSIGN_OR_RETURN(Tensor rstd,
                          Scratch(ctx, AccumulatorDtype<T>(), {std::max<int64_t>(rows, 1)}));
    WEIR_ASSIGN_OR_RETURN(Tensor partial, Scratch(ctx, AccumulatorDtype<T>(), {chunks, d}));
    if (rows > 0) {
      RowRstdKernel<<<RowBlocks(rows), RowThreads(d), 0, stream>>>(Data<T>(x), rstd.data<A>(), rows,
                                                                   d, static_cast<A>(eps));
      WEIR_RETURN_IF_ERROR(CheckLaunch("RowRstdKernel"));
    }
    RmsNormGradWPartials<<<dim3(static_cast<unsigned>(tiles), static_cast<unsigned>(chunks)),
                           dim3(kGradWColumns, kGradWRowLanes), 0, stream>>>(
        Data<T>(x), Data<T>(dy), rstd.data<A>(), partial.data<A>(), rows, d, rows_per_chunk);
    WEIR_RETURN_IF_ERROR(CheckLaunch("RmsNormGradWPartials"));
    RmsNormGradWFinish<<<cuda::Blocks(d), 256, 0, stream>>>(partial.data<A>(), Data<T>(dweight),
                                                            chunks, d);
    return CheckLaunch("RmsNormGradWFinish");
  });
}

// ---- nn.CrossEntropy -----------------------------------------------------------------------

namespace {

// A running log-sum-exp: Σ exp(x − max) over the values seen, and their max.
template <typename A>
struct MaxSum {
  A max;
  A sum;
};

template <typename A>
__device__ __forceinline__ MaxSum<A> ShflDown(MaxSum<A> v, unsigned offset) {
  return {ShflDown(v.max, offset), ShflDown(v.sum, offset)};
}

struct MergeMaxSum {
  template <typename A>
  __device__ MaxSum<A> operator()(MaxSum<A> a, MaxSum<A> b) const {
    const A max = a.max > b.max ? a.max : b.max;
    // Both empty (or all −∞): nothing to rescale; a NaN sum stays NaN.
    if (max == -Infinity<A>()) return {max, a.sum + b.sum};
    return {max, a.sum * DeviceExp(a.max - max) + b.sum * DeviceExp(b.max - max)};
  }
};

// log Σ exp(row) over the block's row in the accumulator type, to every thread; the CPU's
// m + log Σ exp(x − m) computed online, one read of the row. −∞ entries (masked logits) add
// nothing, a NaN makes the result NaN, as on the CPU.
template <typename A, typename D>
__device__ A RowLogSumExp(const D* row, int64_t width, MaxSum<A>* shared) {
  MaxSum<A> state{-Infinity<A>(), A(0)};
  for (int64_t j = threadIdx.x; j < width; j += blockDim.x) {
    const A v = cuda::Load(row[j]);
    if (v > state.max) {
      state.sum = state.sum * DeviceExp(state.max - v) + A(1);
      state.max = v;
    } else if (v != -Infinity<A>()) {
      state.sum += DeviceExp(v - state.max);
    }
  }
  state = BlockReduce(state, MergeMaxSum{}, shared);
  return state.max + DeviceLog(state.sum);
}

// The weight of row r's loss as the CPU defines it: the mask's value (1 without a mask), 0 when
// the target is ignore_index.
template <typename D, typename Id>
__device__ __forceinline__ double RowWeight(const Id* targets, const D* mask, int64_t r,
                                            int64_t ignore) {
  if (static_cast<int64_t>(targets[r]) == ignore) return 0.0;
  return mask != nullptr ? static_cast<double>(cuda::Load(mask[r])) : 1.0;
}

// A target that is neither ignore_index nor a vocabulary id. The CPU kernel returns an error
// naming it; a device kernel cannot without waiting for the device, so it makes the loss (or the
// row's gradient) NaN, which a training run reports instead of silently learning from it.
__device__ __forceinline__ bool BadTarget(int64_t target, int64_t ignore, int64_t vocab) {
  return target != ignore && (target < 0 || target >= vocab);
}

// Per row: its weight, and weight · (lse − logit[target]) (0 when the weight is 0).
template <typename D, typename A, typename Id>
__global__ void CrossEntropyRows(const D* logits, const Id* targets, const D* mask, int64_t rows,
                                 int64_t vocab, int64_t ignore, double* row_weight,
                                 double* row_loss) {
  __shared__ MaxSum<A> shared[kWarpSize + 1];
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    const int64_t target = static_cast<int64_t>(targets[r]);
    const double weight = RowWeight(targets, mask, r, ignore);
    const bool bad = BadTarget(target, ignore, vocab);
    if (bad || weight == 0) {  // block-uniform: every thread read the same target and mask
      if (threadIdx.x == 0) {
        row_weight[r] = weight;
        row_loss[r] = bad ? QuietNaN<double>() : 0.0;
      }
      continue;
    }
    const D* row = logits + r * vocab;
    const A lse = RowLogSumExp(row, vocab, shared);
    if (threadIdx.x == 0) {
      row_weight[r] = weight;
      row_loss[r] =
          weight * (static_cast<double>(lse) - static_cast<double>(cuda::Load(row[target])));
    }
  }
}

// loss = Σ row_loss / Σ row_weight (0 when the weights sum to 0 or less), in f64.
template <typename O>
__global__ void CrossEntropyMean(const double* row_weight, const double* row_loss, int64_t rows,
                                 O* loss) {
  __shared__ double shared[kWarpSize + 1];
  double total = 0, denom = 0;
  for (int64_t r = threadIdx.x; r < rows; r += blockDim.x) {
    total += row_loss[r];
    denom += row_weight[r];
  }
  total = BlockReduce(total, Plus{}, shared);
  denom = BlockReduce(denom, Plus{}, shared);
  if (threadIdx.x == 0) *loss = static_cast<O>(denom > 0 ? total / denom : 0.0);
}

// Σ row weights, for the gradient's 1 / Σ weight.
template <typename D, typename Id>
__global__ void CrossEntropyDenominator(const Id* targets, const D* mask, int64_t rows,
                                        int64_t ignore, double* denom) {
  __shared__ double shared[kWarpSize + 1];
  double sum = 0;
  for (int64_t r = threadIdx.x; r < rows; r += blockDim.x)
    sum += RowWeight(targets, mask, r, ignore);
  sum = BlockReduce(sum, Plus{}, shared);
  if (threadIdx.x == 0) *denom = sum;
}

// The dtype of the incoming scalar gradient dloss (f32 for f32 and bf16 logits, f64 for f64).
enum class ScalarKind { kF32, kF64, kBF16 };

__device__ __forceinline__ double LoadScalar(const void* p, ScalarKind kind) {
  switch (kind) {
    case ScalarKind::kF64:
      return *static_cast<const double*>(p);
    case ScalarKind::kBF16:
      return static_cast<double>(__bfloat162float(*static_cast<const __nv_bfloat16*>(p)));
    default:
      return static_cast<double>(*static_cast<const float*>(p));
  }
}

// dlogits = (softmax(logits) − onehot(target)) · weight / Σweight · dloss, per row.
template <typename D, typename A, typename Id>
__global__ void CrossEntropyGradRows(const D* logits, const Id* targets, const D* mask,
                                     int64_t rows, int64_t vocab, int64_t ignore,
                                     const double* denom_sum, const void* dloss_ptr,
                                     ScalarKind dloss_kind, D* dlogits) {
  __shared__ MaxSum<A> shared[kWarpSize + 1];
  const double denom = *denom_sum;
  const double dloss = LoadScalar(dloss_ptr, dloss_kind);
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    const int64_t target = static_cast<int64_t>(targets[r]);
    const double scale = denom > 0 ? RowWeight(targets, mask, r, ignore) / denom * dloss : 0.0;
    D* drow = dlogits + r * vocab;
    if (BadTarget(target, ignore, vocab) || scale == 0) {  // block-uniform
      const D fill = cuda::Store<D>(BadTarget(target, ignore, vocab) ? QuietNaN<A>() : A(0));
      for (int64_t j = threadIdx.x; j < vocab; j += blockDim.x) drow[j] = fill;
      continue;
    }
    const D* row = logits + r * vocab;
    const A lse = RowLogSumExp(row, vocab, shared);
    const A row_scale = static_cast<A>(scale);
    for (int64_t j = threadIdx.x; j < vocab; j += blockDim.x) {
      const A p = DeviceExp(cuda::Load(row[j]) - lse);
      drow[j] = cuda::Store<D>((j == target ? p - A(1) : p) * row_scale);
    }
  }
}

// Calls f(Id{}) with the C++ type of integer ids (i64 or i32).
template <typename F>
Status DispatchIds(const Tensor& ids, const char* what, F&& f) {
  switch (ids.dtype()) {
    case DT_I64:
      return f(int64_t{});
    case DT_I32:
      return f(int32_t{});
    default:
      return InvalidArgument(std::string(what) + " must be i64 or i32 ids, got " +
                             ids.DebugString());
  }
}

Status CheckCrossEntropyInputs(const Tensor& logits, const Tensor& targets, const Tensor* mask) {
  if (logits.rank() < 1) return InvalidArgument("CrossEntropy: logits need a vocabulary dim");
  const int64_t rows = LeadingRows(logits.shape());
  if (targets.numel() != rows) {
    return InvalidArgument("CrossEntropy: targets " + targets.DebugString() +
                           " do not match logits " + logits.DebugString());
  }
  if (rows > 0 && logits.dim(-1) == 0)
    return InvalidArgument("CrossEntropy: logits " + logits.DebugString() + " have no vocabulary");
  if (mask != nullptr && (mask->dtype() != logits.dtype() || mask->numel() != rows)) {
    return InvalidArgument("CrossEntropy: mask " + mask->DebugString() + " does not match logits " +
                           logits.DebugString());
  }
  return Status();
}

}  // namespace

Status CrossEntropyCuda(KernelContext& ctx) {
  const Tensor& logits = ctx.input(0);
  const Tensor& targets = ctx.input(1);
  const Tensor* mask = ctx.num_inputs() > 2 ? &ctx.input(2) : nullptr;
  Tensor& loss = ctx.output(0);
  WEIR_RETURN_IF_ERROR(CheckCrossEntropyInputs(logits, targets, mask));
  const int64_t rows = LeadingRows(logits.shape()), vocab = logits.dim(-1);
  const int64_t ignore = ctx.attrs().Int("ignore_index");
  const cudaStream_t stream = Stream(ctx);
  WEIR_ASSIGN_OR_RETURN(Tensor stats, Scratch(ctx, DT_F64, {2, std::max<int64_t>(rows, 1)}));
  double* row_weight = stats.data<double>();
  double* row_loss = row_weight + std::max<int64_t>(rows, 1);
  return DispatchFloat(logits.dtype(), [&](auto tag) -> Status {
    using T = decltype(tag);
    using A = AccumulatorOf<T>;
    const DeviceT<T>* mask_data = mask != nullptr ? Data<T>(*mask) : nullptr;
    if (rows > 0) {
      WEIR_RETURN_IF_ERROR(DispatchIds(targets, "targets", [&](auto id_tag) {
        using Id = decltype(id_tag);
        CrossEntropyRows<DeviceT<T>, A, Id><<<RowBlocks(rows), RowThreads(vocab), 0, stream>>>(
            Data<T>(logits), targets.data<Id>(), mask_data, rows, vocab, ignore, row_weight,
            row_loss);
        return CheckLaunch("CrossEntropyRows");
      }));
    }
    switch (loss.dtype()) {
      case DT_F32:
        CrossEntropyMean<<<1, kFinishThreads, 0, stream>>>(row_weight, row_loss, rows,
                                                           loss.data<float>());
        break;
      case DT_F64:
        CrossEntropyMean<<<1, kFinishThreads, 0, stream>>>(row_weight, row_loss, rows,
                                                           loss.data<double>());
        break;
      default:
        return InvalidArgument("CrossEntropy: loss must be f32 or f64, got " + loss.DebugString());
    }
    return CheckLaunch("CrossEntropyMean");
  });
}

Status CrossEntropyGradCuda(KernelContext& ctx) {
  const Tensor& logits = ctx.input(0);
  const Tensor& targets = ctx.input(1);
  const Tensor& dloss = ctx.input(2);
  const Tensor* mask = ctx.num_inputs() > 3 ? &ctx.input(3) : nullptr;
  Tensor& dlogits = ctx.output(0);
  WEIR_RETURN_IF_ERROR(CheckCrossEntropyInputs(logits, targets, mask));
  if (dloss.numel() != 1) return InvalidArgument("CrossEntropyGrad: dloss must be a scalar");
  ScalarKind dloss_kind;
  switch (dloss.dtype()) {
    case DT_F32:
      dloss_kind = ScalarKind::kF32;
      break;
    case DT_F64:
      dloss_kind = ScalarKind::kF64;
      break;
    case DT_BF16:
      dloss_kind = ScalarKind::kBF16;
      break;
    default:
      return InvalidArgument("CrossEntropyGrad: dloss must be f32, f64 or bf16, got " +
                             dloss.DebugString());
  }
  const int64_t rows = LeadingRows(logits.shape()), vocab = logits.dim(-1);
  if (rows == 0 || vocab == 0) return Status();
  const int64_t ignore = ctx.attrs().Int("ignore_index");
  const cudaStream_t stream = Stream(ctx);
  WEIR_ASSIGN_OR_RETURN(Tensor denom, Scratch(ctx, DT_F64, {1}));
  return DispatchFloat(logits.dtype(), [&](auto tag) -> Status {
    using T = decltype(tag);
    using A = AccumulatorOf<T>;
    using D = DeviceT<T>;
    const D* mask_data = mask != nullptr ? Data<T>(*mask) : nullptr;
    return DispatchIds(targets, "targets", [&](auto id_tag) -> Status {
      using Id = decltype(id_tag);
      CrossEntropyDenominator<<<1, kFinishThreads, 0, stream>>>(targets.data<Id>(), mask_data, rows,
                                                                ignore, denom.data<double>());
      WEIR_RETURN_IF_ERROR(CheckLaunch("CrossEntropyDenominator"));
      CrossEntropyGradRows<D, A, Id><<<RowBlocks(rows), RowThreads(vocab), 0, stream>>>(
          Data<T>(logits), targets.data<Id>(), mask_data, rows, vocab, ignore, denom.data<double>(),
          dloss.raw_data(), dloss_kind, Data<T>(dlogits));
      return CheckLaunch("CrossEntropyGradRows");
    });
  });
}

// ---- nn.ArgmaxMatch ------------------------------------------------------------------------

namespace {

constexpr long long kNoIndex = 0x7fffffffffffffffLL;

// The largest value seen and its first index (kNoIndex while none).
template <typename A>
struct Best {
  A value;
  long long index;
};

template <typename A>
__device__ __forceinline__ Best<A> ShflDown(Best<A> v, unsigned offset) {
  return {ShflDown(v.value, offset), ShflDown(v.index, offset)};
}

// Larger value wins, a tie goes to the smaller index; a NaN never wins (it compares false).
struct PickBest {
  template <typename A>
  __device__ Best<A> operator()(Best<A> a, Best<A> b) const {
    return b.value > a.value || (b.value == a.value && b.index < a.index) ? b : a;
  }
};

// The CPU's argmax: best = 0, then each later entry strictly greater than row[best] takes over.
// So NaNs are skipped, ties go to the first, and a NaN at index 0 keeps index 0 (nothing
// compares greater than it).
template <typename A, typename D>
__device__ long long RowArgmax(const D* row, int64_t width, Best<A>* shared) {
  Best<A> best{-Infinity<A>(), kNoIndex};
  for (int64_t j = threadIdx.x; j < width; j += blockDim.x)
    best = PickBest{}(best, Best<A>{static_cast<A>(cuda::Load(row[j])), j});
  best = BlockReduce(best, PickBest{}, shared);
  const A first = cuda::Load(row[0]);
  return first != first || best.index == kNoIndex ? 0 : best.index;
}

template <typename D, typename A>
__global__ void ArgmaxMatchRows(const D* a, const D* b, int64_t rows, int64_t width, int* same) {
  __shared__ Best<A> shared[kWarpSize + 1];
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    const long long in_a = RowArgmax(a + r * width, width, shared);
    const long long in_b = RowArgmax(b + r * width, width, shared);
    if (threadIdx.x == 0) same[r] = in_a == in_b ? 1 : 0;
  }
}

__global__ void ArgmaxMatchShare(const int* same, int64_t rows, float* share) {
  __shared__ long long shared[kWarpSize + 1];
  long long count = 0;
  for (int64_t r = threadIdx.x; r < rows; r += blockDim.x) count += same[r];
  count = BlockReduce(count, Plus{}, shared);
  if (threadIdx.x == 0) {
    *share =
        rows > 0 ? static_cast<float>(static_cast<double>(count) / static_cast<double>(rows)) : 0.f;
  }
}

}  // namespace

Status ArgmaxMatchCuda(KernelContext& ctx) {
  const Tensor& a = ctx.input(0);
  const Tensor& b = ctx.input(1);
  Tensor& share = ctx.output(0);
  if (a.rank() < 1 || a.dtype() != b.dtype() || a.shape() != b.shape()) {
    return InvalidArgument("ArgmaxMatch: a " + a.DebugString() + " and b " + b.DebugString() +
                           " must have one type with a class dim");
  }
  const int64_t width = a.dim(-1), rows = width > 0 ? LeadingRows(a.shape()) : 0;
  const cudaStream_t stream = Stream(ctx);
  WEIR_ASSIGN_OR_RETURN(Tensor same, Scratch(ctx, DT_I32, {std::max<int64_t>(rows, 1)}));
  return DispatchFloat(a.dtype(), [&](auto tag) -> Status {
    using T = decltype(tag);
    using A = AccumulatorOf<T>;
    if (rows > 0) {
      ArgmaxMatchRows<DeviceT<T>, A><<<RowBlocks(rows), RowThreads(width), 0, stream>>>(
          Data<T>(a), Data<T>(b), rows, width, same.data<int32_t>());
      WEIR_RETURN_IF_ERROR(CheckLaunch("ArgmaxMatchRows"));
    }
    ArgmaxMatchShare<<<1, kFinishThreads, 0, stream>>>(same.data<int32_t>(), rows,
                                                       share.data<float>());
    return CheckLaunch("ArgmaxMatchShare");
  });
}

// ---- nn.SegmentIds -------------------------------------------------------------------------

namespace {

constexpr unsigned kSegmentThreads = 256;

// One block per row: tiles of blockDim.x positions, each an exclusive scan of "is a separator"
// (warp shuffles, then the warps' totals), plus the separators of the row's earlier tiles.
template <typename Id>
__global__ void SegmentIdsKernel(const Id* tokens, int64_t rows, int64_t time, int64_t separator,
                                 int64_t* segments) {
  __shared__ int warp_totals[kWarpSize];
  const unsigned lane = threadIdx.x % kWarpSize, warp = threadIdx.x / kWarpSize;
  const unsigned warps = blockDim.x / kWarpSize;
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    int64_t before_tile = 0;
    for (int64_t tile = 0; tile < time; tile += blockDim.x) {
      const int64_t t = tile + threadIdx.x;
      const int flag = t < time && static_cast<int64_t>(tokens[r * time + t]) == separator ? 1 : 0;
      int inclusive = flag;
      for (unsigned offset = 1; offset < kWarpSize; offset *= 2) {
        const int below = __shfl_up_sync(kFullMask, inclusive, offset);
        if (lane >= offset) inclusive += below;
      }
      __syncthreads();  // every thread has read the previous tile's totals
      if (lane == kWarpSize - 1) warp_totals[warp] = inclusive;
      __syncthreads();
      int before_warp = 0, tile_total = 0;
      for (unsigned w = 0; w < warps; ++w) {
        if (w < warp) before_warp += warp_totals[w];
        tile_total += warp_totals[w];
      }
      if (t < time) segments[r * time + t] = before_tile + before_warp + inclusive - flag;
      before_tile += tile_total;
    }
  }
}

}  // namespace

Status SegmentIdsCuda(KernelContext& ctx) {
  const Tensor& tokens = ctx.input(0);
  Tensor& segments = ctx.output(0);
  if (tokens.rank() != 2 || segments.dtype() != DT_I64 || segments.numel() != tokens.numel()) {
    return InvalidArgument("SegmentIds: tokens must be [batch, time] ids, got " +
                           tokens.DebugString());
  }
  if (tokens.numel() == 0) return Status();
  const int64_t separator = ctx.attrs().Int("separator");
  const cudaStream_t stream = Stream(ctx);
  if (separator < 0) {  // no packing: one document per row
    return cuda::Check(cudaMemsetAsync(segments.raw_data(), 0, segments.nbytes(), stream),
                       "SegmentIds: cudaMemsetAsync");
  }
  const int64_t rows = tokens.dim(0), time = tokens.dim(1);
  return DispatchIds(tokens, "SegmentIds: tokens", [&](auto id_tag) {
    using Id = decltype(id_tag);
    SegmentIdsKernel<<<RowBlocks(rows), kSegmentThreads, 0, stream>>>(
        tokens.data<Id>(), rows, time, separator, segments.data<int64_t>());
    return CheckLaunch("SegmentIdsKernel");
  });
}

}  // namespace weir::nn
