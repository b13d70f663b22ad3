#include "test_util.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <fstream>
#include <iterator>
#include <random>

#include "bpe.h"  // plugins/tokenizer, compiled into the unit tests
#include "weir/json.h"
#include "weir/safetensors.h"

namespace weir::testing {

// The test_ops plugin joins the default plugins in TestRegistry().
static const bool kTestOps = AddTestPluginDir(WEIR_TEST_PLUGIN_DIR);

std::string ByteChar(int b) {
  char byte = static_cast<char>(b);
  return tokenizer::ByteLevelString(std::string_view(&byte, 1));
}

std::vector<google::protobuf::Struct> ReadJsonlRows(const std::filesystem::path& file) {
  std::vector<google::protobuf::Struct> rows;
  std::ifstream in(file);
  EXPECT_TRUE(in.good()) << "cannot read " << file.string();
  for (std::string line; std::getline(in, line);) {
    auto row = ParseJsonObject(line);
    EXPECT_TRUE(row.ok()) << line;
    if (row.ok()) rows.push_back(*row);
  }
  return rows;
}

std::string TestGraph(const std::string& name) {
  return std::string(WEIR_SOURCE_DIR) + "/tests/graphs/" + name;
}

std::string StripGraphDir(const std::string& text) {
  std::string prefix = std::string(WEIR_SOURCE_DIR) + "/tests/graphs/";
  std::string out = text;
  for (size_t at = out.find(prefix); at != std::string::npos; at = out.find(prefix))
    out.erase(at, prefix.size());
  return out;
}

RunResult RunGraphFile(const std::filesystem::path& graph, const std::filesystem::path& out_dir,
                       const std::vector<std::string>& sets, const std::filesystem::path& resume) {
  auto g = LoadTestGraph(graph.string(), sets);
  if (!g.ok()) {
    RunResult failed;
    failed.status = g.status();
    return failed;
  }
  RunOptions options;
  options.out_dir = out_dir;
  options.ops = &TestRegistry();
  options.resume_dir = resume;
  return RunGraph(*g, options);
}

std::vector<Tensor> RandomTokens(int64_t batch, int64_t time, int64_t vocab, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<double> tokens, targets;
  for (int64_t k = 0; k < batch * time; ++k) {
    tokens.push_back(static_cast<double>(rng() % static_cast<uint64_t>(vocab)));
    targets.push_back(static_cast<double>(rng() % static_cast<uint64_t>(vocab)));
  }
  return {Tensor::FromValues(DT_I64, {batch, time}, tokens),
          Tensor::FromValues(DT_I64, {batch, time}, targets)};
}

int CheckModelGradients(const Program& program, ParamStore& params,
                        const std::vector<Tensor>& inputs, int per_param, double tolerance) {
  auto analytic = program.Run(inputs, params);
  EXPECT_TRUE(analytic.ok()) << analytic.status().ToString();
  if (!analytic.ok()) return 0;
  auto loss = [&] { return program.Run(inputs, params)->values[0].At(0); };
  const double eps = 1e-6;
  int checked = 0;
  std::mt19937_64 rng(5);
  for (auto& [name, t] : params.mutable_values()) {
    auto g = analytic->param_grads.find(name);
    if (g == analytic->param_grads.end()) continue;  // a state parameter: no gradient
    // Elements spread over the parameter.
    for (int n = 0; n < std::min<int64_t>(per_param, t.numel()); ++n) {
      int64_t k = static_cast<int64_t>(rng() % static_cast<uint64_t>(t.numel()));
      double x = t.At(k);
      StoreFromDouble(t.raw_data(), DT_F64, k, x + eps);
      double up = loss();
      StoreFromDouble(t.raw_data(), DT_F64, k, x - eps);
      double down = loss();
      StoreFromDouble(t.raw_data(), DT_F64, k, x);
      double numeric = (up - down) / (2 * eps);
      EXPECT_NEAR(g->second.At(k), numeric, tolerance * std::max(1.0, std::abs(numeric)))
          << name << "[" << k << "]";
      ++checked;
    }
  }
  return checked;
}

TrainedRun TrainGraph(const std::string& graph, const std::string& name,
                      const std::vector<std::string>& sets, const std::string& checkpoint,
                      Trace* trace) {
  TrainedRun t;
  t.out = std::filesystem::path(::testing::TempDir()) / name;
  std::filesystem::remove_all(t.out);
  auto g = LoadTestGraph(TestGraph(graph), sets);
  EXPECT_TRUE(g.ok()) << g.status().ToString();
  if (!g.ok()) return t;
  CapturedMetrics metrics;
  RunOptions options;
  options.out_dir = t.out;
  options.ops = &TestRegistry();
  options.metrics = &metrics;
  options.trace = trace;
  RunResult run = RunGraph(*g, options);
  EXPECT_TRUE(run.status.ok()) << name << ": " << run.status.ToString();
  t.losses = metrics.Values("train", "loss");
  std::filesystem::path dir = t.out / "checkpoints" / checkpoint;
  auto params = ReadSafetensorsSharded(dir, "model");
  EXPECT_TRUE(params.ok()) << name << ": " << params.status().ToString();
  if (params.ok()) t.params = *params;
  auto states = ReadSafetensorsSharded(dir, "optimizer");
  if (states.ok()) t.states = *states;
  return t;
}

double MaxRelativeDifference(const std::map<std::string, Tensor>& a,
                             const std::map<std::string, Tensor>& b, double floor) {
  EXPECT_EQ(a.size(), b.size());
  double worst = 0;
  for (const auto& [name, t] : a) {
    auto it = b.find(name);
    if (it == b.end() || it->second.shape() != t.shape()) {
      ADD_FAILURE() << name << " is missing or of another shape";
      continue;
    }
    for (int64_t i = 0; i < t.numel(); ++i) {
      worst = std::max(worst,
                       std::abs(t.At(i) - it->second.At(i)) / std::max(floor, std::abs(t.At(i))));
    }
  }
  return worst;
}

std::string TraceJson(const Trace& trace, const std::string& name) {
  std::filesystem::path file = std::filesystem::path(::testing::TempDir()) / (name + ".json");
  Status written = trace.Write(file);
  EXPECT_TRUE(written.ok()) << written.ToString();
  std::ifstream in(file);
  return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

}  // namespace weir::testing
