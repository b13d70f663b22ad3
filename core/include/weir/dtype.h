// Data types: names as written in graph files ("f32", "bf16", ...) and their sizes.
#pragma once

#include <cstddef>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "weir/graph.pb.h"

namespace weir {

// "f32", "bf16", ... ; "invalid" for DT_INVALID.
const char* DataTypeName(DataType t);
// Parses a name written in a graph file; nullopt when it names no dtype.
std::optional<DataType> ParseDataType(std::string_view name);
// Bytes per element (fp8 types: 1).
size_t DataTypeSize(DataType t);
// Every valid dtype, in enum order.
const std::vector<DataType>& AllDataTypes();

}  // namespace weir
