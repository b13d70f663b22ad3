#include "weir/dtype.h"

namespace weir {
namespace {

struct DTypeInfo {
  DataType type;
  const char* name;
  size_t size;
};

constexpr DTypeInfo kDTypes[] = {
    {DT_F32, "f32", 4},       {DT_BF16, "bf16", 2}, {DT_F16, "f16", 2}, {DT_F8E4M3, "f8e4m3", 1},
    {DT_F8E5M2, "f8e5m2", 1}, {DT_I8, "i8", 1},     {DT_I32, "i32", 4}, {DT_I64, "i64", 8},
    {DT_U8, "u8", 1},         {DT_BOOL, "bool", 1}, {DT_F64, "f64", 8},
};

}  // namespace

const char* DataTypeName(DataType t) {
  for (const auto& d : kDTypes)
    if (d.type == t) return d.name;
  return "invalid";
}

std::optional<DataType> ParseDataType(std::string_view name) {
  for (const auto& d : kDTypes)
    if (name == d.name) return d.type;
  return std::nullopt;
}

size_t DataTypeSize(DataType t) {
  for (const auto& d : kDTypes)
    if (d.type == t) return d.size;
  return 0;
}

const std::vector<DataType>& AllDataTypes() {
  static const std::vector<DataType> all = [] {
    std::vector<DataType> v;
    for (const auto& d : kDTypes) v.push_back(d.type);
    return v;
  }();
  return all;
}

}  // namespace weir
