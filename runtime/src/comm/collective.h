// What the communicator backends share: how a collective call is described, checked against its
// peers' calls and named in messages, and the rank-order reduction that makes every backend give
// bitwise the same sums.
#pragma once

#include <array>
#include <chrono>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "weir/runtime/communicator.h"

namespace weir::comm {

using Clock = std::chrono::steady_clock;

enum class CollectiveKind : int64_t {
  kAllReduce = 1,
  kAllGather,
  kReduceScatter,
  kAllToAllV,
  kBroadcast,
  kBarrier,
};

// "all_reduce", …
const char* CollectiveName(CollectiveKind kind);

// One rank's collective call, as far as its peers must agree on it.
struct CollectiveCall {
  CollectiveKind kind = CollectiveKind::kBarrier;
  int tag = 0;
  ReduceOp reduce = ReduceOp::kSum;  // all_reduce, reduce_scatter
  int root = 0;                      // broadcast
  DataType dtype = DT_F32;
  Shape shape;        // the input's (all_to_all_v compares only the dims after the first)
  bool valid = true;  // false: the caller's arguments were refused (see Validate)

  static CollectiveCall Of(CollectiveKind kind, int tag, ReduceOp reduce = ReduceOp::kSum,
                           int root = 0) {
    CollectiveCall c;
    c.kind = kind;
    c.tag = tag;
    c.reduce = reduce;
    c.root = root;
    return c;
  }

  // "all_reduce (tag 7)": how messages name the call.
  std::string Label() const;
  // "all_reduce sum (tag 7) of f32[4, 3]": Label() with what peers must agree on.
  std::string Describe() const;
  // Whether two ranks' calls form one operation.
  bool Matches(const CollectiveCall& other) const;

  // A fixed-size record of the fields peers compare, so a backend can exchange it (MPI gathers
  // every rank's). Shapes of more than kMaxSignatureDims dims are compared by a hash.
  static constexpr int kMaxSignatureDims = 8;
  static constexpr int kSignatureLength = 8 + kMaxSignatureDims;
  using Signature = std::array<int64_t, kSignatureLength>;
  Signature Encode() const;
  static CollectiveCall Decode(const Signature& s);
};

// A backend's collectives, each one call of its StartCollective (what every backend's Start…
// methods would otherwise repeat).
class CollectiveBackend : public Communicator {
 public:
  using Communicator::Communicator;
  CommHandle StartAllReduce(const Tensor& t, ReduceOp op, int tag) override {
    return StartCollective(CollectiveCall::Of(CollectiveKind::kAllReduce, tag, op), t, {});
  }
  CommHandle StartAllGather(const Tensor& t, int tag) override {
    return StartCollective(CollectiveCall::Of(CollectiveKind::kAllGather, tag), t, {});
  }
  CommHandle StartReduceScatter(const Tensor& t, ReduceOp op, int tag) override {
    return StartCollective(CollectiveCall::Of(CollectiveKind::kReduceScatter, tag, op), t, {});
  }
  CommHandle StartAllToAllV(const Tensor& t, const std::vector<int64_t>& send_counts,
                            int tag) override {
    return StartCollective(CollectiveCall::Of(CollectiveKind::kAllToAllV, tag), t, send_counts);
  }
  CommHandle StartBroadcast(const Tensor& t, int root, int tag) override {
    return StartCollective(
        CollectiveCall::Of(CollectiveKind::kBroadcast, tag, ReduceOp::kSum, root), t, {});
  }
  CommHandle StartBarrier(int tag) override {
    return StartCollective(CollectiveCall::Of(CollectiveKind::kBarrier, tag), Tensor(), {});
  }

 protected:
  virtual CommHandle StartCollective(CollectiveCall call, const Tensor& t,
                                     const std::vector<int64_t>& send_counts) = 0;
};

// Checks where a tensor lives for a backend; `where` starts its messages.
using PlaceCheck = std::function<Status(const Tensor& t, const std::string& where)>;

// The call's arguments checked without its peers: the tensor's place (`place`; unset: host
// memory), a reducible dtype, dim 0 divisible by `size` for reduce_scatter, counts for
// all_to_all_v, the root in range. Messages start with "rank R: LABEL: ".
Status Validate(const CollectiveCall& call, const Tensor& t, const std::vector<int64_t>& counts,
                int rank, int size, const PlaceCheck& place = nullptr);
Status ValidatePeer(const char* what, int peer, int tag, int rank, int size);  // send / recv

// "0.3 s", "300 s".
std::string Seconds(double s);
// "rank 3", "ranks 2 and 3", "ranks 1, 2 and 3".
std::string RankList(const std::vector<int>& ranks);

bool IsReducible(DataType dtype);
// out[i] = parts[0][i] ⊕ parts[1][i] ⊕ … for i in [0, n), combined in the order of `parts` with
// the dtype's accumulator (f32 for bf16 and f16). `out` may alias none of the parts.
void ReduceInOrder(DataType dtype, ReduceOp op, const std::vector<const void*>& parts, int64_t n,
                   void* out);

}  // namespace weir::comm
