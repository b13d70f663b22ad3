// The few device operations the runtime itself needs (DeviceRuntime): fill, sum and convert.
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

#include "runtime_kernels.h"
#include "weir/cuda_kernel.h"

namespace weir::cuda {
namespace {

template <typename D, typename V>
__global__ void FillKernel(D* out, int64_t n, V value) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    out[i] = value;
}

// Sums up to kMaxParts arrays per pass; more parts take more passes, accumulating into out.
constexpr int kMaxParts = 8;
struct Parts {
  const void* data[kMaxParts];
  int count;
};

template <typename D>
__global__ void SumKernel(Parts parts, D* out, int64_t n, bool accumulate) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    auto total = accumulate ? Load(out[i]) : decltype(Load(out[i])){0};
    for (int p = 0; p < parts.count; ++p) total += Load(static_cast<const D*>(parts.data[p])[i]);
    out[i] = Store<D>(total);
  }
}

template <typename From, typename To>
__global__ void ConvertKernel(const From* in, To* out, int64_t n) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    out[i] = Store<To>(Load(in[i]));
}

template <typename F>
Status DispatchDevice(DataType dtype, F&& f) {
  switch (dtype) {
    case DT_F32:
      return f(float{});
    case DT_F64:
      return f(double{});
    case DT_BF16:
      return f(__nv_bfloat16{});
    case DT_F16:
      return f(__half{});
    default:
      return InvalidArgument(std::string("the CUDA runtime converts and sums f32, f64, bf16 and "
                                         "f16, not ") +
                             DataTypeName(dtype));
  }
}

}  // namespace

Status FillOnDevice(void* data, DataType dtype, int64_t count, double value, cudaStream_t stream) {
  if (count == 0) return Status();
  unsigned blocks = Blocks(count);
  auto launch = [&](auto tag, auto stored) {
    using D = decltype(tag);
    FillKernel<D><<<blocks, 256, 0, stream>>>(static_cast<D*>(data), count, stored);
    return CheckLaunch("FillKernel");
  };
  switch (dtype) {
    case DT_F32:
      return launch(float{}, static_cast<float>(value));
    case DT_F64:
      return launch(double{}, value);
    case DT_BF16:
      return launch(__nv_bfloat16{}, __double2bfloat16(value));
    case DT_F16:
      return launch(__half{}, __double2half(value));
    case DT_I64:
      return launch(int64_t{}, static_cast<int64_t>(value));
    case DT_I32:
      return launch(int32_t{}, static_cast<int32_t>(value));
    case DT_I8:
      return launch(int8_t{}, static_cast<int8_t>(value));
    case DT_U8:
    case DT_BOOL:
      return launch(uint8_t{}, static_cast<uint8_t>(value));
    default:
      return InvalidArgument(std::string("cannot fill ") + DataTypeName(dtype) + " on a GPU");
  }
}

Status SumOnDevice(const std::vector<const void*>& parts, void* out, DataType dtype, int64_t count,
                   cudaStream_t stream) {
  if (count == 0) return Status();
  return DispatchDevice(dtype, [&](auto tag) {
    using D = decltype(tag);
    for (size_t begin = 0; begin == 0 || begin < parts.size(); begin += kMaxParts) {
      Parts batch{};
      batch.count = static_cast<int>(std::min<size_t>(kMaxParts, parts.size() - begin));
      for (int p = 0; p < batch.count; ++p) batch.data[p] = parts[begin + static_cast<size_t>(p)];
      SumKernel<D>
          <<<Blocks(count), 256, 0, stream>>>(batch, static_cast<D*>(out), count, begin > 0);
      WEIR_RETURN_IF_ERROR(CheckLaunch("SumKernel"));
    }
    return Status();
  });
}

Status ConvertOnDevice(const void* in, DataType from, void* out, DataType to, int64_t count,
                       cudaStream_t stream) {
  if (count == 0) return Status();
  if (from == to) {
    return Check(cudaMemcpyAsync(out, in, static_cast<size_t>(count) * DataTypeSize(from),
                                 cudaMemcpyDeviceToDevice, stream),
                 "cudaMemcpyAsync (device to device)");
  }
  return DispatchDevice(from, [&](auto from_tag) {
    return DispatchDevice(to, [&](auto to_tag) {
      using F = decltype(from_tag);
      using T = decltype(to_tag);
      ConvertKernel<F, T><<<Blocks(count), 256, 0, stream>>>(static_cast<const F*>(in),
                                                             static_cast<T*>(out), count);
      return CheckLaunch("ConvertKernel");
    });
  });
}

}  // namespace weir::cuda
