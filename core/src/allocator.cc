#include "weir/allocator.h"

#include <bit>
#include <cstdlib>

namespace weir {

PooledCpuAllocator& PooledCpuAllocator::Global() {
  static auto* allocator = new PooledCpuAllocator();  // outlives every tensor
  return *allocator;
}

size_t PooledCpuAllocator::SizeClass(size_t bytes) {
  if (bytes == 0) bytes = 1;
  if (bytes <= 4096) return (bytes + kAlignment - 1) / kAlignment * kAlignment;
  size_t quarter = std::bit_ceil(bytes) / 4;
  return (bytes + quarter - 1) / quarter * quarter;
}

void* PooledCpuAllocator::Allocate(size_t bytes) {
  size_t size = SizeClass(bytes);
  {
    std::lock_guard<std::mutex> lock(mu_);
    ++stats_.allocations;
    stats_.live_bytes += static_cast<int64_t>(bytes);
    stats_.peak_bytes = std::max(stats_.peak_bytes, stats_.live_bytes);
    auto it = free_.find(size);
    if (it != free_.end() && !it->second.empty()) {
      void* p = it->second.back();
      it->second.pop_back();
      stats_.pooled_bytes -= static_cast<int64_t>(size);
      return p;
    }
    ++stats_.system_allocations;
  }
  void* p = std::aligned_alloc(kAlignment, size);
  if (p == nullptr) {
    std::lock_guard<std::mutex> lock(mu_);
    stats_.live_bytes -= static_cast<int64_t>(bytes);
  }
  return p;
}

void PooledCpuAllocator::Free(void* ptr, size_t bytes) {
  if (ptr == nullptr) return;
  size_t size = SizeClass(bytes);
  std::lock_guard<std::mutex> lock(mu_);
  stats_.live_bytes -= static_cast<int64_t>(bytes);
  stats_.pooled_bytes += static_cast<int64_t>(size);
  free_[size].push_back(ptr);
}

AllocatorStats PooledCpuAllocator::stats() const {
  std::lock_guard<std::mutex> lock(mu_);
  return stats_;
}

void PooledCpuAllocator::ResetPeak() {
  std::lock_guard<std::mutex> lock(mu_);
  stats_.peak_bytes = stats_.live_bytes;
}

void PooledCpuAllocator::Trim() {
  std::lock_guard<std::mutex> lock(mu_);
  for (auto& [size, blocks] : free_) {
    for (void* p : blocks) std::free(p);
    stats_.pooled_bytes -= static_cast<int64_t>(size * blocks.size());
    blocks.clear();
  }
}

PooledCpuAllocator::~PooledCpuAllocator() { Trim(); }

}  // namespace weir
