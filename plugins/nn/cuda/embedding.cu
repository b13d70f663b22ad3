// CUDA kernels of nn.Embedding and nn.EmbeddingGrad (embedding/embedding.cc).
//
// The CPU kernels reject an id outside the table with an error naming it. A device kernel cannot
// see the ids without waiting for the device, so here such an id gives a row of all-one bits in
// the forward pass (NaN in every float dtype, so the mistake shows in the loss instead of passing
// silently) and adds nothing to the table's gradient.
#include <cuda_runtime.h>

#include <cstdint>
#include <string>
#include <type_traits>

#include "weir/cuda_kernel.h"

namespace weir::nn {
namespace {

using cuda::CheckLaunch;
using cuda::Data;
using cuda::DeviceT;
using cuda::Stream;

template <typename F>
Status DispatchIds(const Tensor& ids, F&& f) {
  switch (ids.dtype()) {
    case DT_I64:
      return f(int64_t{});
    case DT_I32:
      return f(int32_t{});
    default:
      return InvalidArgument("Embedding: ids must be i64 or i32, got " + ids.DebugString());
  }
}

template <typename W>
__device__ __forceinline__ W AllOnes() {
  if constexpr (std::is_same_v<W, uint4>)
    return make_uint4(~0u, ~0u, ~0u, ~0u);
  else
    return static_cast<W>(~W{0});
}

// out[i, :] = table[ids[i], :], copied in words of W (the table's dtype does not matter: the
// CPU kernel copies bytes too, for any dtype).
template <typename W, typename Id>
__global__ void EmbeddingGather(const Id* ids, const W* table, W* out, int64_t count, int64_t vocab,
                                int64_t words_per_row) {
  for (int64_t n = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; n < count * words_per_row;
       n += int64_t{gridDim.x} * blockDim.x) {
    const int64_t position = n / words_per_row, word = n - position * words_per_row;
    const int64_t id = static_cast<int64_t>(ids[position]);
    out[n] = id >= 0 && id < vocab ? table[id * words_per_row + word] : AllOnes<W>();
  }
}

template <typename W, typename Id>
Status LaunchGather(const KernelContext& ctx, const Tensor& ids, const Tensor& table, Tensor& out,
                    int64_t words_per_row) {
  const int64_t count = ids.numel();
  EmbeddingGather<<<cuda::Blocks(count * words_per_row), 256, 0, Stream(ctx)>>>(
      ids.data<Id>(), static_cast<const W*>(table.raw_data()), static_cast<W*>(out.raw_data()),
      count, table.dim(0), words_per_row);
  return CheckLaunch("EmbeddingGather");
}

// table_grad[ids[i], :] += dy[i, :]. The table is zero beforehand; the order of the atomic adds
// varies, so sums of three or more rows vary in their last bits from run to run.
template <typename D, typename Acc, typename Id>
__global__ void EmbeddingScatterAdd(const Id* ids, const D* dy, Acc* table_grad, int64_t count,
                                    int64_t vocab, int64_t dim) {
  for (int64_t n = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; n < count * dim;
       n += int64_t{gridDim.x} * blockDim.x) {
    const int64_t position = n / dim, k = n - position * dim;
    const int64_t id = static_cast<int64_t>(ids[position]);
    if (id >= 0 && id < vocab)
      atomicAdd(&table_grad[id * dim + k], static_cast<Acc>(cuda::Load(dy[n])));
  }
}

// bf16 gradients are summed in f32 (as on the CPU), then rounded once.
template <typename D, typename Acc>
__global__ void NarrowSums(const Acc* sums, D* out, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n;
       i += int64_t{gridDim.x} * blockDim.x)
    out[i] = cuda::Store<D>(sums[i]);
}

}  // namespace

Status EmbeddingCuda(KernelContext& ctx) {
  const Tensor& ids = ctx.input(0);
  const Tensor& table = ctx.input(1);
  Tensor& out = ctx.output(0);
  if (table.rank() != 2 || out.dtype() != table.dtype() ||
      out.numel() != ids.numel() * table.dim(1)) {
    return InvalidArgument("Embedding: table " + table.DebugString() + " and ids " +
                           ids.DebugString() + " do not give " + out.DebugString());
  }
  const size_t row_bytes = static_cast<size_t>(table.dim(1)) * DataTypeSize(table.dtype());
  if (ids.numel() == 0 || row_bytes == 0) return Status();
  // The widest word that divides a row and that both pointers are aligned to.
  const uintptr_t alignment =
      reinterpret_cast<uintptr_t>(table.raw_data()) | reinterpret_cast<uintptr_t>(out.raw_data());
  auto fits = [&](size_t word) { return row_bytes % word == 0 && alignment % word == 0; };
  return DispatchIds(ids, [&](auto id_tag) {
    using Id = decltype(id_tag);
    if (fits(16)) return LaunchGather<uint4, Id>(ctx, ids, table, out, row_bytes / 16);
    if (fits(8)) return LaunchGather<uint64_t, Id>(ctx, ids, table, out, row_bytes / 8);
    if (fits(4)) return LaunchGather<uint32_t, Id>(ctx, ids, table, out, row_bytes / 4);
    if (fits(2)) return LaunchGather<uint16_t, Id>(ctx, ids, table, out, row_bytes / 2);
    return LaunchGather<uint8_t, Id>(ctx, ids, table, out, row_bytes);
  });
}

Status EmbeddingGradCuda(KernelContext& ctx) {
  const Tensor& ids = ctx.input(0);
  const Tensor& dy = ctx.input(1);
  Tensor& table_grad = ctx.output(0);
  if (table_grad.rank() != 2 || dy.dtype() != table_grad.dtype() ||
      dy.numel() != ids.numel() * table_grad.dim(1)) {
    return InvalidArgument("EmbeddingGrad: ids " + ids.DebugString() + " and dy " +
                           dy.DebugString() + " do not fit the table " + table_grad.DebugString());
  }
  if (table_grad.numel() == 0) return Status();
  const int64_t vocab = table_grad.dim(0), dim = table_grad.dim(1), count = ids.numel();
  const cudaStream_t stream = Stream(ctx);
  return DispatchFloat(dy.dtype(), [&](auto tag) -> Status {
    using T = decltype(tag);
    using Acc = AccumulatorOf<T>;
    // f32 and f64 sum straight into the output; bf16 into an f32 scratch table.
    Tensor sums = table_grad;
    if constexpr (!std::is_same_v<T, Acc>) {
      WEIR_ASSIGN_OR_RETURN(sums, cuda::Scratch(ctx, DataTypeOf<Acc>(), table_grad.shape()));
    }
    WEIR_RETURN_IF_ERROR(cuda::Check(cudaMemsetAsync(sums.raw_data(), 0, sums.nbytes(), stream),
                                     "EmbeddingGrad: cudaMemsetAsync"));
    if (count > 0) {
      WEIR_RETURN_IF_ERROR(DispatchIds(ids, [&](auto id_tag) {
        using Id = decltype(id_tag);
        EmbeddingScatterAdd<<<cuda::Blocks(count * dim), 256, 0, stream>>>(
            ids.data<Id>(), Data<T>(dy), sums.data<Acc>(), count, vocab, dim);
        return CheckLaunch("EmbeddingScatterAdd");
      }));
    }
    if constexpr (!std::is_same_v<T, Acc>) {
      NarrowSums<<<cuda::Blocks(table_grad.numel()), 256, 0, stream>>>(
          sums.data<Acc>(), Data<T>(table_grad), table_grad.numel());
      return CheckLaunch("NarrowSums");
    }
    return Status();
  });
}

}  // namespace weir::nn
