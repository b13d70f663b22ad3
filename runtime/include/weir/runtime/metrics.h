// metrics.jsonl: one JSON object per line, {"node": ..., "step": ..., "<name>": value, ...}.
#pragma once

#include <filesystem>
#include <fstream>
#include <mutex>
#include <string>

#include "weir/json.h"
#include "weir/status.h"
#include "weir/stream_kernel.h"

namespace weir {

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
