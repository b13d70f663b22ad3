// CUDA kernels of the nn elementwise ops (nn.Add, nn.Mul, nn.Scale, nn.SiLU, nn.SiLUGrad,
// nn.SwiGLU, nn.SwiGLUGrad), nn.Cast, and the sums nn.Sum and nn.SumGrad.
//
// Elementwise ops compute in the accumulator type (float for f32 and bf16, double for f64) in the
// CPU kernel's order of operations, and move 16 bytes per thread and input where the pointers
// allow. nn.Cast reproduces Tensor::CopyFrom bit for bit: every conversion goes through double,
// with the host's own rounding of bf16, f16 and fp8 ported to the device. nn.Sum accumulates in
// double, as the CPU kernel does, in a fixed order: per-block partial sums, then one block over
// the partials, so the result does not change from run to run.
#include <cstdint>
#include <string>
#include <type_traits>

#include "weir/cuda_kernel.h"

namespace weir::nn::pointwise_cuda {
namespace {

using weir::cuda::Blocks;
using weir::cuda::CheckLaunch;
using weir::cuda::Data;
using weir::cuda::DeviceT;
using weir::cuda::Load;
using weir::cuda::Scratch;
using weir::cuda::Store;
using weir::cuda::Stream;

constexpr unsigned kThreads = 256;

// ---------------------------------------------------------------------------------------------
// Elementwise maps.

template <typename D>
using AccumulatorT = decltype(Load(D{}));

__device__ __forceinline__ float DeviceExp(float x) { return expf(x); }
__device__ __forceinline__ double DeviceExp(double x) { return exp(x); }

template <typename A>
__device__ __forceinline__ A Sigmoid(A x) {
  return A(1) / (A(1) + DeviceExp(-x));
}

// The functors take the inputs and write the outputs in the accumulator type A.
struct AddFn {
  template <typename A>
  __device__ void operator()(const A* x, A* y) const {
    y[0] = x[0] + x[1];
  }
};
struct MulFn {
  template <typename A>
  __device__ void operator()(const A* x, A* y) const {
    y[0] = x[0] * x[1];
  }
};
// The CPU kernel multiplies by the factor cast to the accumulator type.
template <typename A>
struct ScaleFn {
  A factor;
  __device__ void operator()(const A* x, A* y) const { y[0] = x[0] * factor; }
};
struct SiluFn {
  template <typename A>
  __device__ void operator()(const A* x, A* y) const {
    y[0] = x[0] * Sigmoid(x[0]);
  }
};
// dx = dy (s + x s (1 - s)).
struct SiluGradFn {
  template <typename A>
  __device__ void operator()(const A* in, A* y) const {
    A x = in[0], dy = in[1], s = Sigmoid(x);
    y[0] = dy * (s + x * s * (A(1) - s));
  }
};
struct SwigluFn {
  template <typename A>
  __device__ void operator()(const A* in, A* y) const {
    A g = in[0], u = in[1];
    y[0] = g * Sigmoid(g) * u;
  }
};
// dgate = dy up silu'(gate), dup = dy gate sigmoid(gate).
struct SwigluGradFn {
  template <typename A>
  __device__ void operator()(const A* in, A* y) const {
    A g = in[0], u = in[1], dy = in[2], s = Sigmoid(g);
    y[0] = dy * u * (s + g * s * (A(1) - s));
    y[1] = dy * g * s;
  }
};

template <typename D, int kIn, int kOut>
struct MapArgs {
  const D* in[kIn];
  D* out[kOut];
};

// 16 bytes of elements, loaded and stored in one instruction.
template <typename D>
struct alignas(16) Pack {
  static constexpr int kSize = 16 / sizeof(D);
  D v[kSize];
};

// out_k[i] = f(in_0[i], ...)_k. With `packed`, every pointer is 16-byte aligned and threads move
// whole packs, the last n % pack elements one at a time.
template <typename D, int kIn, int kOut, typename F>
__global__ void MapKernel(MapArgs<D, kIn, kOut> args, int64_t n, bool packed, F f) {
  using A = AccumulatorT<D>;
  int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  int64_t first = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  int64_t done = 0;
  if (packed) {
    constexpr int kSize = Pack<D>::kSize;
    int64_t packs = n / kSize;
    for (int64_t p = first; p < packs; p += stride) {
      Pack<D> in[kIn], out[kOut];
#pragma unroll
      for (int k = 0; k < kIn; ++k) in[k] = reinterpret_cast<const Pack<D>*>(args.in[k])[p];
#pragma unroll
      for (int j = 0; j < kSize; ++j) {
        A x[kIn], y[kOut];
#pragma unroll
        for (int k = 0; k < kIn; ++k) x[k] = Load(in[k].v[j]);
        f(x, y);
#pragma unroll
        for (int k = 0; k < kOut; ++k) out[k].v[j] = Store<D>(y[k]);
      }
#pragma unroll
      for (int k = 0; k < kOut; ++k) reinterpret_cast<Pack<D>*>(args.out[k])[p] = out[k];
    }
    done = packs * kSize;
  }
  for (int64_t i = done + first; i < n; i += stride) {
    A x[kIn], y[kOut];
#pragma unroll
    for (int k = 0; k < kIn; ++k) x[k] = Load(args.in[k][i]);
    f(x, y);
#pragma unroll
    for (int k = 0; k < kOut; ++k) args.out[k][i] = Store<D>(y[k]);
  }
}

// Runs `f` over the op's first kIn inputs into its first kOut outputs, all dense and of the
// dtype of output 0 and its element count. make_fn(tag) gives the functor for the dtype.
template <int kIn, int kOut, typename MakeFn>
Status Map(KernelContext& ctx, const char* op, MakeFn make_fn) {
  const Tensor& out0 = ctx.output(0);
  for (int k = 0; k < kIn + kOut; ++k) {
    const Tensor& t = k < kIn ? ctx.input(k) : ctx.output(k - kIn);
    if (t.dtype() != out0.dtype() || t.numel() != out0.numel() || !t.is_contiguous()) {
      return InvalidArgument(std::string(op) + ": " + (k < kIn ? "input " : "output ") +
                             std::to_string(k < kIn ? k : k - kIn) + " is " + t.DebugString() +
                             ", expected a dense " + out0.DebugString());
    }
  }
  int64_t n = out0.numel();
  if (n == 0) return Status();
  return DispatchFloat(out0.dtype(), [&](auto tag) {
    using T = decltype(tag);
    using D = DeviceT<T>;
    MapArgs<D, kIn, kOut> args;
    bool aligned = true;
    for (int k = 0; k < kIn; ++k) {
      args.in[k] = Data<T>(ctx.input(k));
      aligned = aligned && reinterpret_cast<uintptr_t>(args.in[k]) % 16 == 0;
    }
    for (int k = 0; k < kOut; ++k) {
      args.out[k] = Data<T>(ctx.output(k));
      aligned = aligned && reinterpret_cast<uintptr_t>(args.out[k]) % 16 == 0;
    }
    int64_t items = aligned ? n / Pack<D>::kSize + n % Pack<D>::kSize : n;
    MapKernel<D, kIn, kOut>
        <<<Blocks(items, kThreads), kThreads, 0, Stream(ctx)>>>(args, n, aligned, make_fn(tag));
    return CheckLaunch(op);
  });
}

// ---------------------------------------------------------------------------------------------
// Casts: the host's conversions (core/src/tensor.cc LoadAsDouble and StoreFromDouble,
// core/include/weir/half.h, core/src/half.cc), on the device.

__device__ __forceinline__ float Bf16ToFloat(uint16_t bits) {
  return __uint_as_float(static_cast<uint32_t>(bits) << 16);
}

__device__ __forceinline__ bool SignBit(float f) { return (__float_as_uint(f) >> 31) != 0; }
__device__ __forceinline__ bool IsNan(float f) { return f != f; }
__device__ __forceinline__ float QuietNan() { return __uint_as_float(0x7fc00000u); }

// Round to nearest even; a NaN stays a quiet NaN with its sign and top payload bits.
__device__ __forceinline__ uint16_t FloatToBf16(float f) {
  uint32_t u = __float_as_uint(f);
  uint32_t rounded = (u + 0x7fff + ((u >> 16) & 1)) >> 16;
  uint32_t quiet_nan = (u >> 16) | 0x40;
  return static_cast<uint16_t>(f != f ? quiet_nan : rounded);
}

// The magnitude bits of a finite f >= 0 in a format of `mant` mantissa bits and exponent bias
// `bias`, rounded to nearest even (subnormals included); `overflow` past `max`.
__device__ uint32_t RoundToFormat(float f, int mant, int bias, float max, uint32_t overflow) {
  if (f == 0.0f) return 0;
  int exp;
  frexpf(f, &exp);
  int ulp_exp = (exp - 1 > 1 - bias ? exp - 1 : 1 - bias) - mant;
  float r = ldexpf(rintf(ldexpf(f, -ulp_exp)), ulp_exp);
  if (r > max) return overflow;
  if (r == 0.0f) return 0;
  frexpf(r, &exp);
  int e = exp - 1 + bias;
  if (e < 1) return static_cast<uint32_t>(ldexpf(r, bias - 1 + mant));
  uint32_t m = static_cast<uint32_t>(ldexpf(r, mant - (exp - 1))) - (1u << mant);
  return (static_cast<uint32_t>(e) << mant) | m;
}

__device__ float FromFormat(uint32_t mag, int mant, int bias) {
  uint32_t e = mag >> mant;
  uint32_t m = mag & ((1u << mant) - 1);
  if (e == 0) return ldexpf(static_cast<float>(m), 1 - bias - mant);
  return ldexpf(static_cast<float>(m | (1u << mant)), static_cast<int>(e) - bias - mant);
}

__device__ uint16_t FloatToF16(float f) {
  uint16_t sign = SignBit(f) ? 0x8000 : 0;
  if (IsNan(f)) return 0x7e00;
  float a = fabsf(f);
  if (a == INFINITY) return sign | 0x7c00;
  return sign | static_cast<uint16_t>(RoundToFormat(a, 10, 15, 65504.0f, 0x7c00));
}

__device__ float F16ToFloat(uint16_t h) {
  float sign = (h & 0x8000) ? -1.0f : 1.0f;
  uint32_t mag = h & 0x7fff;
  if ((mag >> 10) == 0x1f) return (mag & 0x3ff) ? QuietNan() : sign * INFINITY;
  return sign * FromFormat(mag, 10, 15);
}

// e4m3 ("E4M3FN"): no infinities, saturates at 448, NaN is 0x7f.
__device__ uint8_t FloatToF8e4m3(float f) {
  uint8_t sign = SignBit(f) ? 0x80 : 0;
  if (IsNan(f)) return 0x7f;
  float a = fminf(fabsf(f), 448.0f);
  return sign | static_cast<uint8_t>(RoundToFormat(a, 3, 7, 448.0f, 0x7e));
}

__device__ float F8e4m3ToFloat(uint8_t bits) {
  float sign = (bits & 0x80) ? -1.0f : 1.0f;
  uint32_t mag = bits & 0x7f;
  if (mag == 0x7f) return QuietNan();
  return sign * FromFormat(mag, 3, 7);
}

__device__ uint8_t FloatToF8e5m2(float f) {
  uint8_t sign = SignBit(f) ? 0x80 : 0;
  if (IsNan(f)) return 0x7f;
  float a = fabsf(f);
  if (a == INFINITY) return sign | 0x7c;
  return sign | static_cast<uint8_t>(RoundToFormat(a, 2, 15, 57344.0f, 0x7c));
}

__device__ float F8e5m2ToFloat(uint8_t bits) {
  float sign = (bits & 0x80) ? -1.0f : 1.0f;
  uint32_t mag = bits & 0x7f;
  if ((mag >> 2) == 0x1f) return (mag & 3) ? QuietNan() : sign * INFINITY;
  return sign * FromFormat(mag, 2, 15);
}

// Double to integer as the host's static_cast compiles on x86-64 (cvttsd2si): truncation toward
// zero; NaN and values out of range give the "integer indefinite" (the most negative value).
// 8-bit targets take the low byte of the 32-bit conversion.
__device__ __forceinline__ int32_t DoubleToI32(double v) {
  return (v > -2147483649.0 && v < 2147483648.0) ? static_cast<int32_t>(v) : INT32_MIN;
}
__device__ __forceinline__ int64_t DoubleToI64(double v) {
  return (v >= -9223372036854775808.0 && v < 9223372036854775808.0) ? static_cast<int64_t>(v)
                                                                    : INT64_MIN;
}

__device__ double LoadAsDouble(const void* base, int dtype, int64_t i) {
  switch (dtype) {
    case DT_F32:
      return static_cast<const float*>(base)[i];
    case DT_F64:
      return static_cast<const double*>(base)[i];
    case DT_BF16:
      return Bf16ToFloat(static_cast<const uint16_t*>(base)[i]);
    case DT_F16:
      return F16ToFloat(static_cast<const uint16_t*>(base)[i]);
    case DT_F8E4M3:
      return F8e4m3ToFloat(static_cast<const uint8_t*>(base)[i]);
    case DT_F8E5M2:
      return F8e5m2ToFloat(static_cast<const uint8_t*>(base)[i]);
    case DT_I8:
      return static_cast<const int8_t*>(base)[i];
    case DT_I32:
      return static_cast<const int32_t*>(base)[i];
    case DT_I64:
      return static_cast<double>(static_cast<const int64_t*>(base)[i]);
    case DT_U8:
      return static_cast<const uint8_t*>(base)[i];
    default:  // DT_BOOL
      return static_cast<const uint8_t*>(base)[i] != 0 ? 1.0 : 0.0;
  }
}

__device__ void StoreFromDouble(void* base, int dtype, int64_t i, double v) {
  switch (dtype) {
    case DT_F32:
      static_cast<float*>(base)[i] = static_cast<float>(v);
      break;
    case DT_F64:
      static_cast<double*>(base)[i] = v;
      break;
    case DT_BF16:
      static_cast<uint16_t*>(base)[i] = FloatToBf16(static_cast<float>(v));
      break;
    case DT_F16:
      static_cast<uint16_t*>(base)[i] = FloatToF16(static_cast<float>(v));
      break;
    case DT_F8E4M3:
      static_cast<uint8_t*>(base)[i] = FloatToF8e4m3(static_cast<float>(v));
      break;
    case DT_F8E5M2:
      static_cast<uint8_t*>(base)[i] = FloatToF8e5m2(static_cast<float>(v));
      break;
    case DT_I8:
      static_cast<int8_t*>(base)[i] = static_cast<int8_t>(DoubleToI32(v));
      break;
    case DT_I32:
      static_cast<int32_t*>(base)[i] = DoubleToI32(v);
      break;
    case DT_I64:
      static_cast<int64_t*>(base)[i] = DoubleToI64(v);
      break;
    case DT_U8:
      static_cast<uint8_t*>(base)[i] = static_cast<uint8_t>(DoubleToI32(v));
      break;
    default:  // DT_BOOL
      static_cast<uint8_t*>(base)[i] = v != 0 ? 1 : 0;
      break;
  }
}

bool CastSupports(DataType t) {
  switch (t) {
    case DT_F32:
    case DT_F64:
    case DT_BF16:
    case DT_F16:
    case DT_F8E4M3:
    case DT_F8E5M2:
    case DT_I8:
    case DT_I32:
    case DT_I64:
    case DT_U8:
    case DT_BOOL:
      return true;
    default:
      return false;
  }
}

// Any pair of dtypes: the dtypes are the same for every thread, so the switches do not diverge.
__global__ void CastAnyKernel(const void* __restrict__ in, int from, void* __restrict__ out, int to,
                              int64_t n) {
  int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride)
    StoreFromDouble(out, to, i, LoadAsDouble(in, from, i));
}

// The conversions between f32, bf16 and f64 that mixed-precision training runs on every step.
template <typename From, typename To>
__device__ __forceinline__ To ConvertFloat(From x) {
  double v;
  if constexpr (std::is_same_v<From, uint16_t>)
    v = Bf16ToFloat(x);  // bf16 bits
  else
    v = static_cast<double>(x);
  if constexpr (std::is_same_v<To, uint16_t>)
    return FloatToBf16(static_cast<float>(v));
  else
    return static_cast<To>(v);
}

template <typename From, typename To>
__global__ void CastFloatKernel(const From* __restrict__ in, To* __restrict__ out, int64_t n) {
  int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride)
    out[i] = ConvertFloat<From, To>(in[i]);
}

