#include "weir/device.h"

#include <tbb/task.h>
#include <tbb/task_arena.h>

#include <atomic>
#include <charconv>
#include <condition_variable>
#include <map>
#include <mutex>

namespace weir {
namespace {

struct Registry {
  std::mutex mu;
  std::map<std::string, DeviceFactory> factories;
  std::map<std::pair<std::string, int>, DeviceRuntime*> runtimes;
};

Registry& Devices() {
  static Registry* registry = new Registry();  // runtimes live for the process
  return *registry;
}

}  // namespace

StatusOr<Tensor> StreamContext::Empty(DataType dtype, const Shape& shape) const {
  size_t bytes = static_cast<size_t>(NumElements(shape)) * DataTypeSize(dtype);
  WEIR_ASSIGN_OR_RETURN(std::shared_ptr<Storage> storage, runtime_->Allocate(bytes, stream_));
  return Tensor::FromStorage(std::move(storage), dtype, shape);
}

void RegisterDeviceType(const std::string& type, DeviceFactory factory) {
  Registry& r = Devices();
  std::lock_guard<std::mutex> lock(r.mu);
  r.factories[type] = std::move(factory);
}

bool IsDeviceType(const std::string& type) {
  Registry& r = Devices();
  std::lock_guard<std::mutex> lock(r.mu);
  return r.factories.count(type) > 0;
}

StatusOr<DeviceName> ParseDeviceName(const std::string& device) {
  DeviceName name;
  size_t colon = device.find(':');
  name.type = device.substr(0, colon);
  if (colon != std::string::npos) {
    const char* begin = device.data() + colon + 1;
    const char* end = device.data() + device.size();
    auto [at, error] = std::from_chars(begin, end, name.index);
    if (error != std::errc() || at != end || begin == end || name.index < 0)
      return InvalidArgument("device '" + device + "': expected TYPE or TYPE:INDEX (cuda:0)");
  }
  if (name.type.empty())
    return InvalidArgument("device '" + device + "': expected TYPE or TYPE:INDEX (cuda:0)");
  return name;
}

StatusOr<DeviceRuntime*> FindDeviceRuntime(const std::string& device) {
  WEIR_ASSIGN_OR_RETURN(DeviceName name, ParseDeviceName(device));
  if (name.host()) return static_cast<DeviceRuntime*>(nullptr);
  Registry& r = Devices();
  std::lock_guard<std::mutex> lock(r.mu);
  auto known = r.runtimes.find({name.type, name.index});
  if (known != r.runtimes.end()) return known->second;
  auto factory = r.factories.find(name.type);
  if (factory == r.factories.end()) {
    std::string types = "cpu";
    for (const auto& [type, f] : r.factories) types += ", " + type;
    return NotFound("device '" + device + "': this build of weir runs on " + types);
  }
  auto made = factory->second(name.index);
  if (!made.ok()) return Status(made.status()).Prepend("device '" + device + "'");
  r.runtimes[{name.type, name.index}] = *made;
  return *made;
}

void AwaitCallback(const std::function<void(std::function<void()> done)>& arm) {
  if (tbb::this_task_arena::current_thread_index() != tbb::task_arena::not_initialized) {
    // The callback may fire before suspend has finished suspending: resume handles that (the
    // task then continues at once).
    tbb::task::suspend(
        [&](tbb::task::suspend_point tag) { arm([tag] { tbb::task::resume(tag); }); });
    return;
  }
  std::mutex mu;
  std::condition_variable cv;
  bool finished = false;
  arm([&] {
    std::lock_guard<std::mutex> lock(mu);
    finished = true;
    cv.notify_one();
  });
  std::unique_lock<std::mutex> lock(mu);
  cv.wait(lock, [&] { return finished; });
}

}  // namespace weir
