#include "weir/device_cache.h"

#include <algorithm>
#include <string>

namespace weir {

namespace {
size_t RoundUp(size_t v, size_t to) { return (v + to - 1) / to * to; }
std::string Mib(int64_t bytes) {
  return std::to_string(static_cast<double>(bytes) / (1 << 20)).substr(0, 6) + " MiB";
}
}  // namespace

size_t DeviceMemoryCache::RoundedSize(size_t bytes) {
  return std::max(kRound, RoundUp(bytes, kRound));
}

DeviceMemoryCache::~DeviceMemoryCache() {
  for (const auto& [base, first] : segments_) backend_->Free(base);
  for (const auto& block : storage_)
    if (block->has_event) backend_->DestroyEvent(block->event);
}

// A blank Block record: a spare one, else a new one (records live as long as the cache).
DeviceMemoryCache::Block* DeviceMemoryCache::NewBlock() {
  if (spare_.empty()) {
    storage_.push_back(std::make_unique<Block>());
    return storage_.back().get();
  }
  Block* b = spare_.back();
  spare_.pop_back();
  *b = Block();
  return b;
}

void DeviceMemoryCache::Insert(Block* block) { free_.insert(block); }
void DeviceMemoryCache::Erase(Block* block) { free_.erase(block); }

// A free block may serve `stream`: its own stream's work is ordered after the free; another
// stream's only once the freeing stream has finished what it had queued.
bool DeviceMemoryCache::Ready(Block* block) {
  if (!block->has_event) return true;
  if (!backend_->EventDone(block->event)) return false;
  backend_->DestroyEvent(block->event);
  block->has_event = false;
  return true;
}

DeviceMemoryCache::Block* DeviceMemoryCache::TakeFree(size_t size, StreamId stream, bool large) {
  Block key;
  key.size = size;
  for (auto it = free_.lower_bound(&key); it != free_.end(); ++it) {
    Block* b = *it;
    if (b->large != large) continue;
    if (b->stream != stream && !Ready(b)) continue;
    free_.erase(it);
    return b;
  }
  return nullptr;
}

DeviceMemoryCache::Block* DeviceMemoryCache::NewSegment(size_t size, StreamId stream, bool large) {
  size_t bytes = large ? RoundUp(size, kLargeRound) : kSmallSegment;
  void* memory = backend_->Malloc(bytes);
  if (memory == nullptr) {
    if (ReleaseFreeSegments() == 0) return nullptr;
    memory = backend_->Malloc(bytes);
    if (memory == nullptr) return nullptr;
  }
  ++stats_.backend_mallocs;
  ++stats_.segments;
  stats_.reserved_bytes += static_cast<int64_t>(bytes);
  Block* b = NewBlock();
  b->ptr = static_cast<char*>(memory);
  b->size = bytes;
  b->stream = stream;
  b->segment = b->ptr;
  b->large = large;
  segments_[b->ptr] = b;
  return b;
}

void DeviceMemoryCache::Split(Block* block, size_t size) {
  size_t rest = block->size - size;
  if (rest < (block->large ? kSmall : kRound)) return;
  Block* r = NewBlock();
  r->ptr = block->ptr + size;
  r->size = rest;
  r->stream = block->stream;
  r->segment = block->segment;
  r->large = block->large;
  r->prev = block;
  r->next = block->next;
  if (block->next != nullptr) block->next->prev = r;
  block->next = r;
  block->size = size;
  Insert(r);
}

StatusOr<void*> DeviceMemoryCache::Allocate(size_t bytes, StreamId stream) {
  size_t size = RoundedSize(bytes);
  bool large = size > kSmall;
  std::lock_guard<std::mutex> lock(mu_);
  Block* b = TakeFree(size, stream, large);
  if (b == nullptr) b = NewSegment(size, stream, large);
  if (b == nullptr) {
    return Unavailable("out of device memory: " + std::to_string(bytes) + " bytes requested, " +
                       Mib(stats_.allocated_bytes) + " allocated, " + Mib(stats_.reserved_bytes) +
                       " reserved in " + std::to_string(stats_.segments) + " segments");
  }
  if (b->has_event) {  // same stream: the event is moot
    backend_->DestroyEvent(b->event);
    b->has_event = false;
  }
  b->stream = stream;
  Split(b, size);
  b->allocated = true;
  allocated_[b->ptr] = b;
  ++stats_.allocations;
  stats_.allocated_bytes += static_cast<int64_t>(b->size);
  stats_.peak_allocated_bytes = std::max(stats_.peak_allocated_bytes, stats_.allocated_bytes);
  return static_cast<void*>(b->ptr);
}

void DeviceMemoryCache::Free(void* ptr) {
  if (ptr == nullptr) return;
  std::lock_guard<std::mutex> lock(mu_);
  auto it = allocated_.find(static_cast<char*>(ptr));
  if (it == allocated_.end()) return;
  Block* b = it->second;
  allocated_.erase(it);
  b->allocated = false;
  stats_.allocated_bytes -= static_cast<int64_t>(b->size);
  b->event = backend_->RecordEvent(b->stream);
  b->has_event = true;
  // Merge with free neighbours of the same stream: the new event is the later one on that
  // stream, so it covers theirs.
  auto absorb = [&](Block* left, Block* right) {
    Erase(left == b ? right : left);
    if (right->has_event && right != b) backend_->DestroyEvent(right->event);
    if (left->has_event && left != b) backend_->DestroyEvent(left->event);
    left->size += right->size;
    left->next = right->next;
    if (right->next != nullptr) right->next->prev = left;
    left->event = b->event;
    left->has_event = true;
    right->has_event = false;
    spare_.push_back(right);
    return left;
  };
  if (b->next != nullptr && !b->next->allocated && b->next->stream == b->stream)
    b = absorb(b, b->next);
  if (b->prev != nullptr && !b->prev->allocated && b->prev->stream == b->stream)
    b = absorb(b->prev, b);
  Insert(b);
}

size_t DeviceMemoryCache::ReleaseFreeSegments() {
  size_t released = 0;
  for (auto it = segments_.begin(); it != segments_.end();) {
    Block* b = it->second;
    bool whole = !b->allocated && b->prev == nullptr && b->next == nullptr;
    if (!whole || !Ready(b)) {
      ++it;
      continue;
    }
    Erase(b);
    backend_->Free(b->ptr);
    ++stats_.backend_frees;
    --stats_.segments;
    stats_.reserved_bytes -= static_cast<int64_t>(b->size);
    ++released;
    spare_.push_back(b);
    it = segments_.erase(it);
  }
  return released;
}

void DeviceMemoryCache::ReleaseCached() {
  std::lock_guard<std::mutex> lock(mu_);
  ReleaseFreeSegments();
}

DeviceCacheStats DeviceMemoryCache::stats() const {
  std::lock_guard<std::mutex> lock(mu_);
  return stats_;
}

}  // namespace weir
