// Programs on a device other than the host, without a GPU: a test device hands out memory of its
// own (host memory, so that the host's kernels can run on it), and counts what the runtime asks
// of it. Programs on it must give the host's results and gradients, copying inputs and
// parameters in and outputs out, and giving every byte back. Also: device names, waiting off the
// TBB worker, and that every tensor op of weir's plugins has a CUDA kernel in a CUDA build.
#include "weir/device.h"

#include <gtest/gtest.h>
#include <tbb/task_arena.h>
#include <tbb/task_group.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <fstream>
#include <map>
#include <mutex>
#include <thread>

#include "weir/plugin_loader.h"
#include "weir/runtime/program.h"
#include "weir/testing/op_check.h"

namespace weir::testing {
namespace {

class TestDevice : public DeviceRuntime {
 public:
  // Tensors in its memory say "cpu" (host kernels read them); the program knows them as the
  // device's because it made them there.
  Device device() const override { return {DeviceType::kCuda, 99}; }
  std::string kernel_device() const override { return "cpu"; }

  StatusOr<StreamId> AcquireStream() override {
    ++streams_out;
    return StreamId{42};
  }
  void ReleaseStream(StreamId stream) override {
    EXPECT_EQ(stream, StreamId{42});
    --streams_out;
  }
  StatusOr<std::shared_ptr<Storage>> Allocate(size_t bytes, StreamId stream) override {
    EXPECT_EQ(stream, StreamId{42});
    Allocator* host = &PooledCpuAllocator::Global();
    void* p = host->Allocate(std::max<size_t>(bytes, 1));
    live_bytes += static_cast<int64_t>(bytes);
    {
      std::lock_guard<std::mutex> lock(mu);
      blocks[static_cast<char*>(p)] = bytes;
    }
    return Storage::Wrap(p, bytes, [this, host, p, bytes] {
      {
        std::lock_guard<std::mutex> lock(mu);
        blocks.erase(static_cast<char*>(p));
      }
      host->Free(p, std::max<size_t>(bytes, 1));
      live_bytes -= static_cast<int64_t>(bytes);
    });
  }
  // Whether `p` lies in memory this device handed out and has not taken back.
  bool Owns(const void* p) {
    std::lock_guard<std::mutex> lock(mu);
    auto it = blocks.upper_bound(static_cast<const char*>(p));
    if (it == blocks.begin()) return false;
    --it;
    return static_cast<const char*>(p) < it->first + std::max<size_t>(it->second, 1);
  }
  Status CopyToDevice(void* device, const void* host, size_t bytes, StreamId) override {
    ++copies_in;
    std::memcpy(device, host, bytes);
    return Status();
  }
  Status CopyToHost(void* host, const void* device, size_t bytes, StreamId) override {
    ++copies_out;
    std::memcpy(host, device, bytes);
    return Status();
  }
  Status Fill(void* data, DataType dtype, int64_t count, double value, StreamId) override {
    ++fills;
    for (int64_t i = 0; i < count; ++i) StoreFromDouble(data, dtype, i, value);
    return Status();
  }
  Status Sum(const std::vector<const void*>& parts, void* out, DataType dtype, int64_t count,
             StreamId) override {
    ++sums;
    for (int64_t i = 0; i < count; ++i) {
      double total = 0;
      for (const void* p : parts) total += LoadAsDouble(p, dtype, i);
      StoreFromDouble(out, dtype, i, total);
    }
    return Status();
  }
  Status Convert(const void* in, DataType from, void* out, DataType to, int64_t count,
                 StreamId) override {
    ++converts;
    for (int64_t i = 0; i < count; ++i) StoreFromDouble(out, to, i, LoadAsDouble(in, from, i));
    return Status();
  }
  Status Synchronize(StreamId) override {
    ++waits;
    // Completion arrives from another thread, as a CUDA host function's would.
    AwaitCallback([](std::function<void()> done) { std::thread(std::move(done)).detach(); });
    return Status();
  }

