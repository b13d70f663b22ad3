// moe.Experts (the routed experts of DeepSeekMoE, ../shared/spec/deepseek.md §3.1) against a
// naive double-precision loop per token and slot; its B/W gradients against finite differences;
// bf16 against f32; bitwise reproducibility; and its errors.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <random>
#include <sstream>

#include "weir/testing/op_check.h"

namespace weir::testing {
namespace {

TensorType Typed(DataType t, Shape s) { return {t, std::move(s)}; }
TensorType F64(Shape s) { return {DT_F64, std::move(s)}; }
TensorType I64(Shape s) { return {DT_I64, std::move(s)}; }

std::vector<double> Random(size_t n, double scale, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> dist(0, scale);
  std::vector<double> v(n);
  for (double& x : v) x = dist(rng);
  return v;
}

struct Experts {
  int64_t e, i, d;
  std::vector<double> w1, w3, w2;  // [E, I, d], [E, I, d], [E, d, I]
};

Experts MakeExperts(int64_t e, int64_t i, int64_t d, uint64_t seed) {
  size_t n = static_cast<size_t>(e * i * d);
  return {e, i, d, Random(n, 0.4, seed), Random(n, 0.4, seed + 1), Random(n, 0.4, seed + 2)};
}

ParamStore Params(const Experts& ex) {
  ParamStore p;
  p.Set("op.w1", Tensor::FromValues(DT_F64, {ex.e, ex.i, ex.d}, ex.w1));
  p.Set("op.w3", Tensor::FromValues(DT_F64, {ex.e, ex.i, ex.d}, ex.w3));
  p.Set("op.w2", Tensor::FromValues(DT_F64, {ex.e, ex.d, ex.i}, ex.w2));
  return p;
}

// The pre-activations w1[e]·x and w3[e]·x of one token.
std::pair<std::vector<double>, std::vector<double>> GateUp(const Experts& ex, int64_t e,
                                                           const double* x) {
  std::vector<double> gate(static_cast<size_t>(ex.i)), up(static_cast<size_t>(ex.i));
  for (int64_t j = 0; j < ex.i; ++j) {
    for (int64_t c = 0; c < ex.d; ++c) {
      gate[static_cast<size_t>(j)] += ex.w1[static_cast<size_t>((e * ex.i + j) * ex.d + c)] * x[c];
      up[static_cast<size_t>(j)] += ex.w3[static_cast<size_t>((e * ex.i + j) * ex.d + c)] * x[c];
    }
  }
  return {gate, up};
}

// y_t = Σ_k w[t,k] · w2[e](silu(w1[e] x_t) ⊙ w3[e] x_t), one token and one slot at a time.
std::vector<double> Reference(const Experts& ex, const std::vector<double>& x,
                              const std::vector<double>& w, const std::vector<double>& idx,
                              int64_t k) {
  int64_t n = static_cast<int64_t>(x.size()) / ex.d;
  std::vector<double> y(x.size(), 0.0);
  for (int64_t t = 0; t < n; ++t) {
    for (int64_t s = 0; s < k; ++s) {
      int64_t e = static_cast<int64_t>(idx[static_cast<size_t>(t * k + s)]);
      auto [gate, up] = GateUp(ex, e, x.data() + t * ex.d);
      for (int64_t c = 0; c < ex.d; ++c) {
        double o = 0;
        for (int64_t j = 0; j < ex.i; ++j) {
          double g = gate[static_cast<size_t>(j)];
          o += ex.w2[static_cast<size_t>((e * ex.d + c) * ex.i + j)] * g / (1 + std::exp(-g)) *
               up[static_cast<size_t>(j)];
        }
        y[static_cast<size_t>(t * ex.d + c)] += w[static_cast<size_t>(t * k + s)] * o;
      }
    }
  }
  return y;
}

// The saved pre-activations: per expert in order, its (token, slot) pairs in order, gate | up.
std::vector<double> ReferenceH(const Experts& ex, const std::vector<double>& x,
                               const std::vector<double>& idx) {
  std::vector<double> h;
  for (int64_t e = 0; e < ex.e; ++e) {
    for (size_t s = 0; s < idx.size(); ++s) {
      if (static_cast<int64_t>(idx[s]) != e) continue;
      int64_t k = static_cast<int64_t>(idx.size()) / (static_cast<int64_t>(x.size()) / ex.d);
      auto [gate, up] = GateUp(ex, e, x.data() + static_cast<int64_t>(s) / k * ex.d);
      h.insert(h.end(), gate.begin(), gate.end());
      h.insert(h.end(), up.begin(), up.end());
    }
  }
  return h;
}

std::string Attrs(const Experts& ex, const char* dtype) {
  return "n_routed_experts=" + std::to_string(ex.e) +
         " moe_intermediate_size=" + std::to_string(ex.i) + " T=" + dtype;
}

TEST(MoeExperts, MatchesNaiveLoopWithSkewedLoad) {
  // Eight tokens as [2, 4, d], K = 2, five experts: expert 2 takes nine of the sixteen slots
  // (token 5 twice), expert 4 none.
  Experts ex = MakeExperts(5, 3, 4, 11);
  std::vector<double> idx = {2, 0, 2, 1, 0, 2, 2, 3, 1, 2, 2, 2, 3, 0, 2, 1};
  std::vector<double> w = {0.7, 0.3, 0.9, -0.1, 0.5, 0.5,  1.2, 0.4,
                           0.2, 0.8, 0.6, 0.4,  1.0, -0.5, 0.3, 0.3};
  OpCase c{"moe.Experts",
           Attrs(ex, "f64"),
           {F64({2, 4, 4}), F64({2, 4, 2}), I64({2, 4, 2})},
           {{1, w}, {2, idx}}};
  ParamStore params = Params(ex);
  auto out = RunOp(c, {}, &params);
  ASSERT_TRUE(out.ok()) << out.status().ToString();
  std::vector<double> x = CaseInputs(c)[0].ToVector();
  std::vector<double> want = Reference(ex, x, w, idx, 2), got = (*out)[0].ToVector();
  ASSERT_EQ((*out)[0].shape(), (Shape{2, 4, 4}));
  for (size_t q = 0; q < want.size(); ++q) EXPECT_NEAR(got[q], want[q], 1e-12) << "y[" << q << "]";
  std::vector<double> want_h = ReferenceH(ex, x, idx), got_h = (*out)[1].ToVector();
  ASSERT_EQ((*out)[1].shape(), (Shape{16, 6}));
  for (size_t q = 0; q < want_h.size(); ++q)
    EXPECT_NEAR(got_h[q], want_h[q], 1e-12) << "h[" << q << "]";
}

TEST(MoeExperts, F32TilesMatchNaiveLoop) {
  // 300 tokens, most of them to expert 1 (more rows than one GEMM tile), none to expert 3.
  Experts ex = MakeExperts(4, 6, 8, 21);
  int64_t n = 300;
  std::vector<double> idx, w = Random(static_cast<size_t>(n * 2), 0.5, 5);
  for (int64_t t = 0; t < n; ++t) {
    idx.push_back(t % 7 == 0 ? 0 : 1);
    idx.push_back(t % 3 == 0 ? 1 : 2);
  }
  OpCase c{"moe.Experts",
           Attrs(ex, "f32"),
           {Typed(DT_F32, {n, 8}), Typed(DT_F32, {n, 2}), I64({n, 2})},
           {{1, w}, {2, idx}}};
  ParamStore params = Params(ex);
  auto out = RunOp(c, {}, &params);
  ASSERT_TRUE(out.ok()) << out.status().ToString();
  std::vector<double> x = CaseInputs(c)[0].ToVector();
  std::vector<double> want = Reference(ex, x, w, idx, 2), got = (*out)[0].ToVector();
  for (size_t q = 0; q < want.size(); ++q) EXPECT_NEAR(got[q], want[q], 1e-4) << "y[" << q << "]";
}

TEST(MoeExperts, GradientsMatchFiniteDifferences) {
  // Expert 1 takes a token in both slots, expert 3 takes none (its gradients are zero).
  OpCase c{"moe.Experts",
           "n_routed_experts=4 moe_intermediate_size=3 T=f64",
           {F64({5, 4}), F64({5, 2}), I64({5, 2})},
           {{2, {1, 0, 1, 2, 1, 1, 0, 1, 2, 1}}}};
  EXPECT_EQ(CheckGradients(c), 5 * 4 + 5 * 2 + 3 * 4 * 3 * 4);  // x, weights, w1, w3, w2
  OpCase wide{"moe.Experts",
              "n_routed_experts=6 moe_intermediate_size=2 T=f64",
              {F64({2, 3, 4}), F64({2, 3, 3}), I64({2, 3, 3})},
              {{2, {5, 0, 3, 3, 5, 1, 0, 2, 5, 4, 1, 5, 5, 2, 0, 1, 3, 5}}}};
  EXPECT_EQ(CheckGradients(wide), 24 + 18 + 3 * 6 * 2 * 4);
}

// Forward and backward of a case in one program: loss = Σ y ⊙ r for a fixed random r.
StatusOr<Program::Outputs> Train(const OpCase& c, std::string* debug = nullptr) {
  WEIR_ASSIGN_OR_RETURN(Graph g, OpGraph(c, true));
  std::vector<TensorType> types = c.inputs;
  std::vector<Tensor> inputs = CaseInputs(c);
  TensorType y = c.inputs[0];
  types.push_back(y);
  inputs.push_back(Tensor::FromValues(y.dtype, y.shape,
                                      Random(static_cast<size_t>(NumElements(y.shape)), 1.0, 99)));
  ProgramOptions options;
  options.loss = "loss";
  options.input_grads = {"x0", "x1"};
  WEIR_ASSIGN_OR_RETURN(auto p, Program::Build(g, "F", {}, types, TestRegistry(), options));
  if (debug != nullptr) *debug = p->DebugString();
  ParamStore params;
  params.Initialize(p->params(), c.seed);
  return p->Run(inputs, params);
}

// A larger case for the f32/bf16 comparisons: 600 tokens, K = 2, six experts, uneven load.
OpCase Large(DataType t) {
  int64_t n = 600;
  std::vector<double> idx;
  for (int64_t t = 0; t < n; ++t) {
    idx.push_back(t % 5 == 0 ? (t / 5) % 6 : 2);
    idx.push_back((t * 7 + 3) % 5 == 2 ? 2 : (t * 7 + 3) % 5);
  }
  return {"moe.Experts",
          std::string("n_routed_experts=6 moe_intermediate_size=8 init_std=0.3 out_std=0.3 T=") +
              DataTypeName(t),
          {Typed(t, {n, 16}), Typed(t, {n, 2}), I64({n, 2})},
          {{2, idx}}};
}

double MaxAbs(const std::vector<double>& v) {
  double m = 0;
  for (double x : v) m = std::max(m, std::abs(x));
  return m;
}

// Every element of `got` within `fraction` of the largest magnitude of `want`.
void ExpectClose(const Tensor& got, const Tensor& want, double fraction, const std::string& what) {
  std::vector<double> a = got.ToVector(), b = want.ToVector();
  ASSERT_EQ(a.size(), b.size()) << what;
  double tol = fraction * MaxAbs(b);
  EXPECT_GT(tol, 0) << what << " is all zeros";
  int bad = 0;
  for (size_t q = 0; q < a.size() && bad < 5; ++q) {
    EXPECT_NEAR(a[q], b[q], tol) << what << "[" << q << "]";
    bad += std::abs(a[q] - b[q]) > tol;
  }
}

TEST(MoeExperts, Bf16StaysCloseToF32) {
  auto f32 = Train(Large(DT_F32)), bf16 = Train(Large(DT_BF16));
  ASSERT_TRUE(f32.ok()) << f32.status().ToString();
  ASSERT_TRUE(bf16.ok()) << bf16.status().ToString();
  auto fwd32 = RunOp(Large(DT_F32)), fwd16 = RunOp(Large(DT_BF16));
  ASSERT_TRUE(fwd32.ok() && fwd16.ok());
  ExpectClose((*fwd16)[0], (*fwd32)[0], 0.02, "y");
  ExpectClose(bf16->input_grads[0], f32->input_grads[0], 0.02, "dx");
  ExpectClose(bf16->input_grads[1], f32->input_grads[1], 0.02, "dweights");
  for (const char* p : {"op.w1", "op.w3", "op.w2"})
    ExpectClose(bf16->param_grads.at(p), f32->param_grads.at(p), 0.02, p);
}

bool SameBits(const Tensor& a, const Tensor& b) {
  return a.dtype() == b.dtype() && a.shape() == b.shape() &&
         std::memcmp(a.raw_data(), b.raw_data(), a.nbytes()) == 0;
}

TEST(MoeExperts, BitwiseReproducible) {
  for (DataType t : {DT_F32, DT_BF16}) {
    SCOPED_TRACE(DataTypeName(t));
    auto first = Train(Large(t)), second = Train(Large(t));
    ASSERT_TRUE(first.ok() && second.ok());
    EXPECT_TRUE(SameBits(first->values[0], second->values[0])) << "loss";
    for (size_t i = 0; i < 2; ++i)
      EXPECT_TRUE(SameBits(first->input_grads[i], second->input_grads[i])) << "input " << i;
    for (const auto& [name, g] : first->param_grads)
      EXPECT_TRUE(SameBits(g, second->param_grads.at(name))) << name;
    auto y1 = RunOp(Large(t)), y2 = RunOp(Large(t));
    ASSERT_TRUE(y1.ok() && y2.ok());
    EXPECT_TRUE(SameBits((*y1)[0], (*y2)[0])) << "y";
    EXPECT_TRUE(SameBits((*y1)[1], (*y2)[1])) << "h";
  }
}

TEST(MoeExperts, WeightGradientsAreWNodes) {
  std::string debug;
  auto out = Train(Large(DT_F32), &debug);
  ASSERT_TRUE(out.ok()) << out.status().ToString();
  int b = 0, w = 0;
  std::istringstream lines(debug);
  for (std::string line; std::getline(lines, line);) {
    if (line.find("= moe.ExpertsGrad(") != std::string::npos) b += line.rfind("B ", 0) == 0;
    if (line.find("= moe.ExpertsWeightGrad(") != std::string::npos) w += line.rfind("W ", 0) == 0;
  }
  EXPECT_EQ(b, 1) << debug;
  EXPECT_EQ(w, 1) << debug;
}

TEST(MoeExperts, IndexOutsideTheExpertsIsNamed) {
  for (double bad : {4.0, -2.0}) {
    OpCase c{"moe.Experts",
             "n_routed_experts=4 moe_intermediate_size=2 T=f64",
             {F64({3, 4}), F64({3, 2}), I64({3, 2})},
             {{2, {0, 1, 2, 3, bad, 0}}}};
    auto out = RunOp(c);
    ASSERT_FALSE(out.ok());
    std::string msg = out.status().ToString();
    EXPECT_NE(msg.find("indices[token 2, slot 0] = " + std::to_string(static_cast<int>(bad))),
              std::string::npos)
        << msg;
    EXPECT_NE(msg.find("n_routed_experts is 4"), std::string::npos) << msg;
    EXPECT_NE(msg.find("[0, 4)"), std::string::npos) << msg;
  }
}

TEST(MoeExperts, ShapeMismatchesNameBothShapes) {
  auto error = [](std::vector<TensorType> inputs, const char* attrs =
                                                      "n_routed_experts=4 "
                                                      "moe_intermediate_size=2 T=f64") {
    auto out = RunOp({"moe.Experts", attrs, std::move(inputs)});
    EXPECT_FALSE(out.ok());
    return out.ok() ? std::string() : out.status().ToString();
  };
  std::string tokens = error({F64({6, 4}), F64({5, 2}), I64({5, 2})});
  EXPECT_NE(tokens.find("weights f64[5, 2]"), std::string::npos) << tokens;
  EXPECT_NE(tokens.find("x f64[6, 4]"), std::string::npos) << tokens;
  std::string k = error({F64({6, 4}), F64({6, 2}), I64({6, 3})});
  EXPECT_NE(k.find("indices i64[6, 3]"), std::string::npos) << k;
  EXPECT_NE(k.find("weights f64[6, 2]"), std::string::npos) << k;
  std::string dtype = error({F64({6, 4}), F64({6, 2}), I64({6, 2})},
                            "n_routed_experts=4 moe_intermediate_size=2 T=f32");
  EXPECT_NE(dtype.find("x f64[6, 4]"), std::string::npos) << dtype;
  EXPECT_NE(dtype.find("T = f32"), std::string::npos) << dtype;
  // A checkpoint's w1 that does not fit x.
  OpCase c{"moe.Experts",
           "n_routed_experts=4 moe_intermediate_size=2 T=f64",
           {F64({6, 4}), F64({6, 2}), I64({6, 2})},
           {{2, {0, 1, 2, 3, 0, 1, 2, 3, 0, 1, 2, 3}}}};
  ParamStore params = Params(MakeExperts(4, 2, 4, 3));
  params.Set("op.w1", Tensor::FromValues(DT_F64, {4, 2, 5}, Random(40, 1, 4)));
  auto out = RunOp(c, {}, &params);
  ASSERT_FALSE(out.ok());
  EXPECT_NE(out.status().ToString().find("op.w1"), std::string::npos) << out.status().ToString();
}

}  // namespace
}  // namespace weir::testing
