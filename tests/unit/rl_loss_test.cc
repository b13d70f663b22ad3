// GRPO's numerics in the rl plugin: rl.TokenLogProbs and rl.GRPOLoss against hand-computed values
// and against a plain double-loop transcription of TRL's formulas, finite-difference gradient
// checks in f64 (clip active and inactive, with and without the KL term), and GroupAdvantages.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <random>

#include "losses/grpo_math.h"
#include "weir/testing/op_check.h"

namespace weir::testing {
namespace {

using rl::GroupAdvantages;
using rl::GroupAdvantagesResult;

TensorType Of(DataType t, Shape s) { return {t, std::move(s)}; }
TensorType F64(Shape s) { return {DT_F64, std::move(s)}; }
TensorType I64(Shape s) { return {DT_I64, std::move(s)}; }

// The gradients a trainer gets: Σ op.output[output] (weight 1) differentiated, as a program,
// with respect to the inputs `of`.
StatusOr<std::vector<Tensor>> InputGrads(OpCase c, int output, const std::vector<int>& of) {
  c.output = output;
  WEIR_ASSIGN_OR_RETURN(std::vector<Tensor> forward, RunOp(c));
  WEIR_ASSIGN_OR_RETURN(Graph graph, OpGraph(c, true));
  std::vector<TensorType> types = c.inputs;
  std::vector<Tensor> inputs = CaseInputs(c);
  const Tensor& y = forward.at(static_cast<size_t>(output));
  types.push_back({y.dtype(), y.shape()});
  inputs.push_back(Tensor::Full(y.dtype(), y.shape(), 1.0));
  ProgramOptions options;
  options.loss = "loss";
  for (int i : of) options.input_grads.push_back("x" + std::to_string(i));
  WEIR_ASSIGN_OR_RETURN(auto program,
                        Program::Build(graph, "F", {}, types, TestRegistry(), options));
  ParamStore params;
  WEIR_ASSIGN_OR_RETURN(Program::Outputs out, program->Run(inputs, params));
  return out.input_grads;
}

// ---------------------------------------------------------------------------------------------
// rl.TokenLogProbs

// log softmax and entropy straight from the definitions (no max subtraction: small logits).
struct LogProbsReference {
  std::vector<double> logp, entropy;
};

LogProbsReference ReferenceLogProbs(const std::vector<double>& logits,
                                    const std::vector<double>& targets, int64_t vocab,
                                    int64_t ignore) {
  LogProbsReference out;
  for (size_t r = 0; r < targets.size(); ++r) {
    auto t = static_cast<int64_t>(targets[r]);
    if (t == ignore) {
      out.logp.push_back(0);
      out.entropy.push_back(0);
      continue;
    }
    double z = 0;
    for (int64_t j = 0; j < vocab; ++j) z += std::exp(logits[r * vocab + j]);
    double h = 0;
    for (int64_t j = 0; j < vocab; ++j) {
      double p = std::exp(logits[r * vocab + j]) / z;
      h -= p * std::log(p);
    }
    out.logp.push_back(std::log(std::exp(logits[r * vocab + t]) / z));
    out.entropy.push_back(h);
  }
  return out;
}

TEST(RlTokenLogProbs, HandComputed) {
  // Row 0: logits ln 1, ln 2, ln 3 give p = 1/6, 2/6, 3/6; target 2 has log p = ln(1/2).
  // Row 1: uniform over 3, target 1: log p = −ln 3, entropy ln 3. Row 2 is ignored.
  OpCase c{"rl.TokenLogProbs",
           "",
           {F64({1, 3, 3}), I64({1, 3})},
           {{0, {0, std::log(2.0), std::log(3.0), 5, 5, 5, 9, -9, 1}}, {1, {2, 1, -100}}},
           {1}};
  auto out = RunOp(c);
  ASSERT_TRUE(out.ok()) << out.status().ToString();
  const Tensor& logp = (*out)[0];
  const Tensor& entropy = (*out)[1];
  EXPECT_EQ(logp.dtype(), DT_F64);
  EXPECT_EQ(logp.shape(), (Shape{1, 3}));
  EXPECT_NEAR(logp.At(0), std::log(0.5), 1e-14);
  double h0 = -(std::log(1.0 / 6) / 6 + std::log(2.0 / 6) * 2 / 6 + std::log(3.0 / 6) * 3 / 6);
  EXPECT_NEAR(entropy.At(0), h0, 1e-14);
  EXPECT_NEAR(logp.At(1), -std::log(3.0), 1e-14);
  EXPECT_NEAR(entropy.At(1), std::log(3.0), 1e-14);
  EXPECT_EQ(logp.At(2), 0.0);
  EXPECT_EQ(entropy.At(2), 0.0);
}

TEST(RlTokenLogProbs, MatchesReferenceInEveryDtype) {
  const int64_t vocab = 11;  // not a multiple of the kernel's 8 lanes
  const std::vector<double> targets = {0, 10, -1, 3, 7, 5};
  for (DataType dt : {DT_F64, DT_F32, DT_BF16, DT_F16}) {
    SCOPED_TRACE(DataTypeName(dt));
    OpCase c{"rl.TokenLogProbs",
             "ignore_index=-1",
             {Of(dt, {2, 3, vocab}), I64({2, 3})},
             {{1, targets}},
             {1}};
    c.seed = 5;
    // The reference reads the logits as stored (rounded to bf16 or f16).
    LogProbsReference want =
        ReferenceLogProbs(CaseInputs(c)[0].ToVector(), targets, vocab, /*ignore=*/-1);
    auto out = RunOp(c);
    ASSERT_TRUE(out.ok()) << out.status().ToString();
    DataType out_type = dt == DT_F64 ? DT_F64 : DT_F32;
    EXPECT_EQ((*out)[0].dtype(), out_type);
    EXPECT_EQ((*out)[1].dtype(), out_type);
    double tolerance = dt == DT_F64 ? 1e-13 : 2e-6;
    for (size_t r = 0; r < targets.size(); ++r) {
      EXPECT_NEAR((*out)[0].At(static_cast<int64_t>(r)), want.logp[r], tolerance) << r;
      EXPECT_NEAR((*out)[1].At(static_cast<int64_t>(r)), want.entropy[r], tolerance) << r;
    }
  }
}

TEST(RlTokenLogProbs, StableForLargeAndMaskedLogits) {
  // exp(1000) overflows; the max-subtracted form gives the values of logits 0, 1, 2.
  // A −∞ logit (a token masked out) has probability 0 and adds nothing to the entropy.
  for (DataType dt : {DT_F64, DT_F32}) {
    SCOPED_TRACE(DataTypeName(dt));
    double inf = std::numeric_limits<double>::infinity();
    OpCase c{"rl.TokenLogProbs",
             "",
             {Of(dt, {2, 3}), I64({2})},
             {{0, {1000, 1001, 1002, 0, -inf, 0}}, {1, {2, 0}}},
             {1}};
    auto out = RunOp(c);
    ASSERT_TRUE(out.ok()) << out.status().ToString();
    LogProbsReference small = ReferenceLogProbs({0, 1, 2}, {2}, 3, -100);
    EXPECT_NEAR((*out)[0].At(0), small.logp[0], 1e-5);
    EXPECT_NEAR((*out)[1].At(0), small.entropy[0], 1e-5);
    EXPECT_NEAR((*out)[0].At(1), std::log(0.5), 1e-6);
    EXPECT_NEAR((*out)[1].At(1), std::log(2.0), 1e-6);
  }
}

TEST(RlTokenLogProbs, Errors) {
  auto bad_target = RunOp({"rl.TokenLogProbs", "", {F64({2, 4}), I64({2})}, {{1, {1, 4}}}, {1}});
  ASSERT_FALSE(bad_target.ok());
  EXPECT_NE(bad_target.status().ToString().find("target 4 at position 1 is outside the vocabulary"),
            std::string::npos)
      << bad_target.status().ToString();
  auto bad_shape = RunOp({"rl.TokenLogProbs", "", {F64({2, 3, 4}), I64({2, 2})}, {}, {1}});
  ASSERT_FALSE(bad_shape.ok());
  EXPECT_NE(bad_shape.status().ToString().find("targets must be integer ids of shape [2, 3]"),
            std::string::npos)
      << bad_shape.status().ToString();
  auto int_logits = RunOp({"rl.TokenLogProbs", "", {I64({2, 4}), I64({2})}, {}, {0, 1}});
  ASSERT_FALSE(int_logits.ok());
  EXPECT_NE(int_logits.status().ToString().find("logits must be f32, bf16, f16 or f64"),
            std::string::npos)
      << int_logits.status().ToString();
}

TEST(RlTokenLogProbs, Gradient) {
  // logp only; the ignored position (-1) must get a zero gradient, which differences confirm.
  OpCase c{"rl.TokenLogProbs",
           "ignore_index=-1",
           {F64({2, 3, 5}), I64({2, 3})},
           {{1, {0, 4, -1, 2, 2, 1}}},
           {1}};
  EXPECT_EQ(CheckGradients(c), 30);
  // Closed form g · (onehot − softmax) at one position, weight 1, in every dtype: p = 1/6, 2/6,
  // 3/6 and target 1. The narrow types store the logits and the gradient rounded.
  for (DataType dt : {DT_F64, DT_F32, DT_BF16, DT_F16}) {
    SCOPED_TRACE(DataTypeName(dt));
    OpCase one{"rl.TokenLogProbs",
               "",
               {Of(dt, {1, 3}), I64({1})},
               {{0, {0, std::log(2.0), std::log(3.0)}}, {1, {1}}},
               {1}};
    auto grads = InputGrads(one, 0, {0});
    ASSERT_TRUE(grads.ok()) << grads.status().ToString();
    EXPECT_EQ((*grads)[0].dtype(), dt);
    double tolerance = dt == DT_F64 ? 1e-14 : dt == DT_F32 ? 1e-6 : 1e-2;
    std::vector<double> want = {-1.0 / 6, 1 - 2.0 / 6, -3.0 / 6};
    for (int64_t j = 0; j < 3; ++j) EXPECT_NEAR((*grads)[0].At(j), want[j], tolerance) << j;
  }
}

TEST(RlTokenLogProbs, EntropyCarriesNoGradient) {
  OpCase c{"rl.TokenLogProbs", "", {F64({2, 4}), I64({2})}, {{1, {1, 3}}}, {1}};
  auto grads = InputGrads(c, /*entropy*/ 1, {0});
  ASSERT_TRUE(grads.ok()) << grads.status().ToString();
  ASSERT_EQ((*grads)[0].shape(), (Shape{2, 4}));
  for (double g : (*grads)[0].ToVector()) EXPECT_EQ(g, 0.0);
}

// ---------------------------------------------------------------------------------------------
// rl.GRPOLoss

struct GrpoInputs {
  int64_t batch = 0, time = 0;
  std::vector<double> logp, old_logp, ref_logp, advantages, mask;
};

OpCase GrpoCase(const GrpoInputs& in, const std::string& attrs, DataType dt = DT_F64) {
  Shape bt = {in.batch, in.time};
  return OpCase{
      "rl.GRPOLoss",
      attrs,
      {Of(dt, bt), Of(dt, bt), Of(dt, bt), Of(dt, {in.batch}), Of(dt, bt)},
      {{0, in.logp}, {1, in.old_logp}, {2, in.ref_logp}, {3, in.advantages}, {4, in.mask}},
      {1, 2, 3, 4}};
}

struct GrpoResult {
  double loss = 0, kl = 0, clip_ratio = 0;
};

GrpoResult RunGrpo(const GrpoInputs& in, const std::string& attrs, DataType dt = DT_F64) {
  auto out = RunOp(GrpoCase(in, attrs, dt));
  EXPECT_TRUE(out.ok()) << out.status().ToString();
  if (!out.ok()) return {};
  return {(*out)[0].At(0), (*out)[1].At(0), (*out)[2].At(0)};
}

std::vector<double> GrpoGrad(const GrpoInputs& in, const std::string& attrs) {
  auto grads = InputGrads(GrpoCase(in, attrs), 0, {0});
  EXPECT_TRUE(grads.ok()) << grads.status().ToString();
  return grads.ok() ? (*grads)[0].ToVector() : std::vector<double>{};
}

// One group of two completions whose policy has not moved (ratio 1): every token's loss is −A.
GrpoInputs Unmoved() {
  GrpoInputs in;
  in.batch = 2;
  in.time = 3;
  in.logp = {-1.0, -2.0, -0.5, -0.3, -1.7, -2.2};
  in.old_logp = in.logp;
  in.ref_logp = in.logp;
  in.advantages = {1.0, -0.5};
  in.mask = {1, 1, 0, 1, 1, 1};
  return in;
}

TEST(RlGrpoLoss, EachAggregationByHand) {
  GrpoInputs in = Unmoved();
  // Σ mask·(−A) = −(1·2) + 0.5·3 = −0.5 over 5 tokens.
  GrpoResult dapo = RunGrpo(in, "");  // dapo is the default, as in TRL
  EXPECT_NEAR(dapo.loss, -0.5 / 5, 1e-15);
  EXPECT_EQ(dapo.kl, 0.0);
  EXPECT_EQ(dapo.clip_ratio, 0.0);
  // grpo: mean over sequences of (−2/2, 1.5/3).
  EXPECT_NEAR(RunGrpo(in, "loss_type=grpo").loss, (-1.0 + 0.5) / 2, 1e-15);
  // dr_grpo: Σ / (B · L), L the time dim (3) unless given.
  EXPECT_NEAR(RunGrpo(in, "loss_type=dr_grpo").loss, -0.5 / (2 * 3), 1e-15);
  EXPECT_NEAR(RunGrpo(in, "loss_type=dr_grpo max_completion_length=4").loss, -0.5 / (2 * 4), 1e-15);

  // d loss / d logp = w_b · mask · (−A_b · ratio), ratio 1.
  std::vector<double> g = GrpoGrad(in, "");
  std::vector<double> want = {-1.0 / 5, -1.0 / 5, 0, 0.5 / 5, 0.5 / 5, 0.5 / 5};
  ASSERT_EQ(g.size(), want.size());
  for (size_t i = 0; i < g.size(); ++i) EXPECT_NEAR(g[i], want[i], 1e-15) << i;
  g = GrpoGrad(in, "loss_type=grpo");
  want = {-1.0 / 4, -1.0 / 4, 0, 0.5 / 6, 0.5 / 6, 0.5 / 6};
  for (size_t i = 0; i < g.size(); ++i) EXPECT_NEAR(g[i], want[i], 1e-15) << i;
}

TEST(RlGrpoLoss, ClippingByHand) {
  // Four one-token sequences, ε = 0.2: ratios 1.5, 1.5, 0.5, 0.5 against A = +1, −1, −1, +1.
  GrpoInputs in;
  in.batch = 4;
  in.time = 1;
  in.old_logp = {-1, -1, -1, -1};
  in.logp = {-1 + std::log(1.5), -1 + std::log(1.5), -1 + std::log(0.5), -1 + std::log(0.5)};
  in.ref_logp = in.logp;
  in.advantages = {1, -1, -1, 1};
  in.mask = {1, 1, 1, 1};
  // −min(rA, clip(r)A): clipped to −1.2, unclipped 1.5, clipped 0.8, unclipped −0.5.
  GrpoResult r = RunGrpo(in, "");
  EXPECT_NEAR(r.loss, (-1.2 + 1.5 + 0.8 - 0.5) / 4, 1e-14);
  EXPECT_NEAR(r.clip_ratio, 2.0 / 4, 1e-15);
  // Where the clip holds the token is constant in logp; elsewhere d/dlogp (−rA) = −rA.
  std::vector<double> g = GrpoGrad(in, "");
  std::vector<double> want = {0, 1.5 / 4, 0, -0.5 / 4};
  for (size_t i = 0; i < g.size(); ++i) EXPECT_NEAR(g[i], want[i], 1e-14) << i;
  // A wider clip (ε = 0.6) holds nothing: every token is −rA.
  r = RunGrpo(in, "epsilon=0.6");
  EXPECT_NEAR(r.loss, (-1.5 + 1.5 + 0.5 - 0.5) / 4, 1e-14);
  EXPECT_EQ(r.clip_ratio, 0.0);
}

TEST(RlGrpoLoss, EpsilonHigh) {
  GrpoInputs in;
  in.batch = 1;
  in.time = 1;
  in.old_logp = {-2};
  in.logp = {-2 + std::log(1.25)};
  in.ref_logp = in.logp;
  in.advantages = {2};
  in.mask = {1};
  // 0 means ε: 1.25 clips to 1.2. DAPO's 0.28 lets 1.25 through.
  GrpoResult same = RunGrpo(in, "epsilon_high=0");
  EXPECT_NEAR(same.loss, -1.2 * 2, 1e-14);
  EXPECT_EQ(same.clip_ratio, 1.0);
  GrpoResult dapo = RunGrpo(in, "epsilon_high=0.28");
  EXPECT_NEAR(dapo.loss, -1.25 * 2, 1e-14);
  EXPECT_EQ(dapo.clip_ratio, 0.0);
}

TEST(RlGrpoLoss, K3KlByHand) {
  // A = 0, so only the KL term can move the loss. ref − logp = ln 2 and −ln 2:
  // k3 = 2 − ln 2 − 1 and 1/2 + ln 2 − 1, whose mean is 1/4.
  GrpoInputs in;
  in.batch = 1;
  in.time = 2;
  in.logp = {-1.0, -3.0};
  in.old_logp = in.logp;
  in.ref_logp = {-1.0 + std::log(2.0), -3.0 - std::log(2.0)};
  in.advantages = {0};
  in.mask = {1, 1};
  GrpoResult off = RunGrpo(in, "beta=0");
  EXPECT_EQ(off.loss, 0.0);
  EXPECT_NEAR(off.kl, 0.25, 1e-15);  // reported even when it is not in the loss
  GrpoResult on = RunGrpo(in, "beta=0.1");
  EXPECT_NEAR(on.loss, 0.1 * 0.25, 1e-15);
  EXPECT_NEAR(on.kl, 0.25, 1e-15);
  // d k3 / d logp = 1 − π_ref/π: 1 − 2 and 1 − 1/2, times β over 2 tokens.
  std::vector<double> g = GrpoGrad(in, "beta=0.1");
  EXPECT_NEAR(g[0], 0.1 * (1 - 2.0) / 2, 1e-15);
  EXPECT_NEAR(g[1], 0.1 * (1 - 0.5) / 2, 1e-15);
  for (double v : GrpoGrad(in, "beta=0")) EXPECT_EQ(v, 0.0);
}

TEST(RlGrpoLoss, MaskedTokensAreSkipped) {
  // Padding may hold anything, inf included: a 0 in the mask keeps it out of every output.
  GrpoInputs in = Unmoved();
  in.logp[2] = -std::numeric_limits<double>::infinity();
  in.ref_logp[2] = 0;
  GrpoResult r = RunGrpo(in, "beta=0.5");
  EXPECT_NEAR(r.loss, -0.5 / 5, 1e-15);
  EXPECT_EQ(r.kl, 0.0);
  // No token counts at all: 0, not a division by zero.
  in.mask.assign(6, 0.0);
  for (const char* type : {"grpo", "dapo", "dr_grpo"}) {
    GrpoResult none = RunGrpo(in, std::string("loss_type=") + type);
    EXPECT_EQ(none.loss, 0.0) << type;
    EXPECT_EQ(none.kl, 0.0) << type;
    EXPECT_EQ(none.clip_ratio, 0.0) << type;
  }
}

// TRL's GRPOTrainer.compute_loss transcribed: per_token_loss over the whole [B, T] grid, then
// multiplied by the mask and aggregated by loss type.
GrpoResult TrlReference(const GrpoInputs& in, double epsilon, double epsilon_high, double beta,
                        const std::string& loss_type, int64_t max_completion_length) {
  double eps_low = epsilon, eps_high = epsilon_high > 0 ? epsilon_high : epsilon;
  int64_t b_count = in.batch, t_count = in.time;
  std::vector<std::vector<double>> per_token(b_count, std::vector<double>(t_count));
  std::vector<std::vector<double>> kl(b_count, std::vector<double>(t_count));
  std::vector<std::vector<double>> clipped(b_count, std::vector<double>(t_count));
  for (int64_t b = 0; b < b_count; ++b) {
    for (int64_t t = 0; t < t_count; ++t) {
      size_t i = static_cast<size_t>(b * t_count + t);
      double a = in.advantages[static_cast<size_t>(b)];
      double coef_1 = std::exp(in.logp[i] - in.old_logp[i]);
      double coef_2 = std::min(std::max(coef_1, 1 - eps_low), 1 + eps_high);
      double per_token_loss1 = coef_1 * a, per_token_loss2 = coef_2 * a;
      per_token[b][t] = -std::min(per_token_loss1, per_token_loss2);
      kl[b][t] = std::exp(in.ref_logp[i] - in.logp[i]) - (in.ref_logp[i] - in.logp[i]) - 1;
      if (beta != 0.0) per_token[b][t] += beta * kl[b][t];
      bool low = coef_1 < 1 - eps_low && a<0, high = coef_1> 1 + eps_high && a > 0;
      clipped[b][t] = (low || high) ? 1.0 : 0.0;
    }
  }
  auto mask = [&](int64_t b, int64_t t) { return in.mask[static_cast<size_t>(b * t_count + t)]; };
  double masked_sum = 0, mask_sum = 0, kl_sum = 0, clip_sum = 0, seq_mean_sum = 0;
  for (int64_t b = 0; b < b_count; ++b) {
    double row = 0, row_mask = 0;
    for (int64_t t = 0; t < t_count; ++t) {
      row += per_token[b][t] * mask(b, t);
      row_mask += mask(b, t);
      kl_sum += kl[b][t] * mask(b, t);
      clip_sum += clipped[b][t] * mask(b, t);
    }
    masked_sum += row;
    mask_sum += row_mask;
    seq_mean_sum += row / std::max(row_mask, 1.0);
  }
  GrpoResult out;
  if (loss_type == "grpo") out.loss = seq_mean_sum / static_cast<double>(b_count);
  if (loss_type == "dapo") out.loss = masked_sum / std::max(mask_sum, 1.0);
  if (loss_type == "dr_grpo") {
    double length =
        static_cast<double>(max_completion_length > 0 ? max_completion_length : t_count);
    out.loss = masked_sum / (static_cast<double>(b_count) * length);
  }
  out.kl = kl_sum / std::max(mask_sum, 1.0);
  out.clip_ratio = clip_sum / std::max(mask_sum, 1.0);
  return out;
}

// Random [5, 7] inputs: ratios between about 0.6 and 1.65 (so both sides of both clips occur),
// advantages of both signs, a mask with holes and one all-masked row.
GrpoInputs RandomInputs(uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<double> u(0, 1);
  GrpoInputs in;
  in.batch = 5;
  in.time = 7;
  for (int64_t i = 0; i < in.batch * in.time; ++i) {
    double logp = -3 * u(rng);
    in.logp.push_back(logp);
    in.old_logp.push_back(logp + (u(rng) - 0.5));
    in.ref_logp.push_back(logp + 2 * (u(rng) - 0.5));
    bool masked_row = i / in.time == 3;
    in.mask.push_back(masked_row || u(rng) < 0.2 ? 0.0 : 1.0);
  }
  for (int64_t b = 0; b < in.batch; ++b) in.advantages.push_back(4 * (u(rng) - 0.5));
  return in;
}

// The inputs as an f32 tensor holds them, so a reference in double sees what the kernel sees.
GrpoInputs RoundedToF32(GrpoInputs in) {
  for (auto* v : {&in.logp, &in.old_logp, &in.ref_logp, &in.advantages, &in.mask})
    for (double& x : *v) x = static_cast<float>(x);
  return in;
}

TEST(RlGrpoLoss, MatchesTrlFormulas) {
  int clipped_cases = 0;
  for (uint64_t seed : {1, 2, 3}) {
    GrpoInputs in = RandomInputs(seed);
    for (const char* type : {"grpo", "dapo", "dr_grpo"}) {
      for (double beta : {0.0, 0.04}) {
        for (double eps_high : {0.0, 0.28}) {
          for (int64_t length : {0, 10}) {
            std::string attrs = std::string("loss_type=") + type + " beta=" + std::to_string(beta) +
                                " epsilon_high=" + std::to_string(eps_high) +
                                " max_completion_length=" + std::to_string(length);
            SCOPED_TRACE(attrs + " seed " + std::to_string(seed));
            GrpoResult want = TrlReference(in, 0.2, eps_high, beta, type, length);
            GrpoResult got = RunGrpo(in, attrs);
            EXPECT_NEAR(got.loss, want.loss, 1e-13);
            EXPECT_NEAR(got.kl, want.kl, 1e-13);
            EXPECT_NEAR(got.clip_ratio, want.clip_ratio, 1e-15);
            clipped_cases += want.clip_ratio > 0 && want.clip_ratio < 1;
            GrpoResult want32 = TrlReference(RoundedToF32(in), 0.2, eps_high, beta, type, length);
            GrpoResult got32 = RunGrpo(in, attrs, DT_F32);
            EXPECT_NEAR(got32.loss, want32.loss, 1e-6);
            EXPECT_NEAR(got32.kl, want32.kl, 1e-6);
            EXPECT_NEAR(got32.clip_ratio, want32.clip_ratio, 1e-7);
          }
        }
      }
    }
  }
  EXPECT_GT(clipped_cases, 0) << "the random inputs never mix clipped and unclipped tokens";
}

TEST(RlGrpoLoss, OutputDtypes) {
  GrpoInputs in = Unmoved();
  for (DataType dt : {DT_F32, DT_BF16, DT_F64}) {
    auto out = RunOp(GrpoCase(in, "", dt));
    ASSERT_TRUE(out.ok()) << out.status().ToString();
    for (const Tensor& t : *out) {
      EXPECT_EQ(t.dtype(), dt == DT_F64 ? DT_F64 : DT_F32);
      EXPECT_TRUE(t.shape().empty());
    }
    EXPECT_NEAR((*out)[0].At(0), -0.1, dt == DT_BF16 ? 1e-2 : 1e-7);
  }
}

// Fixed inputs for difference checks: logp − old_logp is one of ln 0.5, 0.9, 1, 1.1, 1.5, 1.25,
// 0.7, 1.3, each at least 0.02 from a clip edge (0.8, 1.2, 1.28), so a step of 1e-6 never
// crosses one and both the clipped and the unclipped branch are exercised.
GrpoInputs FiniteDifferenceInputs() {
  const double ratios[] = {0.5, 0.9, 1.0, 1.1, 1.5, 1.25, 0.7, 1.3};
  GrpoInputs in;
  in.batch = 3;
  in.time = 4;
  std::mt19937_64 rng(11);
  std::uniform_real_distribution<double> u(0, 1);
  for (int64_t i = 0; i < in.batch * in.time; ++i) {
    double logp = -0.1 - 2 * u(rng);
    in.logp.push_back(logp);
    in.old_logp.push_back(logp - std::log(ratios[i % 8]));
    in.ref_logp.push_back(logp + (u(rng) - 0.5));
  }
  in.advantages = {1.3, -0.7, 0.4};
  in.mask = {1, 1, 1, 0, 1, 1, 1, 1, 1, 0, 1, 1};
  return in;
}

TEST(RlGrpoLoss, Gradient) {
  GrpoInputs in = FiniteDifferenceInputs();
  for (const char* type : {"grpo", "dapo", "dr_grpo"}) {
    for (const char* extra : {"", " beta=0.05", " epsilon_high=0.28 beta=0.3"}) {
      std::string attrs = std::string("loss_type=") + type + extra;
      SCOPED_TRACE(attrs);
      GrpoResult r = RunGrpo(in, attrs);
      EXPECT_GT(r.clip_ratio, 0.0);  // the clip holds somewhere
      EXPECT_LT(r.clip_ratio, 1.0);  // and somewhere it does not
      EXPECT_EQ(CheckGradients(GrpoCase(in, attrs)), 12);
    }
  }
}

TEST(RlGrpoLoss, OnlyLogpIsDifferentiated) {
  // TRL detaches old and reference log-probabilities, advantages and the mask: a program that
  // asks for their gradients builds and gets zeros. kl and clip_ratio are metrics.
  GrpoInputs in = FiniteDifferenceInputs();
  auto detached = InputGrads(GrpoCase(in, "beta=0.1"), 0, {1, 2, 3, 4});
  ASSERT_TRUE(detached.ok()) << detached.status().ToString();
  ASSERT_EQ(detached->size(), 4u);
  for (const Tensor& g : *detached)
    for (double v : g.ToVector()) EXPECT_EQ(v, 0.0);
  for (int metric : {1, 2}) {
    auto grads = InputGrads(GrpoCase(in, "beta=0.1"), metric, {0});
    ASSERT_TRUE(grads.ok()) << grads.status().ToString();
    for (double v : (*grads)[0].ToVector()) EXPECT_EQ(v, 0.0);
  }
}

TEST(RlGrpoLoss, Errors) {
  GrpoInputs in = Unmoved();
  OpCase c = GrpoCase(in, "");
  c.inputs[3] = F64({2, 3});  // advantages per token instead of per sequence
  c.values[3] = in.mask;
  auto per_token = RunOp(c);
  ASSERT_FALSE(per_token.ok());
  EXPECT_NE(per_token.status().ToString().find("advantages must be f64[2]"), std::string::npos)
      << per_token.status().ToString();
  c = GrpoCase(in, "");
  c.inputs[4] = Of(DT_F32, {2, 3});
  auto mixed = RunOp(c);
  ASSERT_FALSE(mixed.ok());
  EXPECT_NE(mixed.status().ToString().find("mask must be f64[2, 3]"), std::string::npos)
      << mixed.status().ToString();
  auto unknown = RunOp(GrpoCase(in, "loss_type=ppo"));
  ASSERT_FALSE(unknown.ok());
  EXPECT_NE(unknown.status().ToString().find("loss_type"), std::string::npos)
      << unknown.status().ToString();
  auto negative = RunOp(GrpoCase(in, "beta=-1"));
  EXPECT_FALSE(negative.ok());
}

// ---------------------------------------------------------------------------------------------
// GroupAdvantages

constexpr double kStdEps = 1e-4;  // TRL's, added to the std before dividing

TEST(RlGroupAdvantages, EachScale) {
  // Group 1: {1, 0, 0, 1}, mean 1/2, unbiased variance (4 · 1/4) / 3 = 1/3.
  // Group 2: all 0, so its advantages are 0 in every mode.
  // Batch: mean 1/4, Σ (r − 1/4)² = 2 · 9/16 + 6 · 1/16 = 3/2, variance 3/2 / 7 = 3/14.
  const std::vector<double> rewards = {1, 0, 0, 1, 0, 0, 0, 0};
  const double group_std = std::sqrt(1.0 / 3), batch_std = std::sqrt(3.0 / 14);
  struct Expected {
    const char* scale;
    double divisor;
  };
  for (Expected e : {Expected{"group", group_std + kStdEps}, Expected{"batch", batch_std + kStdEps},
                     Expected{"none", 1.0}}) {
    SCOPED_TRACE(e.scale);
    auto r = GroupAdvantages(rewards, 4, e.scale);
    ASSERT_TRUE(r.ok()) << r.status().ToString();
    std::vector<double> want = {0.5, -0.5, -0.5, 0.5, 0, 0, 0, 0};
    ASSERT_EQ(r->advantages.size(), want.size());
    for (size_t i = 0; i < want.size(); ++i)
      EXPECT_NEAR(r->advantages[i], want[i] / e.divisor, 1e-14) << i;
    for (size_t i = 4; i < 8; ++i) EXPECT_EQ(r->advantages[i], 0.0);
    EXPECT_NEAR(r->reward_mean, 0.25, 1e-15);
    EXPECT_NEAR(r->reward_std, (group_std + 0) / 2, 1e-15);  // mean of the groups' stds
    EXPECT_NEAR(r->reward_batch_std, batch_std, 1e-15);
    EXPECT_EQ(r->frac_reward_zero_std, 0.5);
  }
}

TEST(RlGroupAdvantages, UnbiasedStd) {
  // {1, 2, 3}: mean 2, Σ (r − 2)² = 2, over n − 1 = 2 gives std 1 (the biased std is 0.816).
  auto r = GroupAdvantages({1, 2, 3, 10, 10, 13}, 3, "group");
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_NEAR(r->advantages[0], -1 / (1 + kStdEps), 1e-14);
  EXPECT_NEAR(r->advantages[1], 0.0, 1e-15);
  EXPECT_NEAR(r->advantages[2], 1 / (1 + kStdEps), 1e-14);
  // {10, 10, 13}: mean 11, Σ = 1 + 1 + 4 = 6, std √3.
  EXPECT_NEAR(r->advantages[3], -1 / (std::sqrt(3.0) + kStdEps), 1e-14);
  EXPECT_NEAR(r->advantages[5], 2 / (std::sqrt(3.0) + kStdEps), 1e-14);
  EXPECT_NEAR(r->reward_std, (1 + std::sqrt(3.0)) / 2, 1e-14);
  EXPECT_EQ(r->frac_reward_zero_std, 0.0);
}

TEST(RlGroupAdvantages, ConstantGroupsGiveExactlyZero) {
  // 0.1 three times does not average to exactly 0.1 in binary; the advantages are still 0,
  // not ±1e-17 / 1e-4.
  auto r = GroupAdvantages({0.1, 0.1, 0.1, 1, 1, 1}, 3, "group");
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  for (double a : r->advantages) EXPECT_EQ(a, 0.0);
  EXPECT_EQ(r->frac_reward_zero_std, 1.0);
  EXPECT_EQ(r->reward_std, 0.0);
  // One completion per group: nothing to compare with.
  auto single = GroupAdvantages({0.3, 0.9}, 1, "group");
  ASSERT_TRUE(single.ok()) << single.status().ToString();
  EXPECT_EQ(single->advantages, (std::vector<double>{0, 0}));
  EXPECT_EQ(single->frac_reward_zero_std, 1.0);
  EXPECT_NEAR(single->reward_batch_std, std::sqrt(0.18), 1e-15);  // (0.3² · 2) / 1
}

TEST(RlGroupAdvantages, Errors) {
  auto expect_error = [](const StatusOr<GroupAdvantagesResult>& r, const std::string& text) {
    ASSERT_FALSE(r.ok()) << text;
    EXPECT_NE(r.status().ToString().find(text), std::string::npos) << r.status().ToString();
  };
  expect_error(GroupAdvantages({1, 2, 3, 4, 5}, 2, "group"),
               "5 rewards do not split into groups of 2");
  expect_error(GroupAdvantages({1, 2}, 0, "group"), "group_size must be at least 1");
  expect_error(GroupAdvantages({1, 2}, 2, "rank"), "scale must be group, batch or none");
  expect_error(GroupAdvantages({}, 2, "group"), "no rewards");
  expect_error(GroupAdvantages({1, std::nan("")}, 2, "none"), "reward 1 is");
}

}  // namespace
}  // namespace weir::testing
