// The CUDA DeviceRuntime: one per GPU, registered as device type "cuda" when libweir_cuda loads.
#include <cuda_runtime.h>

#include <memory>
#include <mutex>
#include <vector>

#include "runtime_kernels.h"
#include "weir/cuda.h"
#include "weir/cuda_kernel.h"
#include "weir/device.h"

namespace weir::cuda {
namespace {

cudaStream_t AsStream(StreamId s) { return reinterpret_cast<cudaStream_t>(s); }

class CudaRuntime : public DeviceRuntime {
 public:
  explicit CudaRuntime(int index)
      : index_(index), backend_(MakeMemoryBackend(index)), memory_(backend_.get()) {}

  weir::Device device() const override { return {DeviceType::kCuda, index_}; }
  std::string kernel_device() const override { return "cuda"; }

  StatusOr<StreamId> AcquireStream() override {
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (!idle_streams_.empty()) {
        StreamId s = idle_streams_.back();
        idle_streams_.pop_back();
        return s;
      }
    }
    WEIR_RETURN_IF_ERROR(Select());
    cudaStream_t stream = nullptr;
    WEIR_RETURN_IF_ERROR(
        Check(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking), "cudaStreamCreate"));
    return reinterpret_cast<StreamId>(stream);
  }

  void ReleaseStream(StreamId stream) override {
    std::lock_guard<std::mutex> lock(mu_);
    idle_streams_.push_back(stream);
  }

  StatusOr<std::shared_ptr<Storage>> Allocate(size_t bytes, StreamId stream) override {
    WEIR_ASSIGN_OR_RETURN(void* p, memory_.Allocate(std::max<size_t>(bytes, 1), stream));
    DeviceMemoryCache* memory = &memory_;
    return Storage::Wrap(
        p, bytes, [memory, p] { memory->Free(p); }, device());
  }

  Status CopyToDevice(void* device, const void* host, size_t bytes, StreamId stream) override {
    if (bytes == 0) return Status();
    WEIR_RETURN_IF_ERROR(Select());
    return Check(cudaMemcpyAsync(device, host, bytes, cudaMemcpyHostToDevice, AsStream(stream)),
                 "cudaMemcpyAsync to the device");
  }

  Status CopyToHost(void* host, const void* device, size_t bytes, StreamId stream) override {
    if (bytes == 0) return Status();
    WEIR_RETURN_IF_ERROR(Select());
    return Check(cudaMemcpyAsync(host, device, bytes, cudaMemcpyDeviceToHost, AsStream(stream)),
                 "cudaMemcpyAsync to the host");
  }

  Status Fill(void* data, DataType dtype, int64_t count, double value, StreamId stream) override {
    WEIR_RETURN_IF_ERROR(Select());
    return FillOnDevice(data, dtype, count, value, AsStream(stream));
  }

  Status Sum(const std::vector<const void*>& parts, void* out, DataType dtype, int64_t count,
             StreamId stream) override {
    WEIR_RETURN_IF_ERROR(Select());
    return SumOnDevice(parts, out, dtype, count, AsStream(stream));
  }

  Status Convert(const void* in, DataType from, void* out, DataType to, int64_t count,
                 StreamId stream) override {
    WEIR_RETURN_IF_ERROR(Select());
    return ConvertOnDevice(in, from, out, to, count, AsStream(stream));
  }

  Status Synchronize(StreamId stream) override {
    WEIR_RETURN_IF_ERROR(Select());
    // A host function queued behind the work resumes the waiter: inside a TBB task its worker
    // runs other tasks meanwhile instead of blocking in cudaStreamSynchronize.
    cudaError_t queued = cudaSuccess;
    AwaitCallback([&](std::function<void()> done) {
      auto* call = new std::function<void()>(done);
      queued = cudaLaunchHostFunc(
          AsStream(stream),
          [](void* f) {
            auto* resume = static_cast<std::function<void()>*>(f);
            (*resume)();
            delete resume;
          },
          call);
      if (queued != cudaSuccess) {  // nothing will call back: end the wait now
        delete call;
        done();
      }
    });
    if (queued != cudaSuccess) {
      cudaGetLastError();
      WEIR_RETURN_IF_ERROR(Check(cudaStreamSynchronize(AsStream(stream)), "cudaStreamSynchronize"));
    }
    // Errors of kernels that ran (illegal addresses, traps) are sticky and show here.
    return Check(cudaStreamQuery(AsStream(stream)), "the device's queued work");
  }

 private:
  Status Select() { return Check(cudaSetDevice(index_), "cudaSetDevice"); }

  int index_;
  std::unique_ptr<DeviceMemoryBackend> backend_;
  DeviceMemoryCache memory_;
  std::mutex mu_;
  std::vector<StreamId> idle_streams_;
};

const bool registered = [] {
  RegisterDeviceType("cuda", [](int index) -> StatusOr<DeviceRuntime*> {
    std::string why;
    int count = DeviceCount(&why);
    if (index >= count) {
      return NotFound("no CUDA device " + std::to_string(index) + " (" + std::to_string(count) +
                      " found" + (why.empty() ? "" : ": " + why) + ")");
    }
    return new CudaRuntime(index);  // lives for the process, like the CUDA context
  });
  return true;
}();

}  // namespace
}  // namespace weir::cuda
