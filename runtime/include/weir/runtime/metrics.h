// metrics.jsonl: one JSON object per line, {"node": ..., "step": ..., "<name>": value, ...}.
#pragma once

#include <filesystem>
#include <fstream>
#include <mutex>
#include <string>

#include "weir/status.h"
#include "weir/stream_kernel.h"

namespace weir {

// JSON string literal with escapes.
std::string JsonQuote(const std::string& s);
// A JSON number; NaN and infinities (not JSON) become null.
std::string JsonNumber(double v);

class JsonlMetricSink : public MetricSink {
 public:
  static StatusOr<std::unique_ptr<JsonlMetricSink>> Open(const std::filesystem::path& path);
  void Write(const std::string& node, int64_t step,
             const std::vector<std::pair<std::string, double>>& values) override;

 private:
  std::mutex mu_;
  std::ofstream out_;
};

}  // namespace weir
