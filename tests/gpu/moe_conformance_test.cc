// The moe plugin's CUDA kernels against the CPU kernels: the router (groups, bias, softmax and
// sigmoid, ties), the balance loss and bias update, the routed experts forward and backward
// (skewed loads, idle experts, unused slots, sizes off the GEMM tiles, more rows than a tile),
// and expert parallelism alone and over two ranks of in-process communicators on one GPU.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "weir/runtime/communicator.h"
#include "weir/runtime/world.h"
#include "weir/testing/gpu.h"
#include "weir/testing/op_check.h"

namespace weir::testing {
namespace {

std::string Name(DataType t) { return DataTypeName(t); }

// ---- moe.Router -----------------------------------------------------------------------------

// Rows past a block of warps, a DeepSeek-V3-sized router (256 experts in 8 groups, K = 8), a
// single expert, a 3-D batch.
struct RouterCase {
  Shape shape;
  std::string attrs;
  bool bias;
};
const std::vector<RouterCase>& RouterCases() {
  static const std::vector<RouterCase> cases = {
      {{37, 16}, "num_experts_per_tok=3 n_group=4 topk_group=2 routed_scaling_factor=2.5", true},
      {{37, 16}, "num_experts_per_tok=3 n_group=4 topk_group=2", false},
      {{5, 6}, "num_experts_per_tok=2 scoring_func=softmax norm_topk_prob=false", false},
      {{5, 6}, "num_experts_per_tok=3 scoring_func=softmax", true},
      {{70, 256}, "num_experts_per_tok=8 n_group=8 topk_group=4 routed_scaling_factor=2.5", true},
      {{1, 1}, "num_experts_per_tok=1", false},
      {{2, 3, 40}, "num_experts_per_tok=33 scoring_func=softmax", false},  // K past a warp
  };
  return cases;
}

OpCase Router(const RouterCase& r, DataType t) {
  OpCase c{"moe.Router", r.attrs, {{t, r.shape}}};
  if (r.bias) {
    c.inputs.push_back({DT_F32, {r.shape.back()}});
    c.no_grad = {1};
  }
  return c;
}

TEST(MoeCuda, RouterForward) {
  WEIR_REQUIRE_GPU();
  for (const DtypeTolerance& f : GpuTolerances())
    for (const RouterCase& r : RouterCases())
      ExpectCudaConformance(Router(r, f.dtype), f.tolerance);
}

// Equal logits tie: the lower expert index wins, in the groups' ranking and in the top-K.
TEST(MoeCuda, RouterTiesBreakToTheLowerIndex) {
  WEIR_REQUIRE_GPU();
  std::vector<double> logits = {0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5,  // all equal
                                1.0, 0.0, 1.0, 0.0, 0.0, 1.0, 0.0, 1.0,  // equal groups
                                -1,  2,   2,   -1,  2,   -1,  -1,  2};
  for (const DtypeTolerance& f : GpuTolerances()) {
    DataType t = f.dtype;
    for (const char* attrs :
         {"num_experts_per_tok=3 n_group=4 topk_group=2", "num_experts_per_tok=4",
          "num_experts_per_tok=2 scoring_func=softmax"}) {
      ExpectCudaConformance({"moe.Router", attrs, {{t, {3, 8}}}, {{0, logits}}}, f.tolerance);
      OpCase biased{"moe.Router",
                    attrs,
                    {{t, {3, 8}}, {DT_F32, {8}}},
                    {{0, logits}, {1, {0, 0.25, 0, 0.25, 0, 0, 0.25, 0.25}}}};
      ExpectCudaConformance(biased, f.tolerance);  // indices exactly: they differ by 1 or more
    }
  }
}

TEST(MoeCuda, RouterGradients) {
  WEIR_REQUIRE_GPU();
  for (const RouterCase& r : RouterCases()) {
    ExpectCudaGradients(Router(r, DT_F64), 1e-9);
    ExpectCudaGradients(Router(r, DT_F32), 1e-4);
  }
}

// ---- moe.BalanceLoss, moe.BiasUpdate ----------------------------------------------------------

// Indices [B, T, K] spread unevenly over the experts (a fixed pattern).
std::vector<double> Routes(int64_t b, int64_t t, int64_t k, int64_t experts) {
  std::vector<double> idx;
  for (int64_t i = 0; i < b * t * k; ++i)
    idx.push_back(static_cast<double>((i * 7 + i / 5) % experts));
  return idx;
}

TEST(MoeCuda, BalanceLossForwardAndGradient) {
  WEIR_REQUIRE_GPU();
  const std::vector<std::vector<int64_t>> dims = {{2, 3, 4, 2}, {1, 1, 1, 1}, {3, 37, 64, 6}};
  for (const auto& d : dims) {
    for (const DtypeTolerance& f : GpuTolerances()) {
      OpCase c{"moe.BalanceLoss",
               "alpha=0.3",
               {{f.dtype, {d[0], d[1], d[2]}}, {DT_I64, {d[0], d[1], d[3]}}},
               {{1, Routes(d[0], d[1], d[3], d[2])}},
               {1}};
      ExpectCudaConformance(c, f.dtype == DT_BF16 ? 2e-2 : f.dtype == DT_F32 ? 1e-4 : 1e-9);
      if (f.dtype != DT_BF16) ExpectCudaGradients(c, f.dtype == DT_F32 ? 1e-4 : 1e-9);
    }
  }
  // The gradient op on its own, with its scalar seed.
  for (const DtypeTolerance& f : GpuTolerances()) {
    DataType seed = f.dtype == DT_F64 ? DT_F64 : DT_F32;
    ExpectCudaConformance({"moe.BalanceLossGrad",
                           "alpha=0.3",
                           {{f.dtype, {2, 5, 9}}, {DT_I64, {2, 5, 3}}, {seed, {}}},
                           {{1, Routes(2, 5, 3, 9)}, {2, {1.7}}}},
                          f.tolerance);
  }
}

TEST(MoeCuda, BiasUpdate) {
  WEIR_REQUIRE_GPU();
  ExpectCudaConformance({"moe.BiasUpdate",
                         "bias_update_speed=0.001",
                         {{DT_F32, {4}}, {DT_F32, {4}}},
                         {{1, {3, 2, 1.5, 0}}}},
                        1e-6);
  std::vector<double> load;
  for (int e = 0; e < 300; ++e) load.push_back(static_cast<double>((e * 37) % 11));
  ExpectCudaConformance({"moe.BiasUpdate", "", {{DT_F32, {300}}, {DT_F32, {300}}}, {{1, load}}},
                        1e-6);
  ExpectCudaConformance(
      {"moe.BiasUpdate", "", {{DT_F32, {3}}, {DT_F32, {3}}}, {{1, {0, 0, 0}}}},  // no load
      1e-6);
}

// ---- moe.Experts ----------------------------------------------------------------------------

std::string ExpertAttrs(int64_t experts, int64_t inter, DataType t) {
  return "n_routed_experts=" + std::to_string(experts) +
         " moe_intermediate_size=" + std::to_string(inter) + " T=" + Name(t);
}

// `tokens` tokens of width d, K slots each, over `experts` experts of width `inter`: mostly
// expert 1 (more rows than one GEMM tile when tokens > 64), the last expert idle (a token may
// name an expert twice, which the ops allow).
OpCase Experts(const char* op, int64_t tokens, int64_t d, int64_t k, int64_t experts, int64_t inter,
               DataType t) {
  std::vector<double> idx;
  for (int64_t i = 0; i < tokens; ++i) {
    for (int64_t q = 0; q < k; ++q) {
      int64_t e = q == 0 && i % 3 != 0 ? 1 : (i * 5 + q * 3) % std::max<int64_t>(1, experts - 1);
      idx.push_back(static_cast<double>(e));
    }
  }
  return {op,
          ExpertAttrs(experts, inter, t) + " init_std=0.3 out_std=0.3",
          {{t, {tokens, d}}, {t, {tokens, k}}, {DT_I64, {tokens, k}}},
          {{2, idx}}};
}

struct ExpertShape {
  int64_t tokens, d, k, experts, inter;
};
const std::vector<ExpertShape>& ExpertShapes() {
  static const std::vector<ExpertShape> shapes = {
      {1, 1, 1, 1, 1},      // one of everything
      {8, 4, 2, 5, 3},      // tiny, expert 4 idle
      {300, 8, 2, 4, 6},    // expert 1 takes more rows than a 64-row tile
      {100, 70, 3, 7, 33},  // d and I off the 64 and 16 of the tiles
      {129, 64, 2, 3, 64},  // exact tiles, rows one past two tiles
  };
  return shapes;
}

TEST(MoeCuda, ExpertsForward) {
  WEIR_REQUIRE_GPU();
  for (const DtypeTolerance& f : GpuTolerances()) {
    for (const ExpertShape& s : ExpertShapes()) {
      ExpectCudaNearCpu(Experts("moe.Experts", s.tokens, s.d, s.k, s.experts, s.inter, f.dtype),
                        f.tolerance);
    }
  }
  // Tokens as [2, 4, d].
  OpCase batched{"moe.Experts",
                 ExpertAttrs(5, 3, DT_F32),
                 {{DT_F32, {2, 4, 4}}, {DT_F32, {2, 4, 2}}, {DT_I64, {2, 4, 2}}},
                 {{2, {2, 0, 2, 1, 0, 2, 2, 3, 1, 2, 2, 2, 3, 0, 2, 1}}}};
  ExpectCudaNearCpu(batched, 1e-4);
}

// A slot of -1 is skipped. The CPU leaves the rows of h past the used slots unwritten: compare y
// and the used rows of h.
TEST(MoeCuda, ExpertsSkipUnusedSlots) {
  WEIR_REQUIRE_GPU();
  std::vector<double> idx = {1, -1, -1, 0, 2, 1, -1, -1, 0, 2};
  for (const DtypeTolerance& f : GpuTolerances()) {
    OpCase c{"moe.Experts",
             ExpertAttrs(3, 5, f.dtype),
             {{f.dtype, {5, 6}}, {f.dtype, {5, 2}}, {DT_I64, {5, 2}}},
             {{2, idx}}};
    ExpectCudaNearCpu(c, f.tolerance, 1e-2, {-1, 6});
  }
}

TEST(MoeCuda, ExpertsGradOpsForward) {
  WEIR_REQUIRE_GPU();
  for (const DtypeTolerance& f : GpuTolerances()) {
    for (const ExpertShape& s : ExpertShapes()) {
      OpCase forward = Experts("moe.Experts", s.tokens, s.d, s.k, s.experts, s.inter, f.dtype);
      DataType t = f.dtype;
      int64_t slots = s.tokens * s.k;
      // moe.ExpertsGrad: weights, indices, w1, w3, w2, h, dy (any values: the kernels only
      // evaluate formulas of them).
      OpCase grad{"moe.ExpertsGrad",
                  "",
                  {{t, {s.tokens, s.k}},
                   {DT_I64, {s.tokens, s.k}},
                   {t, {s.experts, s.inter, s.d}},
                   {t, {s.experts, s.inter, s.d}},
                   {t, {s.experts, s.d, s.inter}},
                   {t, {slots, 2 * s.inter}},
                   {t, {s.tokens, s.d}}},
                  {{1, forward.values[2]}}};
      ExpectCudaNearCpu(grad, f.tolerance);
      // moe.ExpertsWeightGrad: x, weights, indices, h, dh, dy.
      OpCase weight{"moe.ExpertsWeightGrad",
                    "n_routed_experts=" + std::to_string(s.experts),
                    {{t, {s.tokens, s.d}},
                     {t, {s.tokens, s.k}},
                     {DT_I64, {s.tokens, s.k}},
                     {t, {slots, 2 * s.inter}},
                     {t, {slots, 2 * s.inter}},
                     {t, {s.tokens, s.d}}},
                    {{2, forward.values[2]}}};
      ExpectCudaNearCpu(weight, f.tolerance);
    }
  }
}

TEST(MoeCuda, ExpertsGradients) {
  WEIR_REQUIRE_GPU();
  for (const ExpertShape& s : ExpertShapes()) {
    ExpectCudaGradients(Experts("moe.Experts", s.tokens, s.d, s.k, s.experts, s.inter, DT_F64),
                        1e-9);
    // f32 where the weight gradients sum fewer rows: a long f32 sum that cancels to near zero
    // would exceed the check's absolute floor (tolerance · 1e-3) by rounding alone.
    if (s.tokens <= 100) {
      ExpectCudaGradients(Experts("moe.Experts", s.tokens, s.d, s.k, s.experts, s.inter, DT_F32),
                          1e-3);
    }
  }
}

// ---- moe.ExpertsParallel --------------------------------------------------------------------

// Without a shard group the parallel ops are moe.Experts (h zeros).
TEST(MoeCuda, ExpertsParallelAlone) {
  WEIR_REQUIRE_GPU();
  for (const DtypeTolerance& f : GpuTolerances()) {
    for (const ExpertShape& s : ExpertShapes()) {
      OpCase c = Experts("moe.ExpertsParallel", s.tokens, s.d, s.k, s.experts, s.inter, f.dtype);
      ExpectCudaNearCpu(c, f.tolerance);
      DataType t = f.dtype;
      OpCase grad{"moe.ExpertsParallelGrad",
                  "",
                  {{t, {s.tokens, s.d}},
                   {t, {s.tokens, s.k}},
                   {DT_I64, {s.tokens, s.k}},
                   {t, {s.experts, s.inter, s.d}},
                   {t, {s.experts, s.inter, s.d}},
                   {t, {s.experts, s.d, s.inter}},
                   {t, {s.tokens, s.d}}},
                  {{2, c.values[2]}}};
      ExpectCudaNearCpu(grad, f.tolerance);
    }
  }
  ExpectCudaGradients(Experts("moe.ExpertsParallel", 30, 6, 2, 4, 5, DT_F64), 1e-9);
}

// Two ranks of in-process communicators on one GPU (the exchanges go through the host): every
// token's loss contribution, dx and dweights as one rank's moe.Experts on the CPU; the experts'
// gradients, summed over the ranks, as well.
TEST(MoeCuda, ExpertsParallelOverTwoRanks) {
  WEIR_REQUIRE_GPU();
  constexpr int64_t kTokens = 24, kDim = 6, kSlots = 3;
  constexpr int kRanks = 2;
  std::vector<double> idx;
  for (int64_t t = 0; t < kTokens; ++t)
    for (int64_t q = 0; q < kSlots; ++q) idx.push_back(static_cast<double>((t * 3 + q * 5) % 7));
  auto build = [&](const std::string& op, int64_t tokens,
                   const std::string& device) -> StatusOr<std::shared_ptr<const Program>> {
    OpCase c{op,
             "n_routed_experts=8 moe_intermediate_size=4 init_std=0.4 out_std=0.4 T=f64",
             {{DT_F64, {tokens, kDim}}, {DT_F64, {tokens, kSlots}}, {DT_I64, {tokens, kSlots}}}};
    WEIR_ASSIGN_OR_RETURN(Graph g, OpGraph(c, true));
    std::vector<TensorType> types = c.inputs;
    types.push_back({DT_F64, {tokens, kDim}});
    ProgramOptions options;
    options.loss = "loss";
    options.input_grads = {"x0", "x1"};
    options.device = device;
    return Program::Build(g, "F", {}, types, TestRegistry(), options);
  };
  OpCase shapes{"", "", {{DT_F64, {kTokens, kDim}}, {DT_F64, {kTokens, kSlots}}}};
  std::vector<Tensor> random = CaseInputs(shapes);
  Tensor x = random[0], weights = random[1],
         indices = Tensor::FromValues(DT_I64, {kTokens, kSlots}, idx);
  OpCase r_case{"", "", {{DT_F64, {kTokens, kDim}}}};
  r_case.seed = 5;
  Tensor r = CaseInputs(r_case)[0];

  auto whole = build("moe.Experts", kTokens, "cpu");
  ASSERT_TRUE(whole.ok()) << whole.status().ToString();
  ParamStore params;
  params.Initialize((*whole)->params(), 7);
  auto want = (*whole)->Run({x, weights, indices, r}, params);
  ASSERT_TRUE(want.ok()) << want.status().ToString();

  int64_t each = kTokens / kRanks;
  auto shard = build("moe.ExpertsParallel", each, "cuda");
  ASSERT_TRUE(shard.ok()) << shard.status().ToString();
  auto comms = MakeLocalCommunicators(kRanks, {.timeout_s = 60});
  std::vector<StatusOr<Program::Outputs>> outs(kRanks,
                                               StatusOr<Program::Outputs>(Internal("not run")));
  std::vector<std::thread> threads;
  for (int k = 0; k < kRanks; ++k) {
    threads.emplace_back([&, k] {
      ShardGroupScope group(comms[static_cast<size_t>(k)].get());
      auto rows = [&](const Tensor& t) {
        return t.Slice(0, k * each, (k + 1) * each).Contiguous();
      };
      outs[static_cast<size_t>(k)] =
          (*shard)->Run({rows(x), rows(weights), rows(indices), rows(r)}, params);
    });
  }
  for (std::thread& t : threads) t.join();
  double loss = 0;
  std::map<std::string, std::vector<double>> sums;
  for (int k = 0; k < kRanks; ++k) {
    auto& out = outs[static_cast<size_t>(k)];
    ASSERT_TRUE(out.ok()) << "rank " << k << ": " << out.status().ToString();
    loss += out->values[0].At(0);
    for (int i = 0; i < 2; ++i) {
      std::vector<double> got = out->input_grads[static_cast<size_t>(i)].ToVector(),
                          full = want->input_grads[static_cast<size_t>(i)]
                                     .Slice(0, k * each, (k + 1) * each)
                                     .Contiguous()
                                     .ToVector();
      ASSERT_EQ(got.size(), full.size());
      for (size_t q = 0; q < got.size(); ++q)
        EXPECT_NEAR(got[q], full[q], 1e-9 * (1 + std::abs(full[q])))
            << "input " << i << "[" << q << "]";
    }
    for (const auto& [name, g] : out->param_grads) {
      std::vector<double> v = g.ToVector();
      auto& s = sums[name];
      s.resize(v.size(), 0.0);
      for (size_t q = 0; q < v.size(); ++q) s[q] += v[q];
    }
  }
  EXPECT_NEAR(loss, want->values[0].At(0), 1e-9 * (1 + std::abs(loss)));
  for (const auto& [name, g] : want->param_grads) {
    std::vector<double> w = g.ToVector();
    ASSERT_EQ(sums[name].size(), w.size()) << name;
    for (size_t q = 0; q < w.size(); ++q)
      EXPECT_NEAR(sums[name][q], w[q], 1e-9 * (1 + std::abs(w[q]))) << name << "[" << q << "]";
  }
}

}  // namespace
}  // namespace weir::testing
