// A stream-ordered caching allocator for device memory (DESIGN.md §7: the CUDA device), as its
// bookkeeping alone: the memory itself comes from a DeviceMemoryBackend (cudaMalloc on a GPU, a
// fake in tests), so every rule below is tested on machines without a GPU.
//
//  - Segments come from the backend: 2 MiB for requests up to 1 MiB (carved into blocks), the
//    request rounded up to 2 MiB for larger ones. Requests round up to 512 bytes.
//  - A freed block goes back to the pool of the stream it was allocated on, where the next
//    allocation on that stream may take it at once: the stream runs work in order, so the new
//    user's kernels start after the old user's finished. Another stream may take it only once an
//    event recorded on the freeing stream at the free has completed.
//  - Blocks split (best fit, the remainder kept if at least 512 bytes, or 1 MiB in a large
//    segment) and free neighbours in one segment merge again.
//  - When the backend is out of memory, segments with nothing allocated in them are returned
//    (after their events completed) and the request retried once; then the error names the
//    request and what is held.
// Thread-safe.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <vector>

#include "weir/allocator.h"
#include "weir/status.h"

namespace weir {

class DeviceMemoryBackend {
 public:
  virtual ~DeviceMemoryBackend() = default;
  // nullptr when the device is out of memory.
  virtual void* Malloc(size_t bytes) = 0;
  virtual void Free(void* ptr) = 0;
  // An event recorded on `stream` now: it completes when the work queued on the stream so far
  // has finished.
  virtual uint64_t RecordEvent(StreamId stream) = 0;
  virtual bool EventDone(uint64_t event) = 0;
  virtual void DestroyEvent(uint64_t event) = 0;
};

struct DeviceCacheStats {
  int64_t allocated_bytes = 0;  // in blocks handed out (rounded sizes)
  int64_t peak_allocated_bytes = 0;
  int64_t reserved_bytes = 0;  // in segments taken from the backend
  int64_t segments = 0;
  int64_t backend_mallocs = 0;
  int64_t backend_frees = 0;
  int64_t allocations = 0;
};

class DeviceMemoryCache {
 public:
  static constexpr size_t kRound = 512;
  static constexpr size_t kSmall = size_t{1} << 20;         // requests up to this share segments
  static constexpr size_t kSmallSegment = size_t{2} << 20;  // of this size
  static constexpr size_t kLargeRound = size_t{2} << 20;

  explicit DeviceMemoryCache(DeviceMemoryBackend* backend) : backend_(backend) {}
  // Returns every segment to the backend (blocks still handed out are a leak in the caller).
  ~DeviceMemoryCache();
  DeviceMemoryCache(const DeviceMemoryCache&) = delete;
  DeviceMemoryCache& operator=(const DeviceMemoryCache&) = delete;

  // At least `bytes` bytes (512-aligned within 256-aligned segments) for work on `stream`.
  StatusOr<void*> Allocate(size_t bytes, StreamId stream);
  // Back to the pool of the stream it was allocated on. Null is ignored.
  void Free(void* ptr);
  // Returns the segments nothing is allocated in (whose streams' events completed).
  void ReleaseCached();
  DeviceCacheStats stats() const;
  // The rounded size a request of `bytes` takes.
  static size_t RoundedSize(size_t bytes);

 private:
  struct Block {
    char* ptr = nullptr;
    size_t size = 0;
    StreamId stream = 0;
    bool allocated = false;
    uint64_t event = 0;  // recorded at the free; 0: none pending
    bool has_event = false;
    char* segment = nullptr;  // the segment's base
    bool large = false;       // in a segment of its own size class
    Block* prev = nullptr;    // neighbours in the segment
    Block* next = nullptr;
  };
  struct BySize {
    bool operator()(const Block* a, const Block* b) const {
      return a->size != b->size ? a->size < b->size : a->ptr < b->ptr;
    }
  };

  Block* NewBlock();
  Block* TakeFree(size_t size, StreamId stream, bool large);
  Block* NewSegment(size_t size, StreamId stream, bool large);
  void Split(Block* block, size_t size);
  void Insert(Block* block);
  void Erase(Block* block);
  bool Ready(Block* block);
  size_t ReleaseFreeSegments();

  DeviceMemoryBackend* backend_;
  mutable std::mutex mu_;
  std::set<Block*, BySize> free_;      // every free block, any stream
  std::map<char*, Block*> allocated_;  // handed out, by pointer
  std::map<char*, Block*> segments_;   // first block of every segment, by base
  std::vector<std::unique_ptr<Block>> storage_;
  std::vector<Block*> spare_;  // Block records to reuse
  DeviceCacheStats stats_;
};

}  // namespace weir