// Calls f with std::type_identity of the storage type of f32, bf16 (its bits) or f64, of void
// for the other dtypes.
template <typename F>
Status WithFloatStorage(DataType t, F&& f) {
  switch (t) {
    case DT_F32:
      return f(std::type_identity<float>{});
    case DT_BF16:
      return f(std::type_identity<uint16_t>{});
    case DT_F64:
      return f(std::type_identity<double>{});
    default:
      return f(std::type_identity<void>{});
  }
}

// ---------------------------------------------------------------------------------------------
// Sums.

// The sum of v over the block, valid in thread 0; blockDim.x is a multiple of 32. The tree's
// shape depends only on blockDim.x, so the result does not vary between runs.
__device__ double BlockSum(double v) {
  __shared__ double warp_sums[32];
  for (int offset = 16; offset > 0; offset /= 2) v += __shfl_down_sync(0xffffffffu, v, offset);
  int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  if (lane == 0) warp_sums[warp] = v;
  __syncthreads();
  int warps = blockDim.x / 32;
  if (warp == 0) {
    v = lane < warps ? warp_sums[lane] : 0.0;
    for (int offset = 16; offset > 0; offset /= 2) v += __shfl_down_sync(0xffffffffu, v, offset);
  }
  return v;
}

// out[block] = the block's share of Σ x (a grid-stride share), accumulated in double.
template <typename In, typename Out>
__global__ void SumKernel(const In* __restrict__ x, int64_t n, Out* __restrict__ out) {
  double acc = 0;
  int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride)
    acc += static_cast<double>(Load(x[i]));
  acc = BlockSum(acc);
  if (threadIdx.x == 0) out[blockIdx.x] = Store<Out>(acc);
}

