#include "weir/batch.h"

namespace weir {

size_t ColumnSize(const Column& c) {
  return std::visit([](const auto& v) { return v.size(); }, c);
}

const char* ColumnTypeName(const Column& c) {
  switch (c.index()) {
    case 0:
      return "strings";
    case 1:
      return "ints";
    default:
      return "floats";
  }
}

const Column* Batch::Find(const std::string& name) const {
  for (const auto& [n, c] : columns_)
    if (n == name) return &c;
  return nullptr;
}

Column* Batch::FindMutable(const std::string& name) {
  for (auto& [n, c] : columns_)
    if (n == name) return &c;
  return nullptr;
}

std::string Batch::ColumnList() const {
  if (columns_.empty()) return " (it has none)";
  std::string out = " (it has ";
  for (size_t i = 0; i < columns_.size(); ++i) out += (i ? ", '" : "'") + columns_[i].first + "'";
  return out + ")";
}

Status Batch::Set(const std::string& name, Column column) {
  size_t n = ColumnSize(column);
  Column* existing = FindMutable(name);
  bool only_column = columns_.empty() || (columns_.size() == 1 && existing != nullptr);
  if (!only_column && n != num_rows_) {
    return InvalidArgument("column '" + name + "' has " + std::to_string(n) +
                           " rows, the batch has " + std::to_string(num_rows_));
  }
  num_rows_ = n;
  if (existing != nullptr) {
    *existing = std::move(column);
  } else {
    columns_.emplace_back(name, std::move(column));
  }
  return Status();
}

Batch Batch::Slice(size_t begin, size_t end) const {
  end = std::min(end, num_rows_);
  begin = std::min(begin, end);
  Batch out;
  out.meta_ = meta_;
  out.num_rows_ = end - begin;
  for (const auto& [name, col] : columns_) {
    Column part = std::visit(
        [&](const auto& v) -> Column {
          return std::decay_t<decltype(v)>(v.begin() + begin, v.begin() + end);
        },
        col);
    out.columns_.emplace_back(name, std::move(part));
  }
  return out;
}

Batch Batch::Select(const std::vector<size_t>& rows) const {
  Batch out;
  out.meta_ = meta_;
  out.num_rows_ = rows.size();
  for (const auto& [name, col] : columns_) {
    Column part = std::visit(
        [&](const auto& v) -> Column {
          std::decay_t<decltype(v)> picked;
          picked.reserve(rows.size());
          for (size_t r : rows) picked.push_back(v.at(r));
          return picked;
        },
        col);
    out.columns_.emplace_back(name, std::move(part));
  }
  return out;
}

Status Batch::Append(const Batch& other) {
  if (columns_.empty()) {
    *this = other;
    return Status();
  }
  if (other.columns_.size() != columns_.size())
    return InvalidArgument("cannot append a batch with different columns" + other.ColumnList());
  for (size_t i = 0; i < columns_.size(); ++i) {
    auto& [name, col] = columns_[i];
    const auto& [oname, ocol] = other.columns_[i];
    if (name != oname || col.index() != ocol.index())
      return InvalidArgument("cannot append a batch with different columns" + other.ColumnList());
  }
  for (size_t i = 0; i < columns_.size(); ++i) {
    std::visit(
        [&](auto& v) {
          const auto& o = std::get<std::decay_t<decltype(v)>>(other.columns_[i].second);
          v.insert(v.end(), o.begin(), o.end());
        },
        columns_[i].second);
  }
  num_rows_ += other.num_rows_;
  return Status();
}

}  // namespace weir
