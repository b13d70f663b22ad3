// Devices besides the host that run programs (DESIGN.md §6: `cuda:N`). The runtime asks a device
// for little: memory ordered by a stream, copies to and from the host, a fill, a sum, a dtype
// conversion and a wait. Kernels do the rest (KernelContext::device() gives them the stream).
//
// A device type registers a factory under its name ("cuda"); programs built for "cuda:1" find the
// runtime of device 1 and the ops' kernels registered for "cuda".
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "weir/status.h"
#include "weir/tensor.h"
#include "weir/tensor_op.h"

namespace weir {

class DeviceRuntime {
 public:
  virtual ~DeviceRuntime() = default;
  virtual Device device() const = 0;
  // The device name whose kernels run here: "cuda" for CUDA devices.
  virtual std::string kernel_device() const = 0;

  // A stream for one run, given back with ReleaseStream once the run's work has finished.
  virtual StatusOr<StreamId> AcquireStream() = 0;
  virtual void ReleaseStream(StreamId stream) = 0;

  // Device memory for work on `stream`; freed when the storage dies, ordered after the work
  // queued on `stream` by then.
  virtual StatusOr<std::shared_ptr<Storage>> Allocate(size_t bytes, StreamId stream) = 0;

  // Queued on `stream`. The host memory must stay valid until Synchronize returns.
  virtual Status CopyToDevice(void* device, const void* host, size_t bytes, StreamId stream) = 0;
  virtual Status CopyToHost(void* host, const void* device, size_t bytes, StreamId stream) = 0;
  // Sets `count` elements of `dtype` to `value`.
  virtual Status Fill(void* data, DataType dtype, int64_t count, double value, StreamId stream) = 0;
  // out = Σ parts, elementwise, `count` elements of `dtype` each (out may not alias a part).
  virtual Status Sum(const std::vector<const void*>& parts, void* out, DataType dtype,
                     int64_t count, StreamId stream) = 0;
  // Converts `count` elements (round to nearest even where the target is narrower).
  virtual Status Convert(const void* in, DataType from, void* out, DataType to, int64_t count,
                         StreamId stream) = 0;
  // Returns once everything queued on `stream` has finished, with the first error the device
  // reported. Inside a TBB task it frees the worker thread meanwhile (AwaitCallback).
  virtual Status Synchronize(StreamId stream) = 0;
};

// What a kernel on a device is given (KernelContext::device()): one stream of a runtime, scratch
// memory ordered by it, and a wait for it. Programs give their kernels one per run; benchmarks
// and tests that call kernels directly make their own.
class StreamContext : public DeviceContext {
 public:
  StreamContext(DeviceRuntime* runtime, StreamId stream) : runtime_(runtime), stream_(stream) {}
  Device device() const override { return runtime_->device(); }
  StreamId stream() const override { return stream_; }
  StatusOr<Tensor> Empty(DataType dtype, const Shape& shape) const override;
  Status Synchronize() const override { return runtime_->Synchronize(stream_); }

 private:
  DeviceRuntime* runtime_;
  StreamId stream_;
};

using DeviceFactory = std::function<StatusOr<DeviceRuntime*>(int index)>;

// Registers the runtime of device type `type` ("cuda"). The factory is called once per index
// and its runtime lives for the process.
void RegisterDeviceType(const std::string& type, DeviceFactory factory);
bool IsDeviceType(const std::string& type);

// Parses "cuda:1" (type "cuda", index 1) and "cuda" (index 0); "cpu" and "cpu:N" are the host.
struct DeviceName {
  std::string type;
  int index = 0;
  bool host() const { return type == "cpu"; }
};
StatusOr<DeviceName> ParseDeviceName(const std::string& device);

// The runtime for a device name; nullptr for the host. An unknown type, or an index the type's
// factory refuses (no such GPU), is an error naming the device.
StatusOr<DeviceRuntime*> FindDeviceRuntime(const std::string& device);

// Waits until `arm` calls the function it is given (from any thread, once). Inside a TBB task
// the task is suspended (tbb::task::suspend), so its worker runs other tasks meanwhile and no
// worker blocks on a device; elsewhere the calling thread sleeps.
void AwaitCallback(const std::function<void(std::function<void()> done)>& arm);

}  // namespace weir
