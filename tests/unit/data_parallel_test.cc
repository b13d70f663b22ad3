// Data parallelism in train.Step: virtual ranks (threads of one process, each in its own TBB
// arena, combining through the in-process communicator) train like one rank with the same global
// batch, and ZeRO-1 (the optimizer state sharded over the ranks) exactly like plain data
// parallelism. The same across processes under mpirun: tests/integration/mpi_dp_test.sh.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>

#include "test_util.h"
#include "weir/runtime/executor.h"
#include "weir/runtime/trace.h"
#include "weir/safetensors.h"

namespace weir::testing {
namespace {

namespace fs = std::filesystem;

struct Trained {
  std::vector<double> losses;
  std::map<std::string, Tensor> params, states;
};

Trained Train(const std::string& name, const std::vector<std::string>& sets,
              Trace* trace = nullptr) {
  fs::path out = fs::path(::testing::TempDir()) / ("dp_" + name);
  fs::remove_all(out);
  auto g = LoadTestGraph(TestGraph("good/train_dp.pbtxt"), sets);
  EXPECT_TRUE(g.ok()) << g.status().ToString();
  Trained t;
  if (!g.ok()) return t;
  CapturedMetrics metrics;
  RunOptions options;
  options.out_dir = out;
  options.ops = &TestRegistry();
  options.metrics = &metrics;
  options.trace = trace;
  RunResult run = RunGraph(*g, options);
  EXPECT_TRUE(run.status.ok()) << run.status.ToString();
  t.losses = metrics.Values("train", "loss");
  fs::path ckpt = out / "checkpoints/step-000004";
  auto params = ReadSafetensorsSharded(ckpt, "model");
  auto states = ReadSafetensorsSharded(ckpt, "optimizer");
  EXPECT_TRUE(params.ok() && states.ok());
  if (params.ok()) t.params = *params;
  if (states.ok()) t.states = *states;
  return t;
}

double MaxRelativeDifference(const std::map<std::string, Tensor>& a,
                             const std::map<std::string, Tensor>& b) {
  EXPECT_EQ(a.size(), b.size());
  double worst = 0;
  for (const auto& [name, t] : a) {
    const Tensor& u = b.at(name);
    EXPECT_EQ(t.shape(), u.shape()) << name;
    for (int64_t i = 0; i < t.numel(); ++i)
      worst = std::max(worst, std::abs(t.At(i) - u.At(i)) / std::max(1.0, std::abs(t.At(i))));
  }
  return worst;
}

bool BitwiseEqual(const std::map<std::string, Tensor>& a, const std::map<std::string, Tensor>& b) {
  if (a.size() != b.size()) return false;
  for (const auto& [name, t] : a) {
    auto it = b.find(name);
    if (it == b.end() || it->second.nbytes() != t.nbytes() ||
        std::memcmp(it->second.raw_data(), t.Contiguous().raw_data(), t.nbytes()) != 0)
      return false;
  }
  return true;
}

// SGD: Adam divides by the gradients' own scale, which magnifies the rounding differences of
// summing a batch in shards for parameters whose gradients are near zero.
TEST(DataParallel, VirtualRanksTrainLikeOneRank) {
  Trained one = Train("one", {"dp=1", "optimizer=optim.SGD"});
  ASSERT_EQ(one.losses.size(), 4u);
  for (const char* dp : {"dp=2", "dp=4"}) {
    Trained many = Train(std::string("many_") + dp, {dp, "optimizer=optim.SGD"});
    ASSERT_EQ(many.losses.size(), 4u) << dp;
    for (size_t i = 0; i < 4; ++i)
      EXPECT_NEAR(many.losses[i], one.losses[i], 1e-5 * std::abs(one.losses[i])) << dp;
    EXPECT_LT(MaxRelativeDifference(one.params, many.params), 1e-5) << dp;
    EXPECT_LT(MaxRelativeDifference(one.states, many.states), 1e-4) << dp;
  }
}

// ZeRO-1 changes where optimizer states live, not the arithmetic: the same bits as plain DP, and
// every state is in the checkpoint.
TEST(DataParallel, ZeroOneEqualsPlainDataParallel) {
  Trained plain = Train("plain", {"dp=2"});
  Trained zero = Train("zero", {"dp=2", "zero=1"});
  EXPECT_TRUE(BitwiseEqual(plain.params, zero.params));
  EXPECT_TRUE(BitwiseEqual(plain.states, zero.states));
  EXPECT_EQ(plain.losses, zero.losses);
}

// `weir run --trace`: each virtual rank's tensor-program events under its own pid ("rank r").
TEST(DataParallel, TracesShowEveryRank) {
  Trace trace;
  Train("traced", {"dp=2"}, &trace);
  fs::path file = fs::path(::testing::TempDir()) / "dp_trace.json";
  ASSERT_TRUE(trace.Write(file).ok());
  std::ifstream in(file);
  std::string json((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  for (const char* rank : {"\"rank 0\"", "\"rank 1\""})
    EXPECT_NE(json.find(rank), std::string::npos) << rank;
  // A forward MatMul of the program ran on each rank.
  for (const char* pid : {"\"pid\": 0", "\"pid\": 1"}) {
    size_t at = json.find(std::string("\"cat\": \"nn.Linear\", \"ph\": \"X\", ") + pid);
    EXPECT_NE(at, std::string::npos) << pid;
  }
}

TEST(DataParallel, BadSettingsAreErrors) {
  fs::path out = fs::path(::testing::TempDir()) / "dp_bad";
  fs::remove_all(out);
  RunResult odd = RunGraphFile(TestGraph("good/train_dp.pbtxt"), out / "odd", {"dp=3"});
  ASSERT_FALSE(odd.status.ok());
  EXPECT_NE(odd.status.message().find("its batch size must be a multiple of 3"), std::string::npos)
      << odd.status.ToString();
  RunResult alone = RunGraphFile(TestGraph("good/train_dp.pbtxt"), out / "alone", {"zero=1"});
  ASSERT_FALSE(alone.status.ok());
  EXPECT_NE(alone.status.message().find("zero_stage=1 shards the optimizer"), std::string::npos)
      << alone.status.ToString();
}

}  // namespace
}  // namespace weir::testing
