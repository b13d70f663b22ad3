// The stream-ordered caching allocator's bookkeeping (weir/device_cache.h) over a fake device
// whose events complete when the test says so; and, on a machine with a GPU, the same cache over
// cudaMalloc with a kernel writing what it hands out.
#include "weir/device_cache.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <map>
#include <random>
#include <thread>
#ifdef WEIR_HAVE_CUDA
#include "weir/cuda.h"
#endif

namespace weir {
namespace {

// Host memory standing in for a device of `capacity` bytes; events complete on Finish().
class FakeDevice : public DeviceMemoryBackend {
 public:
  explicit FakeDevice(size_t capacity = size_t{1} << 30) : capacity_(capacity) {}
  ~FakeDevice() override { EXPECT_TRUE(live_.empty()) << live_.size() << " segments leaked"; }
  void* Malloc(size_t bytes) override {
    std::lock_guard<std::mutex> lock(mu_);
    if (used_ + bytes > capacity_) return nullptr;
    used_ += bytes;
    char* p = new char[bytes];
    live_[p] = bytes;
    return p;
  }
  void Free(void* ptr) override {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = live_.find(static_cast<char*>(ptr));
    ASSERT_NE(it, live_.end());
    used_ -= it->second;
    delete[] it->first;
    live_.erase(it);
  }
  uint64_t RecordEvent(StreamId) override {
    std::lock_guard<std::mutex> lock(mu_);
    events_[++next_] = finished_;
    return next_;
  }
  bool EventDone(uint64_t event) override {
    std::lock_guard<std::mutex> lock(mu_);
    return events_.count(event) == 0 || events_.at(event) || finished_;
  }
  void DestroyEvent(uint64_t event) override {
    std::lock_guard<std::mutex> lock(mu_);
    events_.erase(event);
  }
  // Every stream has finished what was queued (events recorded later are pending again).
  void Finish() {
    std::lock_guard<std::mutex> lock(mu_);
    for (auto& [id, done] : events_) done = true;
  }
  size_t pending_events() {
    std::lock_guard<std::mutex> lock(mu_);
    return events_.size();
  }

