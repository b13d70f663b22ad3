// CUDA kernel of nn.RoPE (rope/rope.cc): the same frequencies (computed on the host by the
// same code, in double), the same cos/sin table per (position, pair) with the angle formed in
// double, and the rotation in the accumulator type without fused multiply-adds, so that each
// output rounds as the CPU's does.
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "rope/frequencies.h"
#include "weir/cuda_kernel.h"

namespace weir::nn {
namespace {

using cuda::CheckLaunch;
using cuda::Data;
using cuda::DeviceT;
using cuda::Stream;

// Frequencies travel to the device as a kernel argument (no copy to wait for): up to
// kPairsPerLaunch pairs a launch, 2 KiB, well inside the 4 KiB argument limit.
constexpr int64_t kPairsPerLaunch = 256;
struct FrequencyChunk {
  double value[kPairsPerLaunch];
};

// cos and sign·sin of the angle for every position t and pair first_pair + i. Position t is
// time step t % time, at start + t % time, plus row_start[t / time] with per-row starts.
template <typename A>
__global__ void RopeTableKernel(FrequencyChunk freq, int64_t first_pair, int64_t pairs,
                                int64_t half, int64_t positions, int64_t time, int64_t start,
                                const int64_t* row_start, double sign, A* cos_table, A* sin_table) {
  for (int64_t n = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; n < positions * pairs;
       n += int64_t{gridDim.x} * blockDim.x) {
    const int64_t t = n / pairs, i = n - t * pairs;
    const int64_t pos = start + t % time + (row_start != nullptr ? row_start[t / time] : 0);
    const double angle = static_cast<double>(pos) * freq.value[i];
    const int64_t at = t * half + first_pair + i;
    cos_table[at] = static_cast<A>(cos(angle));
    sin_table[at] = static_cast<A>(sign * sin(angle));
  }
}

// Products and sums rounded one by one: nvcc would otherwise fuse a0·c − a1·s into an FMA, which
// rounds differently from the CPU (where the outputs cancel, relatively much differently).
__device__ __forceinline__ float Mul(float a, float b) { return __fmul_rn(a, b); }
__device__ __forceinline__ double Mul(double a, double b) { return __dmul_rn(a, b); }
__device__ __forceinline__ float Add(float a, float b) { return __fadd_rn(a, b); }
__device__ __forceinline__ double Add(double a, double b) { return __dadd_rn(a, b); }
__device__ __forceinline__ float Sub(float a, float b) { return __fsub_rn(a, b); }
__device__ __forceinline__ double Sub(double a, double b) { return __dsub_rn(a, b); }

// One thread per pair: pair i of a row is (2i, 2i + 1) interleaved, else (i, i + half); rows are
// (batch, time, inner) in order, so position t = row / inner % positions (time, or batch · time
// with per-row starts).
template <typename D, typename A>
__global__ void RopeApplyKernel(const D* x, D* y, const A* cos_table, const A* sin_table,
                                int64_t total_pairs, int64_t half, int64_t inner, int64_t positions,
                                int64_t stride, int64_t offset) {
  for (int64_t p = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; p < total_pairs;
       p += int64_t{gridDim.x} * blockDim.x) {
    const int64_t row = p / half, i = p - row * half;
    const int64_t t = row / inner % positions;
    const int64_t first = row * 2 * half + i * stride, second = first + offset;
    const A a0 = cuda::Load(x[first]), a1 = cuda::Load(x[second]);
    const A c = cos_table[t * half + i], s = sin_table[t * half + i];
    y[first] = cuda::Store<D>(Sub(Mul(a0, c), Mul(a1, s)));
    y[second] = cuda::Store<D>(Add(Mul(a0, s), Mul(a1, c)));
  }
}

}  // namespace

Status RopeCuda(KernelContext& ctx) {
  const Tensor& x = ctx.input(0);
  Tensor& y = ctx.output(0);
  if (x.rank() < 3 || x.dim(-1) % 2 != 0 || y.dtype() != x.dtype() || y.numel() != x.numel()) {
    return InvalidArgument("RoPE: x must be [batch, time, ..., d] with an even d, got " +
                           x.DebugString());
  }
  if (x.numel() == 0) return Status();
  const Attrs& a = ctx.attrs();
  const int64_t d = x.dim(-1), half = d / 2, batch = x.dim(0), time = x.dim(1);
  const int64_t inner = x.numel() / (batch * time * d);  // heads (or 1)
  const std::vector<double> freq = Frequencies(a, d);
  const bool interleaved = a.Bool("interleaved");
  const double sign = a.Bool("inverse") ? -1.0 : 1.0;
  const int64_t start = a.Int("start");
  const int64_t* row_start = ctx.num_inputs() > 1 ? ctx.input(1).data<int64_t>() : nullptr;
  const int64_t positions = row_start != nullptr ? batch * time : time;
  const cudaStream_t stream = Stream(ctx);
  return DispatchFloat(x.dtype(), [&](auto tag) -> Status {
    using T = decltype(tag);
    using A = AccumulatorOf<T>;
    // cos and sin per (position, pair), once: every head (and without per-row starts every
    // batch row) shares them.
    WEIR_ASSIGN_OR_RETURN(Tensor table, cuda::Scratch(ctx, DataTypeOf<A>(), {2, positions, half}));
    A* cos_table = table.data<A>();
    A* sin_table = cos_table + positions * half;
    for (int64_t first_pair = 0; first_pair < half; first_pair += kPairsPerLaunch) {
      const int64_t pairs = std::min(kPairsPerLaunch, half - first_pair);
      FrequencyChunk chunk{};
      std::copy(freq.begin() + first_pair, freq.begin() + first_pair + pairs, chunk.value);
      RopeTableKernel<<<cuda::Blocks(positions * pairs), 256, 0, stream>>>(
          chunk, first_pair, pairs, half, positions, time, start, row_start, sign, cos_table,
          sin_table);
      WEIR_RETURN_IF_ERROR(CheckLaunch("RopeTableKernel"));
    }
    const int64_t total_pairs = x.numel() / 2;
    RopeApplyKernel<<<cuda::Blocks(total_pairs), 256, 0, stream>>>(
        Data<T>(x), Data<T>(y), cos_table, sin_table, total_pairs, half, inner, positions,
        interleaved ? int64_t{2} : int64_t{1}, interleaved ? int64_t{1} : half);
    return CheckLaunch("RopeApplyKernel");
  });
}

}  // namespace weir::nn