  std::atomic<int> streams_out{0}, copies_in{0}, copies_out{0}, fills{0}, sums{0}, converts{0},
      waits{0};
  std::atomic<int64_t> live_bytes{0};
  std::mutex mu;
  std::map<const char*, size_t> blocks;
};

TestDevice& Device0() {
  static TestDevice* device = [] {
    auto* d = new TestDevice();
    RegisterDeviceType("test", [d](int index) -> StatusOr<DeviceRuntime*> {
      if (index != 0) return NotFound("the test device has index 0 only");
      return d;
    });
    return d;
  }();
  return *device;
}

TEST(DeviceNames, ParseAndRefuse) {
  auto cuda1 = ParseDeviceName("cuda:1");
  ASSERT_TRUE(cuda1.ok());
  EXPECT_EQ(cuda1->type, "cuda");
  EXPECT_EQ(cuda1->index, 1);
  EXPECT_TRUE(ParseDeviceName("cpu:3")->host());
  EXPECT_EQ(ParseDeviceName("cuda")->index, 0);
  for (const char* bad : {"cuda:", "cuda:x", "cuda:-1", ":0", "cuda:1x"}) {
    auto parsed = ParseDeviceName(bad);
    EXPECT_FALSE(parsed.ok()) << bad;
    EXPECT_NE(parsed.status().message().find("TYPE:INDEX"), std::string::npos) << bad;
  }
  auto unknown = FindDeviceRuntime("tpu:0");
  ASSERT_FALSE(unknown.ok());
  EXPECT_NE(unknown.status().message().find("'tpu:0'"), std::string::npos);
  EXPECT_NE(unknown.status().message().find("runs on cpu"), std::string::npos);
  auto host = FindDeviceRuntime("cpu");
  ASSERT_TRUE(host.ok());
  EXPECT_EQ(*host, nullptr);
}

TEST(DeviceWait, AwaitCallbackFreesTheOnlyWorker) {
  // One worker. The waiting task queues the task that completes its wait: that task can only run
  // on the worker the waiter gave up. Were the worker blocked instead, a watchdog ends the wait
  // after 10 s and the test fails rather than hangs.
  tbb::task_arena one(1);
  struct Flags {
    std::atomic<bool> by_task{false}, by_watchdog{false};
  };
  auto flags = std::make_shared<Flags>();  // the watchdog thread may outlive the test
  one.execute([&] {
    tbb::task_group tasks;
    tasks.run([&] {
      AwaitCallback([&](std::function<void()> done) {
        auto once = std::make_shared<std::atomic<bool>>(false);
        auto finish = [once, done] {
          if (!once->exchange(true)) done();
        };
        tasks.run([flags, finish] {
          flags->by_task = true;
          std::thread(finish).detach();  // completion arrives from another thread
        });
        std::thread([flags, finish] {
          for (int i = 0; i < 1000 && !flags->by_task; ++i)
            std::this_thread::sleep_for(std::chrono::milliseconds(10));
          if (!flags->by_task) {
            flags->by_watchdog = true;
            finish();
          }
        }).detach();
      });
    });
    tasks.wait();
  });
  EXPECT_TRUE(flags->by_task.load());
  EXPECT_FALSE(flags->by_watchdog.load());
}

TEST(DeviceWait, AwaitCallbackOutsideTbbSleeps) {
  std::atomic<bool> fired{false};
  AwaitCallback([&](std::function<void()> done) {
    std::thread([&fired, done] {
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
      fired = true;
      done();
    }).detach();
  });
  EXPECT_TRUE(fired.load());
}

TEST(DeviceProgram, MlpWithGradientsOnATestDeviceMatchesTheHost) {
  TestDevice& device = Device0();
  // nn.Linear has a parameter, a bias-free matmul and autodiff that accumulates gradients.
  OpCase linear{"nn.Linear", "out_features=6 T=f32", {{DT_F32, {2, 3, 5}}}};
  int before_in = device.copies_in, before_out = device.copies_out;
  EXPECT_GT(CheckDeviceGradients(linear, "test:0", 1e-6), 0);
  EXPECT_GT(device.copies_in, before_in);  // inputs, weights, parameters
  EXPECT_GT(device.copies_out, before_out);
  EXPECT_GT(device.waits, 0);
  OpCase swiglu{"nn.SwiGLU", "", {{DT_F32, {4, 7}}, {DT_F32, {4, 7}}}};
  EXPECT_GT(CheckDeviceGradients(swiglu, "test:0", 1e-6), 0);
  OpCase norm{"nn.RMSNorm", "T=f32 eps=1e-5", {{DT_F32, {3, 8}}}};
  EXPECT_GT(CheckDeviceGradients(norm, "test:0", 1e-6), 0);
  EXPECT_EQ(device.streams_out, 0);
  EXPECT_EQ(device.live_bytes, 0);  // every run gave its device memory back
}

TEST(DeviceProgram, TheProgramShowsItsCopies) {
  Device0();
  auto graph = OpGraph({"nn.Linear", "out_features=2 T=f32", {{DT_F32, {3, 4}}}}, false);
  ASSERT_TRUE(graph.ok()) << graph.status().ToString();
  ProgramOptions options;
  options.device = "test:0";
  auto program = Program::Build(*graph, "F", {}, {{DT_F32, {3, 4}}}, TestRegistry(), options);
  ASSERT_TRUE(program.ok()) << program.status().ToString();
  std::string text = (*program)->DebugString();
  EXPECT_NE(text.find("x0 = input copied to test:0("), std::string::npos) << text;
  EXPECT_NE(text.find("op.weight = param copied to test:0("), std::string::npos) << text;
}

TEST(DeviceProgram, ConstantsSumsAndConversionsRunOnTheDevice) {
  TestDevice& device = Device0();
  // x feeds both inputs of one Mul: its gradient is a sum of two parts, made on the device, and
  // the loss's seed is a constant filled there.
  std::string path =
      ::testing::TempDir() + "/device_twice_" + std::to_string(::getpid()) + ".pbtxt";
  std::ofstream(path) << R"(function {
  name: "F"
  input: "x"
  output: "loss=sum"
  node { name: "square" op: "nn.Mul" input: "x" input: "x" }
  node { name: "sum" op: "nn.Sum" input: "square" }
})";
  auto graph = LoadTestGraph(path);
  ASSERT_TRUE(graph.ok()) << graph.status().ToString();
  Tensor x = Tensor::FromValues(DT_F32, {4}, {1.5, -2, 0.25, 3});
  std::vector<Tensor> grads;
  int fills = device.fills, sums = device.sums;
  for (const char* where : {"cpu", "test:0"}) {
    ProgramOptions options;
    options.device = where;
    options.loss = "loss";
    options.input_grads = {"x"};
    auto program = Program::Build(*graph, "F", {}, {{DT_F32, {4}}}, TestRegistry(), options);
    ASSERT_TRUE(program.ok()) << program.status().ToString();
    ParamStore params;
    auto out = (*program)->Run({x}, params);
    ASSERT_TRUE(out.ok()) << out.status().ToString();
    ASSERT_EQ(out->input_grads.size(), 1u);
    grads.push_back(out->input_grads[0]);
  }
  EXPECT_GT(device.fills, fills);
  EXPECT_GT(device.sums, sums);
  EXPECT_FALSE(device.Owns(grads[1].raw_data()));  // outputs come back to the host
  EXPECT_EQ(grads[1].ToVector(), grads[0].ToVector());
  EXPECT_EQ(grads[1].ToVector(), (std::vector<double>{3, -4, 0.5, 6}));

