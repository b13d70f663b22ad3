// Expert parallelism: moe.ExpertsParallel with its experts sharded over 2 and 4 virtual ranks
// (threads with a shard group of in-process communicators) computes what moe.Experts computes on
// the whole batch: the outputs of every rank's tokens, their input and routing-weight gradients,
// and — summed over the ranks — the experts' weight gradients. Alone it is moe.Experts, and its
// gradients match finite differences. train.Step with expert_parallel=2 trains like one rank.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <random>
#include <thread>

#include "test_util.h"
#include "weir/runtime/communicator.h"
#include "weir/runtime/executor.h"
#include "weir/runtime/trace.h"
#include "weir/runtime/world.h"
#include "weir/safetensors.h"
#include "weir/testing/op_check.h"

namespace weir::testing {
namespace {

namespace fs = std::filesystem;

constexpr int64_t kTokens = 24, kDim = 6, kSlots = 3, kExperts = 8;

std::vector<double> Routing(uint64_t seed) {
  // Distinct experts per token, with a skewed load (expert 5 is popular, expert 7 idle).
  std::mt19937_64 rng(seed);
  std::vector<double> idx;
  for (int64_t t = 0; t < kTokens; ++t) {
    std::vector<int64_t> pool = {0, 1, 2, 3, 4, 5, 5, 5, 6};
    std::shuffle(pool.begin(), pool.end(), rng);
    std::vector<int64_t> chosen;
    for (int64_t e : pool)
      if (static_cast<int64_t>(chosen.size()) < kSlots &&
          std::find(chosen.begin(), chosen.end(), e) == chosen.end())
        chosen.push_back(e);
    for (int64_t e : chosen) idx.push_back(static_cast<double>(e));
  }
  return idx;
}

std::vector<double> Random(size_t n, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> dist(0, 1);
  std::vector<double> v(n);
  for (double& x : v) x = dist(rng);
  return v;
}

struct Batch {
  Tensor x, weights, indices, r;  // r: the loss is Σ y ⊙ r
};

Batch MakeBatch() {
  return {Tensor::FromValues(DT_F64, {kTokens, kDim}, Random(kTokens * kDim, 1)),
          Tensor::FromValues(DT_F64, {kTokens, kSlots}, Random(kTokens * kSlots, 2)),
          Tensor::FromValues(DT_I64, {kTokens, kSlots}, Routing(3)),
          Tensor::FromValues(DT_F64, {kTokens, kDim}, Random(kTokens * kDim, 4))};
}

Batch Rows(const Batch& b, int64_t begin, int64_t end) {
  return {b.x.Slice(0, begin, end).Contiguous(), b.weights.Slice(0, begin, end).Contiguous(),
          b.indices.Slice(0, begin, end).Contiguous(), b.r.Slice(0, begin, end).Contiguous()};
}

StatusOr<std::shared_ptr<const Program>> Build(const std::string& op, int64_t tokens) {
  OpCase c{op,
           "n_routed_experts=8 moe_intermediate_size=4 init_std=0.4 out_std=0.4 T=f64",
           {{DT_F64, {tokens, kDim}}, {DT_F64, {tokens, kSlots}}, {DT_I64, {tokens, kSlots}}}};
  WEIR_ASSIGN_OR_RETURN(Graph g, OpGraph(c, true));
  std::vector<TensorType> types = c.inputs;
  types.push_back({DT_F64, {tokens, kDim}});
  ProgramOptions options;
  options.loss = "loss";
  options.input_grads = {"x0", "x1"};
  return Program::Build(g, "F", {}, types, TestRegistry(), options);
}

StatusOr<Program::Outputs> RunBatch(const Program& p, const Batch& b, const ParamStore& params) {
  return p.Run({b.x, b.weights, b.indices, b.r}, params);
}

void ExpectNear(const Tensor& got, const Tensor& want, const std::string& what) {
  std::vector<double> a = got.ToVector(), b = want.ToVector();
  ASSERT_EQ(a.size(), b.size()) << what;
  for (size_t i = 0; i < a.size(); ++i)
    ASSERT_NEAR(a[i], b[i], 1e-12 * (1 + std::abs(b[i]))) << what << "[" << i << "]";
}

TEST(ExpertParallel, GradientsMatchFiniteDifferences) {
  OpCase c{"moe.ExpertsParallel",
           "n_routed_experts=4 moe_intermediate_size=3 T=f64",
           {{DT_F64, {5, 4}}, {DT_F64, {5, 2}}, {DT_I64, {5, 2}}},
           {{2, {1, 0, 1, 2, 1, 3, 0, 1, 2, 1}}}};
  EXPECT_EQ(CheckGradients(c), 5 * 4 + 5 * 2 + 3 * 4 * 3 * 4);  // x, weights, w1, w3, w2
}

// A slot marked -1 is skipped: moe.Experts with -1 slots equals moe.Experts on the rest.
TEST(ExpertParallel, UnusedSlotsAreSkipped) {
  OpCase some{"moe.Experts",
              "n_routed_experts=4 moe_intermediate_size=3 T=f64",
              {{DT_F64, {3, 4}}, {DT_F64, {3, 2}}, {DT_I64, {3, 2}}},
              {{2, {1, -1, -1, 2, 3, 0}}}};
  auto with_unused = RunOp(some);
  ASSERT_TRUE(with_unused.ok()) << with_unused.status().ToString();
  // Slot weights of 0 on the same experts give the same sums.
  OpCase zeroed = some;
  zeroed.values[2] = {1, 0, 0, 2, 3, 0};
  std::vector<Tensor> inputs = CaseInputs(zeroed);
  std::vector<double> w = inputs[1].ToVector();
  w[1] = w[2] = 0;
  auto same = RunOp(zeroed, {{1, Tensor::FromValues(DT_F64, {3, 2}, w)}});
  ASSERT_TRUE(same.ok());
  ExpectNear((*with_unused)[0], (*same)[0], "y");
}

TEST(ExpertParallel, AloneItIsMoeExperts) {
  auto plain = Build("moe.Experts", kTokens), parallel = Build("moe.ExpertsParallel", kTokens);
  ASSERT_TRUE(plain.ok() && parallel.ok()) << parallel.status().ToString();
  ParamStore params;
  params.Initialize((*plain)->params(), 7);
  Batch b = MakeBatch();
  auto want = RunBatch(**plain, b, params), got = RunBatch(**parallel, b, params);
  ASSERT_TRUE(want.ok() && got.ok()) << got.status().ToString();
  ExpectNear(got->values[0], want->values[0], "loss");
  for (const auto& [name, g] : want->param_grads) ExpectNear(got->param_grads.at(name), g, name);
}

// Each rank holds E/G experts and its share of the tokens; every token's output and gradients
// come out as on one rank, and the experts' gradients sum over the ranks to one rank's.
TEST(ExpertParallel, ShardedExpertsComputeWhatOneRankDoes) {
  auto whole = Build("moe.Experts", kTokens);
  ASSERT_TRUE(whole.ok());
  ParamStore params;
  params.Initialize((*whole)->params(), 7);
  Batch b = MakeBatch();
  auto want = RunBatch(**whole, b, params);
  ASSERT_TRUE(want.ok());
  for (int ranks : {2, 4}) {
    SCOPED_TRACE(ranks);
    int64_t each = kTokens / ranks;
    auto shard = Build("moe.ExpertsParallel", each);
    ASSERT_TRUE(shard.ok()) << shard.status().ToString();
    auto comms = MakeLocalCommunicators(ranks, {.timeout_s = 30});
    std::vector<StatusOr<Program::Outputs>> outs(static_cast<size_t>(ranks),
                                                 StatusOr<Program::Outputs>(Internal("not run")));
    std::vector<std::thread> threads;
    for (int r = 0; r < ranks; ++r) {
      threads.emplace_back([&, r] {
        ShardGroupScope group(comms[static_cast<size_t>(r)].get());
        outs[static_cast<size_t>(r)] = RunBatch(**shard, Rows(b, r * each, (r + 1) * each), params);
      });
    }
    for (std::thread& t : threads) t.join();
    double loss = 0;
    std::map<std::string, std::vector<double>> sums;
    for (int r = 0; r < ranks; ++r) {
      auto& out = outs[static_cast<size_t>(r)];
      ASSERT_TRUE(out.ok()) << out.status().ToString();
      loss += out->values[0].At(0);
      for (int i = 0; i < 2; ++i) {  // dx and dweights: this rank's rows of one rank's
        const Tensor& full = want->input_grads[static_cast<size_t>(i)];
        ExpectNear(out->input_grads[static_cast<size_t>(i)],
                   full.Slice(0, r * each, (r + 1) * each), i == 0 ? "dx" : "dweights");
      }
      for (const auto& [name, g] : out->param_grads) {
        std::vector<double> v = g.ToVector();
        // Sharded: this rank's gradients are zero outside its experts, not inside.
        int64_t per_expert = g.numel() / kExperts, mine = kExperts / ranks;
        double inside = 0, outside = 0;
        for (int64_t q = 0; q < g.numel(); ++q)
          (q / per_expert / mine == r ? inside : outside) += std::abs(v[static_cast<size_t>(q)]);
        EXPECT_EQ(outside, 0) << name << " on rank " << r;
        EXPECT_GT(inside, 0) << name << " on rank " << r;
        auto& s = sums[name];
        s.resize(v.size(), 0.0);
        for (size_t q = 0; q < v.size(); ++q) s[q] += v[q];
      }
    }
    EXPECT_NEAR(loss, want->values[0].At(0), 1e-12 * std::abs(loss));
    for (const auto& [name, g] : want->param_grads) {
      std::vector<double> w = g.ToVector();
      ASSERT_EQ(sums[name].size(), w.size());
      for (size_t q = 0; q < w.size(); ++q)
        ASSERT_NEAR(sums[name][q], w[q], 1e-12 * (1 + std::abs(w[q]))) << name << "[" << q << "]";
    }
  }
}

TEST(ExpertParallel, ExpertsMustDivideOverTheRanks) {
  auto shard = Build("moe.ExpertsParallel", kTokens / 3);
  ASSERT_TRUE(shard.ok());
  ParamStore params;
  params.Initialize((*shard)->params(), 7);
  Batch b = MakeBatch();
  auto comms = MakeLocalCommunicators(3, {.timeout_s = 30});
  std::vector<Status> status(3);
  std::vector<std::thread> threads;
  for (int r = 0; r < 3; ++r) {
    threads.emplace_back([&, r] {
      ShardGroupScope group(comms[static_cast<size_t>(r)].get());
      auto out = RunBatch(**shard, Rows(b, r * 8, (r + 1) * 8), params);
      status[static_cast<size_t>(r)] = out.status();
    });
  }
  for (std::thread& t : threads) t.join();
  for (const Status& s : status) {
    ASSERT_FALSE(s.ok());
    EXPECT_NE(s.message().find("8 routed experts do not divide over 3 expert-parallel ranks"),
              std::string::npos)
        << s.ToString();
  }
}

TrainedRun Train(const std::string& name, const std::vector<std::string>& sets,
                 Trace* trace = nullptr) {
  return TrainGraph("good/train_pp.pbtxt", "ep_" + name, sets, "step-000003", trace);
}

// The test: EP=2 equals EP=1 for the tiny MoE model (the losses and SGD parameters of
// the tiny DeepSeek-V3-style model of train_pp.pbtxt, within 1e-5 relative), and so does EP=4.
TEST(ExpertParallel, TrainsLikeOneRank) {
  TrainedRun one = Train("one", {});
  ASSERT_EQ(one.losses.size(), 3u);
  for (int ranks : {2, 4}) {
    SCOPED_TRACE(ranks);
    Trace trace;
    std::string n = std::to_string(ranks);
    TrainedRun ep = Train("ep" + n, {"dp=" + n, "ep=" + n}, &trace);
    ASSERT_EQ(ep.losses.size(), 3u);
    for (size_t i = 0; i < 3; ++i)
      EXPECT_NEAR(ep.losses[i], one.losses[i], 1e-5 * std::abs(one.losses[i])) << i;
    EXPECT_LT(MaxRelativeDifference(one.params, ep.params, 1e-3), 1e-5);
    // The MoE layers ran as moe.ExpertsParallel on every rank.
    std::string json = TraceJson(trace, "ep_trace");
    for (int r = 0; r < ranks; ++r) {
      EXPECT_NE(json.find("\"cat\": \"moe.ExpertsParallel\", \"ph\": \"X\", \"pid\": " +
                          std::to_string(r)),
                std::string::npos)
          << r;
    }
  }
  RunResult bad = RunGraphFile(TestGraph("good/train_pp.pbtxt"),
                               fs::path(::testing::TempDir()) / "ep_bad", {"ep=2"});
  ASSERT_FALSE(bad.status.ok());
  EXPECT_NE(bad.status.message().find("set data_parallel=2"), std::string::npos)
      << bad.status.ToString();
}

}  // namespace
}  // namespace weir::testing
