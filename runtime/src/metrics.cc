#include "weir/runtime/metrics.h"

#include <cmath>
#include <cstdio>

namespace weir {

std::string JsonQuote(const std::string& s) {
  std::string out = "\"";
  for (unsigned char c : s) {
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      case '\r': out += "\\r"; break;
      case '\t': out += "\\t"; break;
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

std::string JsonNumber(double v) {
  if (!std::isfinite(v)) return "null";
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%.9g", v);
  return buf;
}

StatusOr<std::unique_ptr<JsonlMetricSink>> JsonlMetricSink::Open(
    const std::filesystem::path& path) {
  auto sink = std::make_unique<JsonlMetricSink>();
  sink->out_.open(path, std::ios::app);
  if (!sink->out_) return Unavailable("cannot open " + path.string() + " for writing");
  return sink;
}

void JsonlMetricSink::Write(const std::string& node, int64_t step,
                            const std::vector<std::pair<std::string, double>>& values) {
  std::string line = "{\"node\":" + JsonQuote(node) + ",\"step\":" + std::to_string(step);
  for (const auto& [name, v] : values) line += "," + JsonQuote(name) + ":" + JsonNumber(v);
  line += "}\n";
  std::lock_guard<std::mutex> lock(mu_);
  out_ << line;
  out_.flush();  // a crashed run keeps every line written so far
}

}  // namespace weir
