#include "weir/batch.h"

#include <algorithm>
#include <cstring>

namespace weir {
namespace {

template <typename V>
constexpr bool kIsTensor = std::is_same_v<std::decay_t<V>, TensorColumn>;

// Rows of a tensor column, copied in the given order.
Tensor GatherRows(const Tensor& t, const std::vector<size_t>& rows) {
  Shape shape = t.shape();
  shape[0] = static_cast<int64_t>(rows.size());
  Tensor out = Tensor::Empty(t.dtype(), shape);
  Tensor src = t.Contiguous();
  size_t row_bytes = src.nbytes() / static_cast<size_t>(std::max<int64_t>(1, src.dim(0)));
  for (size_t i = 0; i < rows.size(); ++i) {
    std::memcpy(static_cast<char*>(out.raw_data()) + i * row_bytes,
                static_cast<const char*>(src.raw_data()) + rows.at(i) * row_bytes, row_bytes);
  }
  return out;
}

Tensor ConcatRows(const Tensor& a_in, const Tensor& b_in) {
  Shape s = a_in.shape();
  s[0] += b_in.dim(0);
  Tensor out = Tensor::Empty(a_in.dtype(), s);
  Tensor a = a_in.Contiguous(), b = b_in.Contiguous();
  std::memcpy(out.raw_data(), a.raw_data(), a.nbytes());
  std::memcpy(static_cast<char*>(out.raw_data()) + a.nbytes(), b.raw_data(), b.nbytes());
  return out;
}

}  // namespace

size_t ColumnSize(const Column& c) {
  return std::visit(
      [](const auto& v) -> size_t {
        if constexpr (kIsTensor<decltype(v)>) {
          return v.rank() == 0 ? 1 : static_cast<size_t>(v.dim(0));
        } else {
          return v.size();
        }
      },
      c);
}

const char* ColumnTypeName(const Column& c) {
  switch (c.index()) {
    case 0:
      return "strings";
    case 1:
      return "ints";
    case 2:
      return "floats";
    case 3:
      return "a tensor";
    default:
      return "int lists";
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
          if constexpr (kIsTensor<decltype(v)>) {
            return v.Slice(0, static_cast<int64_t>(begin), static_cast<int64_t>(end));
          } else {
            return std::decay_t<decltype(v)>(v.begin() + static_cast<std::ptrdiff_t>(begin),
                                             v.begin() + static_cast<std::ptrdiff_t>(end));
          }
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
          if constexpr (kIsTensor<decltype(v)>) {
            return GatherRows(v, rows);
          } else {
            std::decay_t<decltype(v)> picked;
            picked.reserve(rows.size());
            for (size_t r : rows) picked.push_back(v.at(r));
            return picked;
          }
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
    const auto& [name, col] = columns_[i];
    const auto& [oname, ocol] = other.columns_[i];
    if (name != oname || col.index() != ocol.index())
      return InvalidArgument("cannot append a batch with different columns" + other.ColumnList());
    if (const auto* t = std::get_if<TensorColumn>(&col)) {
      const Tensor& o = std::get<TensorColumn>(ocol);
      Shape a = t->shape(), b = o.shape();
      if (a.empty() || b.empty() || t->dtype() != o.dtype() ||
          !std::equal(a.begin() + 1, a.end(), b.begin() + 1, b.end())) {
        return InvalidArgument("cannot append tensor column '" + name + "' " + o.DebugString() +
                               " to " + t->DebugString());
      }
    }
  }
  for (size_t i = 0; i < columns_.size(); ++i) {
    std::visit(
        [&](auto& v) {
          const auto& o = std::get<std::decay_t<decltype(v)>>(other.columns_[i].second);
          if constexpr (kIsTensor<decltype(v)>) {
            v = ConcatRows(v, o);
          } else {
            v.insert(v.end(), o.begin(), o.end());
          }
        },
        columns_[i].second);
  }
  num_rows_ += other.num_rows_;
  return Status();
}

}  // namespace weir
