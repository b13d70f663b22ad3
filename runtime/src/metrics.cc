#include "weir/runtime/metrics.h"

#include <cmath>
#include <cstdio>
#include <cstdlib>

namespace weir {

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
