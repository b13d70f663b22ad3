// Status and StatusOr: how errors a user can cause travel through weir.
//
// A Status names where the problem is (file:line:col, node, op, attr) so that every message a user
// sees points at the line to fix. glog CHECK is reserved for broken internal invariants.
#pragma once

#include <glog/logging.h>

#include <optional>
#include <string>
#include <utility>
#include <variant>
#include <vector>

namespace weir {

// A position in a graph file. line and col are 1-based; line 0 means unknown (binary .pb files).
struct SourceLoc {
  std::string file;
  int line = 0;
  int col = 0;

  bool known() const { return line > 0; }
  // "file:line:col", "file", or "" when nothing is known.
  std::string ToString() const;
  // The same place, `offset` columns further right on the same line.
  SourceLoc Shifted(int offset) const;
};

enum class StatusCode {
  kOk = 0,
  kInvalidArgument,  // bad graph, bad attr, bad data
  kNotFound,         // missing file, op, node
  kAlreadyExists,    // duplicate op, node, function
  kFailedPrecondition,
  kInternal,          // a kernel threw, a broken invariant surfaced as an error
  kCancelled,         // stopped by SIGINT or by another node's failure
  kUnavailable,       // a resource (file system, device) failed
  kDataLoss,          // a file is damaged or incomplete (a checksum differs)
  kDeadlineExceeded,  // a node or rank made no progress within its timeout
};

const char* StatusCodeName(StatusCode code);

class [[nodiscard]] Status {
 public:
  Status() = default;
  Status(StatusCode code, std::string message) : code_(code), message_(std::move(message)) {}

  static Status Ok() { return Status(); }

  bool ok() const { return code_ == StatusCode::kOk; }
  StatusCode code() const { return code_; }
  const std::string& message() const { return message_; }
  const SourceLoc& loc() const { return loc_; }
  const std::string& node() const { return node_; }
  const std::string& op() const { return op_; }
  const std::string& attr() const { return attr_; }

  // Builders: each returns *this so call sites read as one expression. Location, node and op are
  // only filled when not set already, so the innermost (most precise) context wins.
  Status& At(const SourceLoc& loc);
  Status& InNode(const std::string& node, const std::string& op = "");
  Status& InAttr(const std::string& attr);
  Status& Prepend(const std::string& context);

  // "file:line:col: node 'n' (op 'x.Y'): attr 'a': message"
  std::string ToString() const;

  // Several independent errors become one Status that prints each on its own line; one error is
  // returned as it is; none gives OK.
  static Status Join(const std::vector<Status>& errors);

 private:
  StatusCode code_ = StatusCode::kOk;
  std::string message_;
  SourceLoc loc_;
  std::string node_;
  std::string op_;
  std::string attr_;
};

inline Status InvalidArgument(std::string m) {
  return {StatusCode::kInvalidArgument, std::move(m)};
}
inline Status NotFound(std::string m) { return {StatusCode::kNotFound, std::move(m)}; }
inline Status AlreadyExists(std::string m) { return {StatusCode::kAlreadyExists, std::move(m)}; }
inline Status Internal(std::string m) { return {StatusCode::kInternal, std::move(m)}; }
inline Status Cancelled(std::string m) { return {StatusCode::kCancelled, std::move(m)}; }
inline Status Unavailable(std::string m) { return {StatusCode::kUnavailable, std::move(m)}; }
inline Status DataLoss(std::string m) { return {StatusCode::kDataLoss, std::move(m)}; }
inline Status DeadlineExceeded(std::string m) {
  return {StatusCode::kDeadlineExceeded, std::move(m)};
}
inline Status FailedPrecondition(std::string m) {
  return {StatusCode::kFailedPrecondition, std::move(m)};
}

template <typename T>
class [[nodiscard]] StatusOr {
 public:
  StatusOr(const Status& status) : value_(status) {  // NOLINT: implicit by design
    CHECK(!status.ok()) << "StatusOr built from an OK status";
  }
  StatusOr(Status&& status) : value_(std::move(status)) {  // NOLINT
    CHECK(!std::get<Status>(value_).ok()) << "StatusOr built from an OK status";
  }
  StatusOr(const T& value) : value_(value) {}        // NOLINT
  StatusOr(T&& value) : value_(std::move(value)) {}  // NOLINT

  bool ok() const { return std::holds_alternative<T>(value_); }
  const Status& status() const {
    static const Status kOk;
    return ok() ? kOk : std::get<Status>(value_);
  }
  Status& mutable_status() { return std::get<Status>(value_); }
  T& value() & {
    CHECK(ok()) << status().ToString();
    return std::get<T>(value_);
  }
  const T& value() const& {
    CHECK(ok()) << status().ToString();
    return std::get<T>(value_);
  }
  T&& value() && {
    CHECK(ok()) << status().ToString();
    return std::get<T>(std::move(value_));
  }
  T& operator*() & { return value(); }
  const T& operator*() const& { return value(); }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }

 private:
  std::variant<Status, T> value_;
};

}  // namespace weir

#define WEIR_CONCAT_INNER_(a, b) a##b
#define WEIR_CONCAT_(a, b) WEIR_CONCAT_INNER_(a, b)

#define WEIR_RETURN_IF_ERROR(expr)               \
  do {                                           \
    ::weir::Status weir_status_ = (expr);        \
    if (!weir_status_.ok()) return weir_status_; \
  } while (0)

#define WEIR_ASSIGN_OR_RETURN_IMPL_(tmp, lhs, expr) \
  auto tmp = (expr);                                \
  if (!tmp.ok()) return std::move(tmp).status();    \
  lhs = std::move(tmp).value()

#define WEIR_ASSIGN_OR_RETURN(lhs, expr) \
  WEIR_ASSIGN_OR_RETURN_IMPL_(WEIR_CONCAT_(weir_statusor_, __LINE__), lhs, expr)
