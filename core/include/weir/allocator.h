// Memory for tensors. The CPU allocator hands out 64-byte-aligned blocks and keeps freed blocks
// in per-size free lists for reuse, so a training step that allocates the same shapes every
// iteration stops calling the system allocator after the first step. It reports live bytes (in
// use by tensors) and peak live bytes. Thread-safe.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <mutex>
#include <vector>

namespace weir {

// A device's queue of work (a cudaStream_t), by value; 0: the device's default stream.
using StreamId = uint64_t;

class Allocator {
 public:
  virtual ~Allocator() = default;
  // Returns a block of at least `bytes` bytes aligned to 64, or nullptr when out of memory.
  virtual void* Allocate(size_t bytes) = 0;
  // `bytes` must be what was asked of Allocate.
  virtual void Free(void* ptr, size_t bytes) = 0;
  virtual const char* name() const = 0;
};

struct AllocatorStats {
  int64_t live_bytes = 0;          // handed out and not yet freed (requested sizes)
  int64_t peak_bytes = 0;          // the most live_bytes ever was (since the last ResetPeak)
  int64_t pooled_bytes = 0;        // held in free lists for reuse
  int64_t allocations = 0;         // calls to Allocate
  int64_t system_allocations = 0;  // of those, how many reached the system allocator
};

class PooledCpuAllocator : public Allocator {
 public:
  static constexpr size_t kAlignment = 64;
  // The process-wide CPU allocator.
  static PooledCpuAllocator& Global();

  void* Allocate(size_t bytes) override;
  void Free(void* ptr, size_t bytes) override;
  const char* name() const override { return "cpu-pooled"; }

  AllocatorStats stats() const;
  void ResetPeak();
  // Returns pooled blocks to the system.
  void Trim();
  ~PooledCpuAllocator() override;

 private:
  // Blocks are rounded up to a size class: 64-byte steps up to 4 KiB, then a quarter of the
  // next power of two, so reuse is likely and waste stays under 25%.
  static size_t SizeClass(size_t bytes);

  mutable std::mutex mu_;
  std::map<size_t, std::vector<void*>> free_;
  AllocatorStats stats_;
};

}  // namespace weir
