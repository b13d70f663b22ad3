#include "weir/status.h"

namespace weir {

std::string SourceLoc::ToString() const {
  if (file.empty() && !known()) return "";
  if (!known()) return file;
  std::string out = file + ":" + std::to_string(line);
  return col > 0 ? out + ":" + std::to_string(col) : out;
}

SourceLoc SourceLoc::Shifted(int offset) const {
  SourceLoc s = *this;
  if (s.known()) s.col += offset;
  return s;
}

const char* StatusCodeName(StatusCode code) {
  switch (code) {
    case StatusCode::kOk:
      return "ok";
    case StatusCode::kInvalidArgument:
      return "invalid argument";
    case StatusCode::kNotFound:
      return "not found";
    case StatusCode::kAlreadyExists:
      return "already exists";
    case StatusCode::kFailedPrecondition:
      return "failed precondition";
    case StatusCode::kInternal:
      return "internal";
    case StatusCode::kCancelled:
      return "cancelled";
    case StatusCode::kUnavailable:
      return "unavailable";
    case StatusCode::kDataLoss:
      return "data loss";
    case StatusCode::kDeadlineExceeded:
      return "deadline exceeded";
  }
  return "unknown";
}

Status& Status::At(const SourceLoc& loc) {
  if (loc_.file.empty() && !loc_.known()) loc_ = loc;
  return *this;
}

Status& Status::InNode(const std::string& node, const std::string& op) {
  if (node_.empty()) {
    node_ = node;
    if (op_.empty()) op_ = op;
  }
  return *this;
}

Status& Status::InAttr(const std::string& attr) {
  if (attr_.empty()) attr_ = attr;
  return *this;
}

Status& Status::Prepend(const std::string& context) {
  message_ = context + ": " + message_;
  return *this;
}

std::string Status::ToString() const {
  if (ok()) return "OK";
  std::string out;
  std::string where = loc_.ToString();
  if (!where.empty()) out += where + ": ";
  if (!node_.empty()) {
    out += "node '" + node_ + "'";
    if (!op_.empty()) out += " (op '" + op_ + "')";
    out += ": ";
  }
  if (!attr_.empty()) out += "attr '" + attr_ + "' ";
  out += message_;
  return out;
}

Status Status::Join(const std::vector<Status>& errors) {
  std::vector<const Status*> bad;
  for (const Status& s : errors)
    if (!s.ok()) bad.push_back(&s);
  if (bad.empty()) return Status();
  if (bad.size() == 1) return *bad[0];
  std::string message;
  for (const Status* s : bad) {
    if (!message.empty()) message += "\n";
    message += s->ToString();
  }
  return Status(bad[0]->code(), message);
}

}  // namespace weir
