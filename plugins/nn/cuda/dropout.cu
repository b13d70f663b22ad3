// CUDA kernels of nn.Dropout and nn.DropoutGrad (dropout/dropout.cc).
//
// The CPU's mask is counter-based: element i is kept when
//   UnitInterval(SplitMix64(stream ^ i)) >= rate,  stream = SplitMix64(seed ^ SplitMix64(call)),
// with `call` the number of earlier nn.Dropout calls in the process. DropoutKeeps below is that
// function for host and device, so the CUDA mask of a (seed, call) is the CPU's bit for bit. The
// CPU's call counter is private to its file, so the CUDA kernel counts its own calls: the n-th
// CUDA call draws the mask of the n-th CPU call, and the two devices agree when each has run
// nn.Dropout equally often in the process.
#include <cuda_runtime.h>

#include <atomic>
#include <cstdint>

#include "weir/cuda_kernel.h"

namespace weir::nn {
namespace {

using cuda::CheckLaunch;
using cuda::Data;
using cuda::Stream;

// weir/random.h's SplitMix64 and UnitInterval, for host and device.
__host__ __device__ __forceinline__ uint64_t SplitMix64Hd(uint64_t x) {
  x += 0x9e3779b97f4a7c15ULL;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

__host__ __device__ __forceinline__ uint64_t DropoutStream(int64_t seed, uint64_t call) {
  return SplitMix64Hd(static_cast<uint64_t>(seed) ^ SplitMix64Hd(call));
}

// Whether element `index` survives: a uniform double in [0, 1) from (stream, index), compared
// with rate in double, as the CPU does.
__host__ __device__ __forceinline__ bool DropoutKeeps(uint64_t stream, int64_t index, double rate) {
  const uint64_t hash = SplitMix64Hd(stream ^ static_cast<uint64_t>(index));
  return static_cast<double>(hash >> 11) * 0x1.0p-53 >= rate;
}

// The CUDA kernel's own call counter (see the file comment).
std::atomic<uint64_t> g_cuda_calls{0};

template <typename D, typename A>
__global__ void DropoutKernel(const D* x, D* y, uint8_t* mask, int64_t n, uint64_t stream,
                              double rate, A keep_scale) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n;
       i += int64_t{gridDim.x} * blockDim.x) {
    const bool keep = DropoutKeeps(stream, i, rate);
    mask[i] = keep ? 1 : 0;
    y[i] = cuda::Store<D>(keep ? cuda::Load(x[i]) * keep_scale : A(0));
  }
}

template <typename D, typename A>
__global__ void DropoutGradKernel(const D* dy, const uint8_t* mask, D* dx, int64_t n,
                                  A keep_scale) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n;
       i += int64_t{gridDim.x} * blockDim.x)
    dx[i] = cuda::Store<D>(mask[i] ? cuda::Load(dy[i]) * keep_scale : A(0));
}

// 1 / (1 − rate), 0 when everything is dropped.
double KeepScale(double rate) { return rate < 1 ? 1.0 / (1.0 - rate) : 0.0; }

}  // namespace

Status DropoutCuda(KernelContext& ctx) {
  const Tensor& x = ctx.input(0);
  Tensor& y = ctx.output(0);
  Tensor& mask = ctx.output(1);
  const double rate = ctx.attrs().Float("rate");
  // Counted before any early return, as the CPU counts every call.
  const uint64_t stream = DropoutStream(ctx.attrs().Int("seed"), g_cuda_calls++);
  if (y.dtype() != x.dtype() || y.numel() != x.numel() || mask.dtype() != DT_U8 ||
      mask.numel() != x.numel()) {
    return InvalidArgument("Dropout: outputs " + y.DebugString() + ", " + mask.DebugString() +
                           " do not match x " + x.DebugString());
  }
  const int64_t n = x.numel();
  if (n == 0) return Status();
  return DispatchFloat(x.dtype(), [&](auto tag) {
    using T = decltype(tag);
    using A = AccumulatorOf<T>;
    DropoutKernel<<<cuda::Blocks(n), 256, 0, Stream(ctx)>>>(Data<T>(x), Data<T>(y),
                                                            mask.data<uint8_t>(), n, stream, rate,
                                                            static_cast<A>(KeepScale(rate)));
    return CheckLaunch("DropoutKernel");
  });
}

Status DropoutGradCuda(KernelContext& ctx) {
  const Tensor& dy = ctx.input(0);
  const Tensor& mask = ctx.input(1);
  Tensor& dx = ctx.output(0);
  if (mask.dtype() != DT_U8 || mask.numel() != dy.numel() || dx.dtype() != dy.dtype() ||
      dx.numel() != dy.numel()) {
    return InvalidArgument("DropoutGrad: mask " + mask.DebugString() +
                           " must be u8 of dy's shape " + dy.DebugString());
  }
  const int64_t n = dy.numel();
  if (n == 0) return Status();
  const double rate = ctx.attrs().Float("rate");
  return DispatchFloat(dy.dtype(), [&](auto tag) {
    using T = decltype(tag);
    using A = AccumulatorOf<T>;
    DropoutGradKernel<<<cuda::Blocks(n), 256, 0, Stream(ctx)>>>(
        Data<T>(dy), mask.data<uint8_t>(), Data<T>(dx), n, static_cast<A>(KeepScale(rate)));
    return CheckLaunch("DropoutGradKernel");
  });
}

}  // namespace weir::nn
