#include "weir/json.h"

#include <google/protobuf/util/json_util.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <vector>

#include "weir/atomic_file.h"

namespace weir {

std::string JsonQuote(std::string_view s) {
  std::string out = "\"";
  for (unsigned char c : s) {
    switch (c) {
      case '"':
        out += "\\\"";
        break;
      case '\\':
        out += "\\\\";
        break;
      case '\n':
        out += "\\n";
        break;
      case '\r':
        out += "\\r";
        break;
      case '\t':
        out += "\\t";
        break;
      default:
        if (c < 0x20) {
          char buf[8];
          std::snprintf(buf, sizeof(buf), "\\u%04x", c);
          out += buf;
        } else {
          out += static_cast<char>(c);
        }
    }
  }
  return out + "\"";
}

std::string ShortestDouble(double v) {
  char buf[32];
  for (int precision = 6; precision <= 17; ++precision) {
    std::snprintf(buf, sizeof(buf), "%.*g", precision, v);
    if (std::strtod(buf, nullptr) == v) break;
  }
  return buf;
}

std::string JsonNumber(double v) { return std::isfinite(v) ? ShortestDouble(v) : "null"; }

StatusOr<google::protobuf::Struct> ParseJsonObject(std::string_view text) {
  size_t first = text.find_first_not_of(" \t\r\n");
  if (first == std::string_view::npos || text[first] != '{')
    return InvalidArgument("not a JSON object: it does not start with '{'");
  google::protobuf::Struct out;
  auto status = google::protobuf::util::JsonStringToMessage(
      google::protobuf::StringPiece(text.data(), text.size()), &out);
  if (!status.ok()) {
    // protobuf appends the text with a caret on further lines: keep the first line.
    std::string message(status.message());
    return InvalidArgument("not a JSON object: " + message.substr(0, message.find('\n')));
  }
  return out;
}

StatusOr<google::protobuf::Struct> ReadJsonFile(const std::filesystem::path& path) {
  std::ifstream in(path);
  if (!in) return NotFound("cannot read " + path.string());
  // State and manifest files are small; a huge one is damaged or hostile, not worth parsing.
  constexpr std::uintmax_t kMaxJsonFileBytes = 64 << 20;
  std::error_code ec;
  if (std::uintmax_t size = std::filesystem::file_size(path, ec); !ec && size > kMaxJsonFileBytes)
    return InvalidArgument(path.string() + " is " + std::to_string(size) +
                           " bytes; a JSON file weir reads is at most " +
                           std::to_string(kMaxJsonFileBytes) + " bytes");
  std::stringstream text;
  text << in.rdbuf();
  auto parsed = ParseJsonObject(text.str());
  if (!parsed.ok()) return InvalidArgument(path.string() + ": " + parsed.status().message());
  return parsed;
}

Status TrimJsonlAfterStep(const std::filesystem::path& path, int64_t step) {
  std::ifstream in(path);
  if (!in) return Status();
  std::string kept;
  for (std::string line; std::getline(in, line);) {
    auto row = ParseJsonObject(line);
    if (!row.ok()) continue;  // a torn last line of a killed run
    auto it = row->fields().find("step");
    if (it != row->fields().end() && it->second.has_number_value() &&
        it->second.number_value() > static_cast<double>(step))
      continue;
    kept += line + "\n";
  }
  return WriteFileAtomically(path, kept);
}

std::string JsonValueText(const google::protobuf::Value& v) {
  using google::protobuf::Value;
  switch (v.kind_case()) {
    case Value::kNullValue:
      return "null";
    case Value::kNumberValue:
      return JsonNumber(v.number_value());
    case Value::kStringValue:
      return JsonQuote(v.string_value());
    case Value::kBoolValue:
      return v.bool_value() ? "true" : "false";
    case Value::kStructValue: {
      std::string out = "{";
      // protobuf maps are unordered: sort keys so output is stable.
      std::vector<std::string> keys;
      for (const auto& [k, _] : v.struct_value().fields()) keys.push_back(k);
      std::sort(keys.begin(), keys.end());
      for (size_t i = 0; i < keys.size(); ++i)
        out += (i ? "," : "") + JsonQuote(keys[i]) + ":" +
               JsonValueText(v.struct_value().fields().at(keys[i]));
      return out + "}";
    }
    case Value::kListValue: {
      std::string out = "[";
      for (int i = 0; i < v.list_value().values_size(); ++i)
        out += (i ? "," : "") + JsonValueText(v.list_value().values(i));
      return out + "]";
    }
    default:
      return "null";
  }
}

}  // namespace weir
