#include <cuda_runtime.h>

#include "weir/cuda.h"

namespace weir::cuda {
namespace {

__global__ void Fill(float* data, size_t count, float value) {
  for (size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; i < count;
       i += static_cast<size_t>(gridDim.x) * blockDim.x)
    data[i] = value;
}

}  // namespace

Status FillFloats(void* data, size_t count, float value, StreamId stream) {
  if (count == 0) return Status();
  constexpr unsigned kThreads = 256;
  // Enough blocks to fill the GPU; each thread strides over the rest.
  unsigned blocks =
      static_cast<unsigned>(std::min<size_t>((count + kThreads - 1) / kThreads, 4096));
  Fill<<<blocks, kThreads, 0, reinterpret_cast<cudaStream_t>(stream)>>>(static_cast<float*>(data),
                                                                        count, value);
  cudaError_t error = cudaGetLastError();
  if (error != cudaSuccess)
    return Unavailable(std::string("FillFloats: ") + cudaGetErrorString(error));
  return Status();
}

}  // namespace weir::cuda