// The most partial sums (one per block of the first pass); the second pass has one thread each.
constexpr unsigned kMaxSumBlocks = 1024;

template <typename D>
__global__ void BroadcastScalarKernel(const D* __restrict__ scalar, D* __restrict__ out,
                                      int64_t n) {
  D v = *scalar;
  int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride)
    out[i] = v;
}

}  // namespace

Status AddCuda(KernelContext& ctx) {
  return Map<2, 1>(ctx, "nn.Add", [](auto) { return AddFn{}; });
}

Status MulCuda(KernelContext& ctx) {
  return Map<2, 1>(ctx, "nn.Mul", [](auto) { return MulFn{}; });
}

Status ScaleCuda(KernelContext& ctx) {
  double factor = ctx.attrs().Float("factor");
  return Map<1, 1>(ctx, "nn.Scale", [factor](auto tag) {
    using A = AccumulatorOf<decltype(tag)>;
    return ScaleFn<A>{static_cast<A>(factor)};
  });
}

Status SiluCuda(KernelContext& ctx) {
  return Map<1, 1>(ctx, "nn.SiLU", [](auto) { return SiluFn{}; });
}

Status SiluGradCuda(KernelContext& ctx) {
  return Map<2, 1>(ctx, "nn.SiLUGrad", [](auto) { return SiluGradFn{}; });
}

