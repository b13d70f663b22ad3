// moe.Router against a direct transcription of DeepSeek-V3's Gate.forward
// (../shared/spec/deepseek.md §3.2) in double precision, its gradient against finite
// differences, and its shape errors.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>

#include "weir/testing/op_check.h"

namespace weir::testing {
namespace {

TensorType F64(Shape s) { return {DT_F64, std::move(s)}; }
TensorType I64(Shape s) { return {DT_I64, std::move(s)}; }

struct Routed {
  std::vector<double> weights;
  std::vector<int64_t> indices;
};

// The spec's steps 1-8 for one row, as plainly as possible.
Routed Reference(std::vector<double> logits, const std::vector<double>& bias, bool sigmoid,
                 int groups, int topk_group, int k, bool normalize, double scale) {
  size_t n = logits.size();
  std::vector<double> s(n);
  if (sigmoid) {
    for (size_t e = 0; e < n; ++e) s[e] = 1 / (1 + std::exp(-logits[e]));
  } else {
    double sum = 0;
    for (size_t e = 0; e < n; ++e) sum += s[e] = std::exp(logits[e]);
    for (double& v : s) v /= sum;
  }
  std::vector<double> sel = s;
  for (size_t e = 0; e < n && !bias.empty(); ++e) sel[e] += bias[e];
  size_t size = n / static_cast<size_t>(groups);
  std::vector<std::pair<double, int>> group_scores;
  for (int g = 0; g < groups; ++g) {
    std::vector<double> m(sel.begin() + g * static_cast<int>(size),
                          sel.begin() + (g + 1) * static_cast<int>(size));
    std::sort(m.rbegin(), m.rend());
    group_scores.push_back({bias.empty() ? m[0] : m[0] + m[1], g});
  }
  std::stable_sort(group_scores.begin(), group_scores.end(),
                   [](auto a, auto b) { return a.first > b.first; });
  for (size_t r = static_cast<size_t>(topk_group); r < group_scores.size(); ++r)
    for (size_t e = 0; e < size; ++e)
      sel[static_cast<size_t>(group_scores[r].second) * size + e] = -INFINITY;
  std::vector<int64_t> idx(n);
  std::iota(idx.begin(), idx.end(), 0);
  std::stable_sort(idx.begin(), idx.end(), [&](int64_t a, int64_t b) {
    return sel[static_cast<size_t>(a)] > sel[static_cast<size_t>(b)];
  });
  idx.resize(static_cast<size_t>(k));
  Routed out;
  double total = 0;
  for (int64_t e : idx) total += s[static_cast<size_t>(e)];
  for (int64_t e : idx)
    out.weights.push_back(s[static_cast<size_t>(e)] / (normalize ? total : 1.0) * scale);
  out.indices = idx;
  return out;
}

TEST(MoeRouter, MatchesGateForwardWithGroupsAndBias) {
  std::vector<double> logits = {0.3,  -1.2, 0.8, 0.1,  -0.4, 1.5, -0.9, 0.2,   // row 0
                                -0.5, 0.6,  0.7, -1.1, 0.9,  0.0, 0.4,  -0.3,  // row 1
                                1.0,  0.9,  0.8, 0.7,  0.6,  0.5, 0.4,  0.3};  // row 2
  std::vector<double> bias = {0.0, 0.5, -0.2, 0.1, 0.0, -0.6, 0.3, 0.9};
  for (bool sigmoid : {true, false}) {
    for (bool with_bias : {true, false}) {
      std::string attrs =
          std::string("num_experts_per_tok=3 n_group=4 topk_group=2 ") +
          "routed_scaling_factor=2.5 scoring_func=" + (sigmoid ? "sigmoid" : "softmax") +
          (sigmoid ? "" : " norm_topk_prob=false");
      OpCase c{"moe.Router", attrs, {F64({3, 8})}, {{0, logits}}};
      if (with_bias) {
        c.inputs.push_back({DT_F32, {8}});
        c.values[1] = bias;
      }
      auto out = RunOp(c);
      ASSERT_TRUE(out.ok()) << out.status().ToString();
      for (int r = 0; r < 3; ++r) {
        std::vector<double> row(logits.begin() + r * 8, logits.begin() + (r + 1) * 8);
        Routed want = Reference(row, with_bias ? bias : std::vector<double>{}, sigmoid, 4, 2, 3,
                                sigmoid, 2.5);
        for (int k = 0; k < 3; ++k) {
          SCOPED_TRACE(std::string(sigmoid ? "sigmoid" : "softmax") +
                       (with_bias ? " with bias" : "") + ", row " + std::to_string(r));
          EXPECT_EQ((*out)[1].At(r * 3 + k),
                    static_cast<double>(want.indices[static_cast<size_t>(k)]));
          EXPECT_NEAR((*out)[0].At(r * 3 + k), want.weights[static_cast<size_t>(k)], 1e-12);
        }
      }
    }
  }
}

TEST(MoeRouter, TheBiasChoosesButDoesNotWeigh) {
  // Expert 3 has the lowest score but a bias that puts it first; its weight is its own score.
  std::vector<double> logits = {2.0, 1.0, 0.5, -3.0};
  OpCase c{"moe.Router",
           "num_experts_per_tok=2 norm_topk_prob=false",
           {F64({1, 4}), {DT_F32, {4}}},
           {{0, logits}, {1, {0, 0, 0, 10}}}};
  auto out = RunOp(c);
  ASSERT_TRUE(out.ok()) << out.status().ToString();
  EXPECT_EQ((*out)[1].ToVector(), (std::vector<double>{3, 0}));
  EXPECT_NEAR((*out)[0].At(0), 1 / (1 + std::exp(3.0)), 1e-12);
  EXPECT_NEAR((*out)[0].At(1), 1 / (1 + std::exp(-2.0)), 1e-12);
}

TEST(MoeRouter, GradientMatchesFiniteDifferences) {
  for (const char* attrs :
       {"num_experts_per_tok=2 n_group=2 topk_group=1 routed_scaling_factor=2.5",
        "num_experts_per_tok=3 scoring_func=softmax norm_topk_prob=false",
        "num_experts_per_tok=3 scoring_func=softmax"}) {
    SCOPED_TRACE(attrs);
    EXPECT_EQ(CheckGradients({"moe.Router", attrs, {F64({4, 6})}}), 24);
  }
  OpCase biased{"moe.Router",
                "num_experts_per_tok=2",
                {F64({3, 6}), {DT_F32, {6}}},
                {{1, {0.1, -0.2, 0.3, 0.0, 0.2, -0.1}}},
                {1}};
  EXPECT_EQ(CheckGradients(biased), 18);
}

TEST(MoeRouter, Bf16StaysCloseToF32) {
  // Well-separated logits, so bf16 rounding cannot reorder experts.
  std::vector<double> logits;
  for (int i = 0; i < 4 * 16; ++i) logits.push_back(((i * 37) % 64) / 16.0 - 2.0);
  std::string attrs = "num_experts_per_tok=4 n_group=4 topk_group=2 routed_scaling_factor=2.5";
  auto f32 = RunOp({"moe.Router", attrs, {{DT_F32, {4, 16}}}, {{0, logits}}});
  auto bf16 = RunOp({"moe.Router", attrs, {{DT_BF16, {4, 16}}}, {{0, logits}}});
  ASSERT_TRUE(f32.ok() && bf16.ok());
  EXPECT_EQ((*bf16)[1].ToVector(), (*f32)[1].ToVector());
  std::vector<double> a = (*f32)[0].ToVector(), b = (*bf16)[0].ToVector();
  for (size_t i = 0; i < a.size(); ++i) EXPECT_NEAR(b[i], a[i], 0.01 * std::abs(a[i])) << i;
}

// Two sequences of three tokens, four experts, K = 2.
const std::vector<double> kIndices = {0, 1, 0, 2, 0, 1, /* sequence 1 */ 3, 2, 1, 3, 2, 3};

TEST(MoeBalanceLoss, MatchesTheFormula) {
  OpCase c{"moe.BalanceLoss", "alpha=0.5", {F64({2, 3, 4}), I64({2, 3, 2})}, {{1, kIndices}}};
  auto out = RunOp(c);
  ASSERT_TRUE(out.ok()) << out.status().ToString();
  std::vector<double> x = CaseInputs(c)[0].ToVector();
  double want = 0;
  for (int b = 0; b < 2; ++b) {
    std::vector<double> f(4, 0.0), p(4, 0.0);
    for (int t = 0; t < 6; ++t)
      f[static_cast<size_t>(kIndices[static_cast<size_t>(b * 6 + t)])] += 4.0 / (2 * 3);
    for (int t = 0; t < 3; ++t) {
      double total = 0;
      std::vector<double> s(4);
      for (int e = 0; e < 4; ++e)
        total += s[static_cast<size_t>(e)] =
            1 / (1 + std::exp(-x[static_cast<size_t>((b * 3 + t) * 4 + e)]));
      for (int e = 0; e < 4; ++e)
        p[static_cast<size_t>(e)] += s[static_cast<size_t>(e)] / total / 3;
    }
    for (int e = 0; e < 4; ++e) want += 0.5 * f[static_cast<size_t>(e)] * p[static_cast<size_t>(e)];
  }
  EXPECT_NEAR((*out)[0].At(0), want / 2, 1e-12);
}

TEST(MoeBalanceLoss, ImbalanceCostsMore) {
  // Balanced: every expert chosen equally, affinities uniform: the loss is alpha.
  OpCase balanced{"moe.BalanceLoss",
                  "alpha=1",
                  {F64({1, 2, 4}), I64({1, 2, 2})},
                  {{0, std::vector<double>(8, 0.0)}, {1, {0, 1, 2, 3}}}};
  // Collapsed: both tokens to experts 0 and 1, which also hold the affinity.
  OpCase collapsed{"moe.BalanceLoss",
                   "alpha=1",
                   {F64({1, 2, 4}), I64({1, 2, 2})},
                   {{0, {6, 6, -6, -6, 6, 6, -6, -6}}, {1, {0, 1, 0, 1}}}};
  auto a = RunOp(balanced), b = RunOp(collapsed);
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_NEAR((*a)[0].At(0), 1.0, 1e-12);
  EXPECT_GT((*b)[0].At(0), 1.9);
}

TEST(MoeBalanceLoss, GradientMatchesFiniteDifferences) {
  OpCase c{"moe.BalanceLoss", "alpha=0.5", {F64({2, 3, 4}), I64({2, 3, 2})}, {{1, kIndices}}, {1}};
  EXPECT_EQ(CheckGradients(c), 24);
}

TEST(MoeBiasUpdate, OverloadedExpertsLoseBiasUnderloadedGain) {
  // 4 experts, 6 choices: mean load 1.5; loads 3, 2, 1, 0.
  OpCase c{"moe.BiasUpdate",
           "bias_update_speed=0.001",
           {{DT_F32, {4}}, {DT_F32, {4}}},
           {{0, {0.5, 0.0, -0.25, 0.0}}, {1, {3, 2, 1, 0}}}};
  auto out = RunOp(c);
  ASSERT_TRUE(out.ok()) << out.status().ToString();
  std::vector<double> bias = (*out)[0].ToVector();
  EXPECT_NEAR(bias[0], 0.5 - 0.001, 1e-7);
  EXPECT_NEAR(bias[1], 0.0 - 0.001, 1e-7);
  EXPECT_NEAR(bias[2], -0.25 + 0.001, 1e-7);
  EXPECT_NEAR(bias[3], 0.0 + 0.001, 1e-7);
  EXPECT_NEAR((*out)[1].At(0), 3 / 1.5, 1e-6);
  auto bad = RunOp({"moe.BiasUpdate", "", {{DT_F32, {4}}, {DT_F32, {4}}}, {{1, {0, -1, 0, 0}}}});
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("the load of expert 1 is -1"), std::string::npos)
      << bad.status().ToString();
}

TEST(MoeRouter, TheGroupLimitChangesTheChoice) {
  // Groups {0, 1} and {2, 3}; the best group holds the best expert (0) and a weak one (1). One
  // group allowed: experts 0 and 1; no groups: 0 and 3.
  std::vector<double> logits = {2.2, -2.0, 1.4, 1.7};
  auto grouped = RunOp(
      {"moe.Router", "num_experts_per_tok=2 n_group=2 topk_group=1", {F64({1, 4})}, {{0, logits}}});
  auto free = RunOp({"moe.Router", "num_experts_per_tok=2", {F64({1, 4})}, {{0, logits}}});
  ASSERT_TRUE(grouped.ok() && free.ok());
  EXPECT_EQ((*grouped)[1].ToVector(), (std::vector<double>{0, 1}));
  EXPECT_EQ((*free)[1].ToVector(), (std::vector<double>{0, 3}));
}

TEST(MoeRouter, ReportsTheLoadOfEachExpert) {
  OpCase c{"moe.Router",
           "num_experts_per_tok=2",
           {F64({3, 4})},
           {{0, {3, 2, 1, 0, 0, 3, 2, 1, 3, 0, 1, 2}}}};
  auto out = RunOp(c);
  ASSERT_TRUE(out.ok()) << out.status().ToString();
  // Rows choose {0, 1}, {1, 2}, {0, 3}.
  EXPECT_EQ((*out)[2].ToVector(), (std::vector<double>{2, 2, 1, 1}));
}

TEST(MoeRouter, ImpossibleConfigurationsAreNamed) {
  auto groups = RunOp({"moe.Router", "num_experts_per_tok=2 n_group=3", {F64({2, 8})}});
  ASSERT_FALSE(groups.ok());
  EXPECT_NE(groups.status().message().find("8 experts do not split into n_group=3 groups"),
            std::string::npos)
      << groups.status().ToString();
  auto k = RunOp({"moe.Router", "num_experts_per_tok=5 n_group=4 topk_group=2", {F64({2, 8})}});
  ASSERT_FALSE(k.ok());
  EXPECT_NE(k.status().message().find("num_experts_per_tok=5 exceeds the 4 experts of the kept "
                                      "groups"),
            std::string::npos)
      << k.status().ToString();
}

}  // namespace
}  // namespace weir::testing
