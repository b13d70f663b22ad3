// The run report: `weir report RUN_DIR` and the end of `weir run` turn a run folder into one
// self-contained HTML page of charts.
#pragma once

#include <filesystem>

#include "weir/status.h"

namespace weir::cli {

// Whether the run folder holds per-step metrics to chart.
bool HasStepMetrics(const std::filesystem::path& run_dir);

// Writes the report of `run_dir` to `out`: the curves of metrics.jsonl (losses, learning rate,
// gradient norm, rewards and GRPO metrics when present), an expert-load heatmap per MoE router
// from statistics.jsonl, the per-node busy time of summary.json and the pipeline timeline of
// trace.json when the run wrote one. Errors name the file and line that could not be read.
Status WriteRunReport(const std::filesystem::path& run_dir, const std::filesystem::path& out);

}  // namespace weir::cli
