// Helpers for kernels that split their work over oneTBB threads (header-only; a plugin that
// includes it links TBB::tbb, which the weir SDK's CMake package finds).
#pragma once

#include <tbb/blocked_range.h>
#include <tbb/parallel_for.h>

#include <atomic>
#include <cstdint>

#include "weir/status.h"

namespace weir {

// Runs f(begin, end) over [0, n) in parallel chunks of at least `grain` (inline when n <= grain).
template <typename F>
void ParallelFor(int64_t n, int64_t grain, F&& f) {
  if (n <= grain) {
    f(int64_t{0}, n);
    return;
  }
  tbb::parallel_for(tbb::blocked_range<int64_t>(0, n, static_cast<size_t>(grain)),
                    [&](const tbb::blocked_range<int64_t>& r) { f(r.begin(), r.end()); });
}

// The first error of tasks running in parallel; the others see failed() and stop early.
class FirstError {
 public:
  void Record(const Status& s) {
    if (!s.ok() && !failed_.exchange(true)) status_ = s;
  }
  bool failed() const { return failed_; }
  const Status& status() const { return status_; }

 private:
  std::atomic<bool> failed_{false};
  Status status_;
};

}  // namespace weir