Status SwigluCuda(KernelContext& ctx) {
  return Map<2, 1>(ctx, "nn.SwiGLU", [](auto) { return SwigluFn{}; });
}

Status SwigluGradCuda(KernelContext& ctx) {
  return Map<3, 2>(ctx, "nn.SwiGLUGrad", [](auto) { return SwigluGradFn{}; });
}

Status CastCuda(KernelContext& ctx) {
  const Tensor& x = ctx.input(0);
  Tensor& y = ctx.output(0);
  if (x.numel() != y.numel() || !x.is_contiguous())
    return InvalidArgument("nn.Cast: " + x.DebugString() + " into " + y.DebugString());
  int64_t n = y.numel();
  if (n == 0) return Status();
  cudaStream_t stream = Stream(ctx);
  if (x.dtype() == y.dtype()) {
    return weir::cuda::Check(
        cudaMemcpyAsync(y.raw_data(), x.raw_data(), y.nbytes(), cudaMemcpyDeviceToDevice, stream),
        "cudaMemcpyAsync");
  }
  for (DataType t : {x.dtype(), y.dtype()})
    if (!CastSupports(t))
      return InvalidArgument(std::string("nn.Cast: no CUDA conversion for ") + DataTypeName(t));
  return WithFloatStorage(x.dtype(), [&](auto from_tag) {
    return WithFloatStorage(y.dtype(), [&](auto to_tag) {
      using From = typename decltype(from_tag)::type;
      using To = typename decltype(to_tag)::type;
      if constexpr (!std::is_void_v<From> && !std::is_void_v<To>) {
        CastFloatKernel<From, To><<<Blocks(n, kThreads), kThreads, 0, stream>>>(
            static_cast<const From*>(x.raw_data()), static_cast<To*>(y.raw_data()), n);
        return CheckLaunch("CastFloatKernel");
      } else {
        CastAnyKernel<<<Blocks(n, kThreads), kThreads, 0, stream>>>(
            x.raw_data(), static_cast<int>(x.dtype()), y.raw_data(), static_cast<int>(y.dtype()),
            n);
        return CheckLaunch("CastAnyKernel");
      }
    });
  });
}

