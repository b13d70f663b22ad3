// The CUDA device (DESIGN.md §7), in libweir_cuda: built whenever CMake finds nvcc (the machine
// image's toolkit under /usr/local/cuda), with or without a GPU; WEIR_HAVE_CUDA is defined for
// code that links it. Without a GPU or driver, cudaGetDeviceCount fails: that means "no CUDA
// devices", never an error.
#pragma once

#include <cstddef>
#include <memory>
#include <string>

#include "weir/device_cache.h"
#include "weir/status.h"

namespace weir::cuda {

struct DeviceInfo {
  std::string name;
  int major = 0, minor = 0;  // compute capability (9.0: H100, H200)
  size_t memory_bytes = 0;
  int multiprocessors = 0;
};

// How many CUDA devices this process can use; 0 without one, with the CUDA runtime's reason in
// `why` (when given).
int DeviceCount(std::string* why = nullptr);
StatusOr<DeviceInfo> Device(int index);

// cudaMalloc, cudaFree and events on `device`, for a DeviceMemoryCache. Streams are
// cudaStream_t values (0: the legacy default stream).
std::unique_ptr<DeviceMemoryBackend> MakeMemoryBackend(int device);

// Sets `count` floats at `data` (device memory) to `value`, queued on `stream`: the first kernel,
// which the GPU tests use to check memory the cache hands out.
Status FillFloats(void* data, size_t count, float value, StreamId stream);
// Copies between host and device (cudaMemcpy, blocking).
Status CopyToHost(void* host, const void* device, size_t bytes);
Status CopyToDevice(void* device, const void* host, size_t bytes);

}  // namespace weir::cuda
