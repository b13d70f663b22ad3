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

TrainedRun Train(const std::string& name, const std::vector<std::string>& sets,
                 Trace* trace = nullptr) {
  return TrainGraph("good/train_dp.pbtxt", "dp_" + name, sets, "step-000004", trace);
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
  TrainedRun one = Train("one", {"dp=1", "optimizer=optim.SGD"});
  ASSERT_EQ(one.losses.size(), 4u);
  for (const char* dp : {"dp=2", "dp=4"}) {
    TrainedRun many = Train(std::string("many_") + dp, {dp, "optimizer=optim.SGD"});
    ASSERT_EQ(many.losses.size(), 4u) << dp;
    for (size_t i = 0; i < 4; ++i)
      EXPECT_NEAR(many.losses[i], one.losses[i], 1e-5 * std::abs(one.losses[i])) << dp;
    EXPECT_LT(MaxRelativeDifference(one.params, many.params, 1.0), 1e-5) << dp;
    EXPECT_LT(MaxRelativeDifference(one.states, many.states, 1.0), 1e-4) << dp;
  }
}

// ZeRO-1 changes where optimizer states live, not the arithmetic: the same bits as plain DP, and
// every state is in the checkpoint.
TEST(DataParallel, ZeroOneEqualsPlainDataParallel) {
  TrainedRun plain = Train("plain", {"dp=2"});
  TrainedRun zero = Train("zero", {"dp=2", "zero=1"});
  EXPECT_TRUE(BitwiseEqual(plain.params, zero.params));
  EXPECT_FALSE(plain.states.empty());  // AdamW's moments
  EXPECT_TRUE(BitwiseEqual(plain.states, zero.states));
  EXPECT_EQ(plain.losses, zero.losses);
}

// `weir run --trace`: each virtual rank's tensor-program events under its own pid ("rank r").
TEST(DataParallel, TracesShowEveryRank) {
  Trace trace;
  Train("traced", {"dp=2"}, &trace);
  std::string json = TraceJson(trace, "dp_trace");
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