 private:
  std::mutex mu_;
  size_t capacity_, used_ = 0;
  std::map<char*, size_t> live_;
  std::map<uint64_t, bool> events_;
  uint64_t next_ = 0;
  bool finished_ = false;
};

void* Get(DeviceMemoryCache& cache, size_t bytes, StreamId stream) {
  auto p = cache.Allocate(bytes, stream);
  EXPECT_TRUE(p.ok()) << p.status().ToString();
  return p.ok() ? *p : nullptr;
}

TEST(DeviceCache, SmallRequestsShareSegmentsAndReuseOnTheirStream) {
  FakeDevice device;
  DeviceMemoryCache cache(&device);
  EXPECT_EQ(DeviceMemoryCache::RoundedSize(1), 512u);
  EXPECT_EQ(DeviceMemoryCache::RoundedSize(1000), 1024u);
  std::vector<void*> blocks;
  for (int i = 0; i < 100; ++i) blocks.push_back(Get(cache, 10000, 1));  // 10,240 bytes each
  EXPECT_EQ(cache.stats().segments, 1);  // 100 x 10 KiB fit in one 2 MiB segment
  EXPECT_EQ(cache.stats().allocated_bytes, 100 * 10240);
  void* first = blocks[0];
  cache.Free(first);
  // The same stream takes it back at once, even though its event has not completed.
  EXPECT_EQ(Get(cache, 9000, 1), first);
  EXPECT_EQ(cache.stats().backend_mallocs, 1);
  for (void* b : blocks) cache.Free(b);
  EXPECT_EQ(cache.stats().allocated_bytes, 0);
  EXPECT_EQ(cache.stats().peak_allocated_bytes, 100 * 10240);
}

TEST(DeviceCache, AnotherStreamWaitsForTheFreeingStreamsEvent) {
  FakeDevice device;
  DeviceMemoryCache cache(&device);
  void* a = Get(cache, 1 << 20, 1);  // fills most of a 2 MiB segment
  void* rest = Get(cache, 1 << 20, 1);
  cache.Free(a);
  // Stream 2 must not get a while stream 1 may still be using it: a new segment.
  void* b = Get(cache, 1 << 20, 2);
  EXPECT_NE(b, a);
  EXPECT_EQ(cache.stats().segments, 2);
  cache.Free(b);
  device.Finish();  // stream 1's work is done: a is free for anyone
  void* c = Get(cache, 1 << 20, 3);
  EXPECT_TRUE(c == a || c == b) << "a cached block, not a new segment";
  EXPECT_EQ(cache.stats().segments, 2);
  cache.Free(c);
  cache.Free(rest);
}

TEST(DeviceCache, FreeNeighboursMergeAndLargeRequestsGetTheirOwnSegments) {
  FakeDevice device;
  DeviceMemoryCache cache(&device);
  void* a = Get(cache, 4096, 1);
  void* b = Get(cache, 4096, 1);
  void* c = Get(cache, 4096, 1);
  EXPECT_EQ(static_cast<char*>(b), static_cast<char*>(a) + 4096);
  cache.Free(a);
  cache.Free(b);  // merges with a
  // 8 KiB fits where a and b were.
  EXPECT_EQ(Get(cache, 8192, 1), a);
  void* large = Get(cache, 3 << 20, 1);  // 3 MiB: a segment of 4 MiB, 1 MiB left over
  EXPECT_EQ(cache.stats().segments, 2);
  EXPECT_EQ(cache.stats().reserved_bytes, (2 << 20) + (4 << 20));
  // Small: from the small segment, never from the large segment's remainder.
  char* tail = static_cast<char*>(Get(cache, 1 << 20, 1));
  EXPECT_EQ(cache.stats().segments, 2);
  EXPECT_TRUE(tail > static_cast<char*>(a) && tail < static_cast<char*>(a) + (2 << 20));
  cache.Free(large);
  cache.Free(tail);
  cache.Free(c);
  cache.Free(a);
  device.Finish();
  cache.ReleaseCached();
  EXPECT_EQ(cache.stats().segments, 0);
  EXPECT_EQ(cache.stats().reserved_bytes, 0);
  EXPECT_EQ(device.pending_events(), 0u);
}

TEST(DeviceCache, OutOfMemoryReleasesCachedSegmentsThenNamesTheRequest) {
  FakeDevice device(size_t{8} << 20);  // 8 MiB
  DeviceMemoryCache cache(&device);
  void* a = Get(cache, 3 << 20, 1);  // 4 MiB segment
  void* b = Get(cache, 3 << 20, 1);  // 4 MiB segment: the device is full
  cache.Free(a);
  device.Finish();
  // 6 MiB does not fit the cached 4 MiB block: the cache returns it and asks again.
  cache.Free(b);
  device.Finish();
  void* c = Get(cache, 6 << 20, 1);
  ASSERT_NE(c, nullptr);
  EXPECT_EQ(cache.stats().backend_frees, 2);
  auto too_much = cache.Allocate(4 << 20, 1);
  ASSERT_FALSE(too_much.ok());
  EXPECT_NE(too_much.status().message().find("out of device memory: 4194304 bytes requested"),
            std::string::npos)
      << too_much.status().ToString();
  cache.Free(c);
}

TEST(DeviceCache, ThreadsAllocatingAndFreeingLeaveNothingAllocated) {
  FakeDevice device;
  DeviceMemoryCache cache(&device);
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&cache, t] {
      std::mt19937 rng(static_cast<unsigned>(t));
      std::vector<std::pair<char*, size_t>> held;
      for (int i = 0; i < 2000; ++i) {
        if (held.empty() || rng() % 3 != 0) {
          size_t bytes = 1 + rng() % (rng() % 10 == 0 ? (3 << 20) : 50000);
          auto p = cache.Allocate(bytes, static_cast<StreamId>(t % 2));
          ASSERT_TRUE(p.ok());
          char* mem = static_cast<char*>(*p);
          mem[0] = static_cast<char>(t);  // the memory is usable
          mem[bytes - 1] = static_cast<char>(t);
          held.push_back({mem, bytes});
        } else {
          size_t k = rng() % held.size();
          EXPECT_EQ(held[k].first[0], static_cast<char>(t)) << "another thread wrote here";
          cache.Free(held[k].first);
          held.erase(held.begin() + static_cast<std::ptrdiff_t>(k));
        }
      }
      for (auto& [p, bytes] : held) cache.Free(p);
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(cache.stats().allocated_bytes, 0);
  EXPECT_GT(cache.stats().allocations, 4 * 1000);
  // Blocks were reused: far fewer segments than allocations.
  EXPECT_LT(cache.stats().backend_mallocs, cache.stats().allocations / 10);
}

#ifdef WEIR_HAVE_CUDA
TEST(CudaDevice, TheCacheHandsOutMemoryAKernelWrites) {
  std::string why;
  int devices = cuda::DeviceCount(&why);
  if (devices == 0) GTEST_SKIP() << "no CUDA device (" << why << "): the GPU checks run on a GPU";
  auto info = cuda::Device(0);
  ASSERT_TRUE(info.ok()) << info.status().ToString();
  EXPECT_GT(info->memory_bytes, 0u);
  auto backend = cuda::MakeMemoryBackend(0);
  DeviceMemoryCache cache(backend.get());
  size_t count = 3 << 20;  // 12 MiB of floats
  auto p = cache.Allocate(count * sizeof(float), 0);
  ASSERT_TRUE(p.ok()) << p.status().ToString();
  ASSERT_TRUE(cuda::FillFloats(*p, count, 2.5f, 0).ok());
  std::vector<float> host(count);
  ASSERT_TRUE(cuda::CopyToHost(host.data(), *p, count * sizeof(float)).ok());
  EXPECT_TRUE(std::all_of(host.begin(), host.end(), [](float v) { return v == 2.5f; }));
  cache.Free(*p);
}
#else
TEST(CudaDevice, TheCacheHandsOutMemoryAKernelWrites) {
  GTEST_SKIP() << "weir was built without CUDA (nvcc not found): libweir_cuda is not built";
}
#endif

}  // namespace
}  // namespace weir
