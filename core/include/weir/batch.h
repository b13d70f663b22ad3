// Batch: the item that flows between stream ops. Named columns of equal length plus metadata.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <utility>
#include <variant>
#include <vector>

#include "weir/status.h"
#include "weir/tensor.h"

namespace weir {

using StringColumn = std::vector<std::string>;
using IntColumn = std::vector<int64_t>;
using FloatColumn = std::vector<double>;
// A tensor column holds one row per index of its first dim.
using TensorColumn = Tensor;
// A list of integers per row, of any length (token ids of a document).
using IntListColumn = std::vector<std::vector<int64_t>>;
using Column = std::variant<StringColumn, IntColumn, FloatColumn, TensorColumn, IntListColumn>;

size_t ColumnSize(const Column& c);
const char* ColumnTypeName(const Column& c);

// Value semantics; not thread-safe for concurrent mutation. Items travel between nodes as
// shared, immutable Batches: a kernel that wants to change one copies it first.
class Batch {
 public:
  Batch() = default;

  size_t num_rows() const { return num_rows_; }
  size_t num_columns() const { return columns_.size(); }
  bool empty() const { return num_rows_ == 0; }

  // Columns keep the order they were added in.
  const std::vector<std::pair<std::string, Column>>& columns() const { return columns_; }
  const Column* Find(const std::string& name) const;
  Column* FindMutable(const std::string& name);
  // Typed lookup: an error names the column and what it holds when it is missing or mistyped.
  template <typename T>
  StatusOr<const T*> Get(const std::string& name) const {
    const Column* c = Find(name);
    if (c == nullptr) return NotFound("batch has no column '" + name + "'" + ColumnList());
    if (!std::holds_alternative<T>(*c)) {
      return InvalidArgument("column '" + name + "' holds " + ColumnTypeName(*c) + ", expected " +
                             ColumnTypeName(Column(T{})));
    }
    return &std::get<T>(*c);
  }

  // Adds or replaces a column. The first column sets the row count; later ones must match it.
  Status Set(const std::string& name, Column column);

  // Rows [begin, end) of every column.
  Batch Slice(size_t begin, size_t end) const;
  // The given rows, in the given order.
  Batch Select(const std::vector<size_t>& rows) const;
  // Appends the rows of `other`, which must have the same column names and types.
  Status Append(const Batch& other);

  std::map<std::string, std::string>& meta() { return meta_; }
  const std::map<std::string, std::string>& meta() const { return meta_; }

 private:
  std::string ColumnList() const;

  std::vector<std::pair<std::string, Column>> columns_;
  std::map<std::string, std::string> meta_;
  size_t num_rows_ = 0;
};

}  // namespace weir
