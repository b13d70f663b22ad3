// Small JSON helpers shared by the runtime and plugins (metrics, JSONL sources and sinks).
// Parsing goes through protobuf's JSON support, so weir carries no JSON parser of its own.
#pragma once

#include <google/protobuf/struct.pb.h>

#include <filesystem>
#include <string>
#include <string_view>

#include "weir/status.h"

namespace weir {

// A JSON string literal with escapes.
std::string JsonQuote(std::string_view s);
// The shortest decimal text (printf %g style, at least 6 digits so that integers up to a million
// stay integers) that reads back as exactly `v`.
std::string ShortestDouble(double v);
// The shortest JSON number that reads back as `v`; NaN and infinities (not JSON) become null.
std::string JsonNumber(double v);
// Parses one JSON object (one line of a JSONL file).
StatusOr<google::protobuf::Struct> ParseJsonObject(std::string_view text);
// Reads a file holding one JSON object; errors name the file.
StatusOr<google::protobuf::Struct> ReadJsonFile(const std::filesystem::path& path);
// Rewrites a JSON Lines log (metrics, statistics) atomically without the rows whose "step" is
// above `step`: a run resumed from the checkpoint of that step writes those rows again. Rows
// without a step are kept; a missing file is fine.
Status TrimJsonlAfterStep(const std::filesystem::path& path, int64_t step);
// Writes a JSON value compactly.
std::string JsonValueText(const google::protobuf::Value& v);

}  // namespace weir
