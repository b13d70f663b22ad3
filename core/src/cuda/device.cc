#include <cuda_runtime.h>

#include "weir/cuda.h"
#include "weir/cuda_kernel.h"

namespace weir::cuda {

Status Check(cudaError_t error, const char* what) {
  if (error == cudaSuccess) return Status();
  return Unavailable(std::string(what) + ": " + cudaGetErrorName(error) + " (" +
                     cudaGetErrorString(error) + ")");
}

Status CheckLaunch(const char* kernel) {
  return Check(cudaGetLastError(), (std::string("launching ") + kernel).c_str());
}

namespace {

class CudaMemory : public DeviceMemoryBackend {
 public:
  explicit CudaMemory(int device) : device_(device) {}
  void* Malloc(size_t bytes) override {
    void* p = nullptr;
    if (cudaSetDevice(device_) != cudaSuccess || cudaMalloc(&p, bytes) != cudaSuccess) {
      cudaGetLastError();  // out of memory is reported by the cache, not left sticky
      return nullptr;
    }
    return p;
  }
  void Free(void* ptr) override {
    cudaSetDevice(device_);
    cudaFree(ptr);
  }
  uint64_t RecordEvent(StreamId stream) override {
    cudaEvent_t event = nullptr;
    cudaSetDevice(device_);
    cudaEventCreateWithFlags(&event, cudaEventDisableTiming);
    cudaEventRecord(event, reinterpret_cast<cudaStream_t>(stream));
    return reinterpret_cast<uint64_t>(event);
  }
  bool EventDone(uint64_t event) override {
    return cudaEventQuery(reinterpret_cast<cudaEvent_t>(event)) == cudaSuccess;
  }
  void DestroyEvent(uint64_t event) override {
    cudaEventDestroy(reinterpret_cast<cudaEvent_t>(event));
  }

 private:
  int device_;
};

}  // namespace

int DeviceCount(std::string* why) {
  int count = 0;
  cudaError_t error = cudaGetDeviceCount(&count);
  if (error != cudaSuccess) {
    if (why != nullptr)
      *why = std::string(cudaGetErrorName(error)) + ": " + cudaGetErrorString(error);
    cudaGetLastError();
    return 0;
  }
  if (count == 0 && why != nullptr) *why = "the CUDA runtime sees no devices";
  return count;
}

StatusOr<DeviceInfo> Device(int index) {
  cudaDeviceProp prop{};
  WEIR_RETURN_IF_ERROR(Check(cudaGetDeviceProperties(&prop, index),
                             ("cudaGetDeviceProperties(" + std::to_string(index) + ")").c_str()));
  DeviceInfo info;
  info.name = prop.name;
  info.major = prop.major;
  info.minor = prop.minor;
  info.memory_bytes = prop.totalGlobalMem;
  info.multiprocessors = prop.multiProcessorCount;
  return info;
}

std::unique_ptr<DeviceMemoryBackend> MakeMemoryBackend(int device) {
  return std::make_unique<CudaMemory>(device);
}

Status CopyToHost(void* host, const void* device, size_t bytes) {
  return Check(cudaMemcpy(host, device, bytes, cudaMemcpyDeviceToHost), "cudaMemcpy to host");
}

Status CopyToDevice(void* device, const void* host, size_t bytes) {
  return Check(cudaMemcpy(device, host, bytes, cudaMemcpyHostToDevice), "cudaMemcpy to device");
}

}  // namespace weir::cuda