  // A bf16 output from an f32 input: the kernel's rounding, copied back bit for bit.
  auto cast = RunOp({"nn.Cast", "dtype=bf16", {{DT_F32, {3, 4}}}}, {}, nullptr, "test:0");
  ASSERT_TRUE(cast.ok()) << cast.status().ToString();
  auto want = RunOp({"nn.Cast", "dtype=bf16", {{DT_F32, {3, 4}}}});
  ASSERT_TRUE(want.ok());
  EXPECT_EQ(cast->at(0).ToVector(), want->at(0).ToVector());
}

TEST(DeviceProgram, ADeviceThatIsMissingFailsTheRunWithItsName) {
  Device0();
  auto out = RunOp({"nn.SiLU", "", {{DT_F32, {3}}}}, {}, nullptr, "test:1");
  ASSERT_FALSE(out.ok());
  EXPECT_NE(out.status().ToString().find("test:1"), std::string::npos) << out.status().ToString();
}

TEST(CudaKernels, EveryTensorOpOfWeirsPluginsHasOne) {
#ifndef WEIR_HAVE_CUDA
  GTEST_SKIP() << "weir was built without CUDA (nvcc not found): no CUDA kernels to check";
#else
  OpRegistry registry;
  PluginLoader loader(&registry);
  ASSERT_TRUE(loader.LoadDefaults().ok());
  std::vector<std::string> missing;
  int tensor_ops = 0;
  for (const std::string& name : registry.OpNames()) {
    const OpEntry* op = registry.Find(name);
    if (op->def.kind() != OpDef::TENSOR) continue;
    ++tensor_ops;
    auto cpu = op->kernels.find("cpu");
    auto cuda = op->kernels.find("cuda");
    if (cuda == op->kernels.end()) {
      missing.push_back(name);
      continue;
    }
    // Every dtype the CPU kernel takes, the CUDA kernel takes too.
    const std::vector<DataType>& on_cpu = cpu->second.second;
    const std::vector<DataType>& on_cuda = cuda->second.second;
    for (DataType t : on_cpu) {
      if (!on_cuda.empty() && std::find(on_cuda.begin(), on_cuda.end(), t) == on_cuda.end())
        missing.push_back(name + " (" + DataTypeName(t) + ")");
    }
  }
  EXPECT_GT(tensor_ops, 50);
  std::string list;
  for (const std::string& m : missing) list += "\n  " + m;
  EXPECT_TRUE(missing.empty()) << missing.size() << " tensor ops lack a CUDA kernel:" << list;
#endif
}

}  // namespace
}  // namespace weir::testing
