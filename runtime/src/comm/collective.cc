#include "comm/collective.h"

#include <cmath>
#include <sstream>
#include <type_traits>

#include "weir/half.h"
#include "weir/parallel.h"

namespace weir::comm {

const char* CollectiveName(CollectiveKind kind) {
  switch (kind) {
    case CollectiveKind::kAllReduce:
      return "all_reduce";
    case CollectiveKind::kAllGather:
      return "all_gather";
    case CollectiveKind::kReduceScatter:
      return "reduce_scatter";
    case CollectiveKind::kAllToAllV:
      return "all_to_all_v";
    case CollectiveKind::kBroadcast:
      return "broadcast";
    case CollectiveKind::kBarrier:
      return "barrier";
  }
  return "unknown collective";
}

std::string CollectiveCall::Label() const {
  return std::string(CollectiveName(kind)) + " (tag " + std::to_string(tag) + ")";
}

namespace {

bool Reduces(CollectiveKind kind) {
  return kind == CollectiveKind::kAllReduce || kind == CollectiveKind::kReduceScatter;
}

}  // namespace

std::string CollectiveCall::Describe() const {
  std::string s = CollectiveName(kind);
  if (Reduces(kind)) s += std::string(" ") + ReduceOpName(reduce);
  s += " (tag " + std::to_string(tag) + ")";
  if (kind == CollectiveKind::kBarrier) return s;
  std::string shape_text = ShapeString(shape);
  if (kind == CollectiveKind::kAllToAllV && !shape.empty()) {
    // The row count may differ between ranks: only the row shape is part of the agreement.
    Shape rows(shape.begin() + 1, shape.end());
    shape_text = ShapeString(rows);
    shape_text = rows.empty() ? "[*]" : "[*, " + shape_text.substr(1);
  }
  s += std::string(" of ") + DataTypeName(dtype) + shape_text;
  if (kind == CollectiveKind::kBroadcast) s += " from rank " + std::to_string(root);
  return s;
}

bool CollectiveCall::Matches(const CollectiveCall& other) const {
  if (!valid || !other.valid) return false;
  if (kind != other.kind || tag != other.tag) return false;
  if (kind == CollectiveKind::kBarrier) return true;
  if (dtype != other.dtype) return false;
  if (Reduces(kind) && reduce != other.reduce) return false;
  if (kind == CollectiveKind::kBroadcast && root != other.root) return false;
  if (kind == CollectiveKind::kAllToAllV) {
    return shape.size() == other.shape.size() && !shape.empty() &&
           std::equal(shape.begin() + 1, shape.end(), other.shape.begin() + 1);
  }
  return shape == other.shape;
}

CollectiveCall::Signature CollectiveCall::Encode() const {
  CHECK_LE(shape.size(), static_cast<size_t>(kMaxSignatureDims));
  Signature s{};
  s[0] = valid ? 1 : 0;
  s[1] = static_cast<int64_t>(kind);
  s[2] = tag;
  s[3] = static_cast<int64_t>(reduce);
  s[4] = root;
  s[5] = static_cast<int64_t>(dtype);
  s[6] = static_cast<int64_t>(shape.size());
  for (size_t d = 0; d < shape.size(); ++d) s[8 + d] = shape[d];
  return s;
}

CollectiveCall CollectiveCall::Decode(const Signature& s) {
  CollectiveCall c;
  c.valid = s[0] == 1;
  c.kind = static_cast<CollectiveKind>(s[1]);
  c.tag = static_cast<int>(s[2]);
  c.reduce = static_cast<ReduceOp>(s[3]);
  c.root = static_cast<int>(s[4]);
  c.dtype = static_cast<DataType>(s[5]);
  int64_t ndims = std::min<int64_t>(std::max<int64_t>(s[6], 0), kMaxSignatureDims);
  c.shape.assign(s.begin() + 8, s.begin() + 8 + ndims);
  return c;
}

Status Validate(const CollectiveCall& call, const Tensor& t, const std::vector<int64_t>& counts,
                int rank, int size, const PlaceCheck& place) {
  std::string where = "rank " + std::to_string(rank) + ": " + call.Label() + ": ";
  if (call.tag < 0) return InvalidArgument(where + "tags are >= 0");
  if (call.kind == CollectiveKind::kBarrier) return Status::Ok();
  if (!t.defined()) return InvalidArgument(where + "no tensor given");
  if (place) {
    WEIR_RETURN_IF_ERROR(place(t, where));
  } else if (t.device().type != DeviceType::kCpu) {
    return InvalidArgument(where + "the tensor is on " + t.device().ToString() +
                           "; this communicator moves CPU tensors");
  }
  if (t.rank() > CollectiveCall::kMaxSignatureDims) {
    return InvalidArgument(where + "collectives take tensors of at most " +
                           std::to_string(CollectiveCall::kMaxSignatureDims) + " dims, got " +
                           t.DebugString());
  }
  if (Reduces(call.kind) && !IsReducible(t.dtype())) {
    return InvalidArgument(where + "reduces f32, f64, bf16, f16, i32 and i64 tensors, not " +
                           DataTypeName(t.dtype()));
  }
  if (call.kind == CollectiveKind::kReduceScatter && (t.rank() == 0 || t.dim(0) % size != 0)) {
    return InvalidArgument(where + "dim 0 must be a multiple of the " + std::to_string(size) +
                           " ranks, got " + t.DebugString());
  }
  if (call.kind == CollectiveKind::kAllToAllV) {
    if (t.rank() == 0) return InvalidArgument(where + "needs a tensor of rows, got a scalar");
    if (static_cast<int>(counts.size()) != size) {
      return InvalidArgument(where + "send_counts has " + std::to_string(counts.size()) +
                             " entries, one per rank expected (" + std::to_string(size) + ")");
    }
    int64_t total = 0;
    for (size_t j = 0; j < counts.size(); ++j) {
      if (counts[j] < 0) {
        return InvalidArgument(where + "send_counts[" + std::to_string(j) + "] is " +
                               std::to_string(counts[j]));
      }
      total += counts[j];
    }
    if (total != t.dim(0)) {
      return InvalidArgument(where + "send_counts sum to " + std::to_string(total) +
                             " rows but the tensor has " + std::to_string(t.dim(0)) + " (" +
                             t.DebugString() + ")");
    }
  }
  if (call.kind == CollectiveKind::kBroadcast && (call.root < 0 || call.root >= size)) {
    return InvalidArgument(where + "root " + std::to_string(call.root) +
                           " is not a rank of this communicator of " + std::to_string(size));
  }
  return Status::Ok();
}

Status ValidatePeer(const char* what, int peer, int tag, int rank, int size) {
  bool is_send = std::string(what) == "send";
  std::string where = "rank " + std::to_string(rank) + ": " + what + " (tag " +
                      std::to_string(tag) + ") " + (is_send ? "to" : "from") + " rank " +
                      std::to_string(peer) + ": ";
  if (peer < 0 || peer >= size) {
    return InvalidArgument(where + "no such rank in a communicator of " + std::to_string(size));
  }
  if (tag < 0) return InvalidArgument(where + "tags are >= 0");
  return Status::Ok();
}

std::string Seconds(double s) {
  std::ostringstream out;
  out << s << " s";
  return out.str();
}

std::string RankList(const std::vector<int>& ranks) {
  if (ranks.empty()) return "no rank";
  std::string s = ranks.size() == 1 ? "rank " : "ranks ";
  for (size_t i = 0; i < ranks.size(); ++i) {
    if (i > 0) s += i + 1 == ranks.size() ? " and " : ", ";
    s += std::to_string(ranks[i]);
  }
  return s;
}

bool IsReducible(DataType dtype) {
  switch (dtype) {
    case DT_F32:
    case DT_F64:
    case DT_BF16:
    case DT_F16:
    case DT_I32:
    case DT_I64:
      return true;
    default:
      return false;
  }
}

namespace {

// Storage type T, accumulated in A.
template <typename T, typename A>
void ReduceTyped(ReduceOp op, const std::vector<const void*>& parts, int64_t n, void* out_raw) {
  T* out = static_cast<T*>(out_raw);
  // Blocks keep the accumulators in cache while every part streams through once; each element
  // is still combined in rank order, so the blocking changes no result.
  constexpr int64_t kBlock = 2048;
  ParallelFor(n, 4 * kBlock, [&](int64_t begin, int64_t end) {
    A acc[kBlock];
    for (int64_t b = begin; b < end; b += kBlock) {
      int64_t len = std::min(kBlock, end - b);
      const T* first = static_cast<const T*>(parts[0]) + b;
      for (int64_t i = 0; i < len; ++i) acc[i] = static_cast<A>(first[i]);
      for (size_t r = 1; r < parts.size(); ++r) {
        const T* p = static_cast<const T*>(parts[r]) + b;
        if (op == ReduceOp::kSum) {
          if constexpr (std::is_floating_point_v<A>) {
            for (int64_t i = 0; i < len; ++i) acc[i] += static_cast<A>(p[i]);
          } else {
            // Integers wrap around (in unsigned arithmetic: signed overflow is undefined).
            using U = std::make_unsigned_t<A>;
            for (int64_t i = 0; i < len; ++i)
              acc[i] = static_cast<A>(static_cast<U>(acc[i]) + static_cast<U>(p[i]));
          }
        } else {
          for (int64_t i = 0; i < len; ++i) {
            A x = static_cast<A>(p[i]);
            if constexpr (std::is_floating_point_v<A>) {
              // NaN wins whichever rank holds it, so the result does not depend on the order.
              acc[i] = (std::isnan(acc[i]) || acc[i] >= x) ? acc[i] : x;
            } else {
              acc[i] = acc[i] >= x ? acc[i] : x;
            }
          }
        }
      }
      for (int64_t i = 0; i < len; ++i) out[b + i] = static_cast<T>(acc[i]);
    }
  });
}

}  // namespace

void ReduceInOrder(DataType dtype, ReduceOp op, const std::vector<const void*>& parts, int64_t n,
                   void* out) {
  CHECK(!parts.empty());
  switch (dtype) {
    case DT_F32:
      return ReduceTyped<float, float>(op, parts, n, out);
    case DT_F64:
      return ReduceTyped<double, double>(op, parts, n, out);
    case DT_BF16:
      return ReduceTyped<bf16, float>(op, parts, n, out);
    case DT_F16:
      return ReduceTyped<f16, float>(op, parts, n, out);
    case DT_I32:
      return ReduceTyped<int32_t, int32_t>(op, parts, n, out);
    case DT_I64:
      return ReduceTyped<int64_t, int64_t>(op, parts, n, out);
    default:
      LOG(FATAL) << "no reduction for " << DataTypeName(dtype);
  }
}

}  // namespace weir::comm
