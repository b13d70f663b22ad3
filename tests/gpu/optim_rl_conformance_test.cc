// The CUDA kernels of the optim, rl and reward plugins against the CPU kernels: the fused AdamW
// and SGD updates (f32 and f64 masters, f32/bf16/f64 gradients), the per-token log-probabilities
// and entropies over vocabularies from 1 to past several blocks' worth, GRPO's loss in every
// aggregation, and the Bradley-Terry loss; gradients differentiated on cuda against the CPU,
// which runs the Grad ops' (and rl.ZerosLike's) cuda kernels.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <utility>
#include <vector>

#include "weir/testing/gpu.h"
#include "weir/testing/op_check.h"

namespace weir::testing {
namespace {

// Values in (0, 1]: second moments, which are never negative.
std::vector<double> Positive(int64_t n) {
  std::vector<double> v;
  for (int64_t i = 0; i < n; ++i) v.push_back(static_cast<double>((i * 37) % 101 + 1) / 101.0);
  return v;
}

// ---- optim.AdamW, optim.SGD -------------------------------------------------------------------

// One element, one block and one, several blocks.
const std::vector<Shape>& ParamShapes() {
  static const std::vector<Shape> shapes = {{1}, {257}, {3, 1001}};
  return shapes;
}

TEST(OptimCuda, AdamW) {
  WEIR_REQUIRE_GPU();
  for (DataType param : {DT_F32, DT_F64}) {
    double tolerance = param == DT_F32 ? 1e-4 : 1e-9;
    for (DataType grad : {DT_F32, DT_BF16, DT_F64}) {
      for (const Shape& s : ParamShapes()) {
        for (const char* attrs : {"", "lr=0.01 weight_decay=0.05 step=7 grad_scale=0.5",
                                  "beta1=0.8 beta2=0.99 eps=1e-6 weight_decay=0 step=1000"}) {
          ExpectCudaConformance({"optim.AdamW",
                                 attrs,
                                 {{param, s}, {grad, s}, {param, s}, {param, s}},
                                 {{3, Positive(NumElements(s))}}},
                                tolerance);
        }
      }
    }
  }
}

TEST(OptimCuda, Sgd) {
  WEIR_REQUIRE_GPU();
  for (DataType param : {DT_F32, DT_F64}) {
    double tolerance = param == DT_F32 ? 1e-4 : 1e-9;
    for (DataType grad : {DT_F32, DT_BF16, DT_F64}) {
      for (const Shape& s : ParamShapes()) {
        for (const char* attrs : {"", "lr=0.1 momentum=0.5 weight_decay=0.01 nesterov=true",
                                  "momentum=0 grad_scale=0.25"}) {
          ExpectCudaConformance({"optim.SGD", attrs, {{param, s}, {grad, s}, {param, s}}},
                                tolerance);
        }
      }
    }
  }
}

// ---- rl.TokenLogProbs -------------------------------------------------------------------------

// Targets for `rows` positions of a vocabulary: every 4th position ignored (-100), the others
// spread over the vocabulary, the first and last ids included.
std::vector<double> Targets(int64_t rows, int64_t vocab) {
  std::vector<double> t;
  for (int64_t r = 0; r < rows; ++r) {
    if (r % 4 == 3)
      t.push_back(-100);
    else if (r == 0)
      t.push_back(static_cast<double>(vocab - 1));
    else
      t.push_back(static_cast<double>((r * 7919) % vocab));
  }
  return t;
}

struct LogProbShape {
  Shape rows;
  int64_t vocab;
};
// A vocabulary of one, fewer ids than a block's threads, one past a block, several blocks per
// row, and a [batch, time] layout.
const std::vector<LogProbShape>& LogProbShapes() {
  static const std::vector<LogProbShape> shapes = {
      {{4}, 1}, {{5}, 7}, {{9}, 513}, {{3}, 70001}, {{2, 6}, 1000}};
  return shapes;
}

OpCase LogProbs(const LogProbShape& s, DataType logits, DataType ids) {
  Shape full = s.rows;
  full.push_back(s.vocab);
  return {"rl.TokenLogProbs",
          "",
          {{logits, full}, {ids, s.rows}},
          {{1, Targets(NumElements(s.rows), s.vocab)}}};
}

TEST(RlCuda, TokenLogProbsForward) {
  WEIR_REQUIRE_GPU();
  for (const DtypeTolerance& f : GpuTolerances()) {
    for (const LogProbShape& s : LogProbShapes()) {
      double tolerance = f.dtype == DT_F32 && s.vocab > 10000 ? 1e-3 : f.tolerance;
      // Computed in f32 from bf16 logits: the outputs are f32, but the rounding of the inputs is
      // the same on both devices, so f32's tolerance holds.
      if (f.dtype == DT_BF16) tolerance = 1e-4;
      ExpectCudaConformance(LogProbs(s, f.dtype, DT_I64), tolerance);
    }
  }
  ExpectCudaConformance(LogProbs({{9}, 513}, DT_F16, DT_I64), 1e-4);
  ExpectCudaConformance(LogProbs({{2, 6}, 1000}, DT_F32, DT_I32), 1e-4);
  // A custom ignore_index, and a logit of -inf (a masked token), which adds 0 to the entropy.
  std::vector<double> masked = {0.5, -INFINITY, 1.0, -0.25, -INFINITY, 0.0};
  ExpectCudaConformance({"rl.TokenLogProbs",
                         "ignore_index=1",
                         {{DT_F32, {2, 3}}, {DT_I64, {2}}},
                         {{0, masked}, {1, {0, 2}}}},
                        1e-4);
}

TEST(RlCuda, TokenLogProbsGradients) {
  WEIR_REQUIRE_GPU();
  for (const LogProbShape& s : LogProbShapes()) {
    ExpectCudaGradients(LogProbs(s, DT_F64, DT_I64), 1e-9);
    ExpectCudaGradients(LogProbs(s, DT_F32, DT_I64), 1e-4);
  }
  // The gradient op on its own, in every logits dtype, with some dlogp exactly 0.
  for (DataType t : {DT_F32, DT_BF16, DT_F16, DT_F64}) {
    DataType loss = t == DT_F64 ? DT_F64 : DT_F32;
    double tolerance = t == DT_F64 ? 1e-9 : t == DT_F32 ? 1e-4 : 2e-2;
    std::vector<double> dlogp = {0.5, 0, -1.25, 2, 0.75, -0.5, 0, 1};
    ExpectCudaConformance({"rl.TokenLogProbsGrad",
                           "",
                           {{t, {8, 300}}, {DT_I64, {8}}, {loss, {8}}},
                           {{1, Targets(8, 300)}, {2, dlogp}}},
                          tolerance);
  }
}

// ---- rl.GRPOLoss --------------------------------------------------------------------------------

// Masks with completions of different lengths (a row of zeros included when batch > 2).
std::vector<double> Mask(int64_t batch, int64_t time) {
  std::vector<double> m;
  for (int64_t b = 0; b < batch; ++b) {
    int64_t length = b == 2 ? 0 : 1 + (b * 5 + 3) % time;
    for (int64_t t = 0; t < time; ++t) m.push_back(t < length ? 1.0 : 0.0);
  }
  return m;
}

OpCase Grpo(const std::string& attrs, int64_t batch, int64_t time, DataType t) {
  Shape bt = {batch, time};
  return {"rl.GRPOLoss",
          attrs,
          {{t, bt}, {t, bt}, {t, bt}, {t, {batch}}, {t, bt}},
          {{4, Mask(batch, time)}}};
}

const std::vector<std::string>& GrpoAttrs() {
  static const std::vector<std::string> attrs = {
      "", "loss_type=grpo beta=0.04", "loss_type=dr_grpo max_completion_length=9",
      "loss_type=dr_grpo", "epsilon=0.1 epsilon_high=0.28 beta=0.1"};
  return attrs;
}

TEST(RlCuda, GrpoLossForward) {
  WEIR_REQUIRE_GPU();
  for (const DtypeTolerance& f : GpuTolerances()) {
    double tolerance = f.dtype == DT_BF16 ? 1e-4 : f.tolerance;  // f64 sums of the same inputs
    for (const std::string& attrs : GrpoAttrs()) {
      ExpectCudaConformance(Grpo(attrs, 1, 1, f.dtype), tolerance);
      ExpectCudaConformance(Grpo(attrs, 3, 7, f.dtype), tolerance);
      ExpectCudaConformance(Grpo(attrs, 40, 300, f.dtype), tolerance);
    }
  }
  ExpectCudaConformance(Grpo("beta=0.04", 3, 7, DT_F16), 1e-4);
}

TEST(RlCuda, GrpoLossGradients) {
  WEIR_REQUIRE_GPU();
  for (const std::string& attrs : GrpoAttrs()) {
    // Every input: logp's gradient from rl.GRPOLossGrad, the others' (zeros) from rl.ZerosLike.
    ExpectCudaGradients(Grpo(attrs, 3, 7, DT_F64), 1e-9);
    ExpectCudaGradients(Grpo(attrs, 40, 300, DT_F32), 1e-4);
  }
  // Only a metric used: the loss takes no gradient.
  OpCase metric = Grpo("beta=0.04", 3, 7, DT_F64);
  metric.output = 1;
  ExpectCudaGradients(metric, 1e-9);
  // The gradient op on its own, with its scalar seed.
  for (DataType t : {DT_F32, DT_BF16, DT_F64}) {
    OpCase c = Grpo("loss_type=grpo beta=0.04", 5, 11, t);
    c.op = "rl.GRPOLossGrad";
    c.inputs.push_back({t == DT_F64 ? DT_F64 : DT_F32, {}});
    c.values[5] = {0.75};
    ExpectCudaConformance(c, t == DT_F64 ? 1e-9 : t == DT_F32 ? 1e-4 : 2e-2);
  }
}

TEST(RlCuda, ZerosLike) {
  WEIR_REQUIRE_GPU();
  for (DataType t : {DT_F32, DT_BF16, DT_F64, DT_I64, DT_I32, DT_U8})
    for (const Shape& s : {Shape{1}, Shape{3, 5}, Shape{1001}})
      ExpectCudaConformance({"rl.ZerosLike", "", {{t, s}}, {{0, Positive(NumElements(s))}}}, 0);
}

// ---- reward.BradleyTerryLoss --------------------------------------------------------------------

TEST(RewardCuda, BradleyTerryLoss) {
  WEIR_REQUIRE_GPU();
  for (DataType t : {DT_F32, DT_BF16, DT_F16, DT_F64}) {
    double tolerance = t == DT_F64 ? 1e-9 : 1e-4;  // f64 sums of the same inputs
    for (int64_t rows : {2, 10, 6000})
      ExpectCudaConformance({"reward.BradleyTerryLoss", "", {{t, {rows}}}}, tolerance);
    // Large margins of both signs (softplus without overflow) and a tie (not a win).
    ExpectCudaConformance(
        {"reward.BradleyTerryLoss", "", {{t, {8}}}, {{0, {40, -40, 3, 0.5, -40, 40, -3, 0.5}}}},
        tolerance);
  }
}

TEST(RewardCuda, BradleyTerryLossGradients) {
  WEIR_REQUIRE_GPU();
  for (int64_t rows : {2, 10, 6000}) {
    ExpectCudaGradients({"reward.BradleyTerryLoss", "", {{DT_F64, {rows}}}}, 1e-9);
    ExpectCudaGradients({"reward.BradleyTerryLoss", "", {{DT_F32, {rows}}}}, 1e-4);
  }
  // Only the accuracy used: the gradient op runs detached (zeros).
  OpCase accuracy{"reward.BradleyTerryLoss", "", {{DT_F64, {10}}}};
  accuracy.output = 1;
  ExpectCudaGradients(accuracy, 1e-9);
  // The gradient op on its own, in every scores dtype.
  for (DataType t : {DT_F32, DT_BF16, DT_F16, DT_F64}) {
    DataType loss = t == DT_F64 ? DT_F64 : DT_F32;
    double tolerance = t == DT_F64 ? 1e-9 : t == DT_F32 ? 1e-4 : 2e-2;
    for (const char* attrs : {"", "detached=true"}) {
      ExpectCudaConformance(
          {"reward.BradleyTerryLossGrad", attrs, {{t, {10}}, {loss, {}}}, {{1, {1.5}}}}, tolerance);
    }
  }
}

}  // namespace
}  // namespace weir::testing