Status SumCuda(KernelContext& ctx) {
  const Tensor& x = ctx.input(0);
  Tensor& y = ctx.output(0);
  if (y.numel() != 1 || x.dtype() != y.dtype() || !x.is_contiguous())
    return InvalidArgument("nn.Sum: " + x.DebugString() + " into " + y.DebugString());
  int64_t n = x.numel();
  cudaStream_t stream = Stream(ctx);
  return DispatchFloat(y.dtype(), [&](auto tag) -> Status {
    using T = decltype(tag);
    using D = DeviceT<T>;
    unsigned blocks = std::min(Blocks(n, kThreads), kMaxSumBlocks);
    if (blocks == 1) {  // one block sums it all
      SumKernel<D, D><<<1, kThreads, 0, stream>>>(Data<T>(x), n, Data<T>(y));
      return CheckLaunch("SumKernel");
    }
    WEIR_ASSIGN_OR_RETURN(Tensor partials, Scratch(ctx, DT_F64, {static_cast<int64_t>(blocks)}));
    double* partial = partials.data<double>();
    SumKernel<D, double><<<blocks, kThreads, 0, stream>>>(Data<T>(x), n, partial);
    WEIR_RETURN_IF_ERROR(CheckLaunch("SumKernel"));
    SumKernel<double, D><<<1, kMaxSumBlocks, 0, stream>>>(partial, blocks, Data<T>(y));
    return CheckLaunch("SumKernel");
  });
}

// dx = dy everywhere (the CPU's round trip through the accumulator type keeps dy's value).
Status SumGradCuda(KernelContext& ctx) {
  const Tensor& dy = ctx.input(0);
  Tensor& dx = ctx.output(0);
  if (dy.numel() != 1 || dy.dtype() != dx.dtype())
    return InvalidArgument("nn.SumGrad: " + dy.DebugString() + " into " + dx.DebugString());
  int64_t n = dx.numel();
  if (n == 0) return Status();
  return DispatchFloat(dx.dtype(), [&](auto tag) {
    using T = decltype(tag);
    BroadcastScalarKernel<<<Blocks(n, kThreads), kThreads, 0, Stream(ctx)>>>(Data<T>(dy),
                                                                             Data<T>(dx), n);
    return CheckLaunch("BroadcastScalarKernel");
  });
}

}  // namespace weir::nn::pointwise_cuda
