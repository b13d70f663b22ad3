// The nn plugin's ops: finite-difference gradient checks in f64 for every differentiable input
// and parameter, kernels against naive double-precision references, bf16 against f32, and
// shape-inference errors.
#include <gtest/gtest.h>

#include <cmath>

#include "weir/testing/gpu.h"
#include "weir/testing/op_check.h"

namespace weir::testing {
namespace {

TensorType F64(Shape s) { return {DT_F64, std::move(s)}; }
TensorType I64(Shape s) { return {DT_I64, std::move(s)}; }

TEST(NnGrad, MatMulAllTransposes) {
  for (bool ta : {false, true}) {
    for (bool tb : {false, true}) {
      OpCase c{
          "nn.MatMul",
          std::string("transpose_a=") + (ta ? "true" : "false") +
              " transpose_b=" + (tb ? "true" : "false"),
          {F64(ta ? Shape{2, 4, 3} : Shape{2, 3, 4}), F64(tb ? Shape{2, 5, 4} : Shape{2, 4, 5})}};
      EXPECT_GT(CheckGradients(c), 0);
    }
  }
  // A 2-D b shared across a batched a.
  EXPECT_GT(CheckGradients({"nn.MatMul", "", {F64({2, 3, 4}), F64({4, 5})}}), 0);
}

TEST(NnGrad, Linear) {
  EXPECT_GT(CheckGradients({"nn.Linear", "out_features=3 T=f64", {F64({2, 2, 4})}}), 0);
}

TEST(NnGrad, Embedding) {
  OpCase c{
      "nn.Embedding", "num_embeddings=5 dim=3 T=f64", {I64({2, 3})}, {{0, {0, 4, 1, 1, 3, 0}}}};
  EXPECT_EQ(CheckGradients(c), 15);  // the table only
}

TEST(NnGrad, Elementwise) {
  EXPECT_GT(CheckGradients({"nn.Add", "", {F64({3, 4}), F64({3, 4})}}), 0);
  EXPECT_GT(CheckGradients({"nn.Mul", "", {F64({3, 4}), F64({3, 4})}}), 0);
  EXPECT_GT(CheckGradients({"nn.Scale", "factor=-2.5", {F64({3, 4})}}), 0);
  EXPECT_GT(CheckGradients({"nn.SiLU", "", {F64({3, 4})}}), 0);
  EXPECT_GT(CheckGradients({"nn.SwiGLU", "", {F64({3, 4}), F64({3, 4})}}), 0);
  EXPECT_GT(CheckGradients({"nn.Sum", "", {F64({3, 4})}}), 0);
  EXPECT_GT(CheckGradients({"nn.Cast", "dtype=f64", {F64({3, 2})}}), 0);
}

TEST(NnGrad, RmsNorm) {
  EXPECT_GT(CheckGradients({"nn.RMSNorm", "T=f64 eps=1e-5", {F64({3, 6})}}), 0);
}

TEST(NnGrad, Rope) {
  EXPECT_GT(CheckGradients({"nn.RoPE", "theta=100", {F64({2, 3, 2, 4})}}), 0);
  EXPECT_GT(CheckGradients({"nn.RoPE", "interleaved=false start=5", {F64({1, 3, 1, 6})}}), 0);
  EXPECT_GT(
      CheckGradients({"nn.RoPE", "rope_factor=40 original_max_position=8", {F64({1, 4, 1, 8})}}),
      0);
}

TEST(NnGrad, RopeWithPerRowStarts) {
  EXPECT_GT(CheckGradients({"nn.RoPE",
                            "start=2 rope_factor=40 original_max_position=8",
                            {F64({3, 2, 2, 8}), I64({3})},
                            {{1, {0, 5, 11}}},
                            {1}}),
            0);
}

// Per-row starts rotate row b as the start attr start + starts[b] would, and add to the attr.
TEST(NnReference, RopePerRowStartsMatchTheAttr) {
  OpCase rows{"nn.RoPE", "start=3", {F64({2, 4, 3, 6}), I64({2})}, {{1, {0, 9}}}};
  Tensor x = CaseInputs(rows)[0];
  auto y = RunOp(rows);
  ASSERT_TRUE(y.ok()) << y.status().ToString();
  for (int64_t b = 0; b < 2; ++b) {
    OpCase one{"nn.RoPE", "start=" + std::to_string(b == 0 ? 3 : 12), {F64({1, 4, 3, 6})}};
    one.values[0] = x.Slice(0, b, b + 1).Contiguous().ToVector();
    auto ref = RunOp(one);
    ASSERT_TRUE(ref.ok()) << ref.status().ToString();
    for (int64_t i = 0; i < 72; ++i) EXPECT_EQ((*y)[0].At(b * 72 + i), (*ref)[0].At(i)) << b;
  }
  OpCase wrong{"nn.RoPE", "", {F64({2, 4, 3, 6}), I64({3})}};
  auto bad = RunOp(wrong);
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().ToString().find("start must be i64 [batch] = i64[2], got i64[3]"),
            std::string::npos)
      << bad.status().ToString();
}

TEST(NnGrad, Attention) {
  // Multi-head, causal.
  EXPECT_GT(CheckGradients(
                {"nn.Attention", "", {F64({2, 4, 2, 3}), F64({2, 4, 2, 3}), F64({2, 4, 2, 3})}}),
            0);
  // Grouped-query (4 query heads on 2 kv heads), not causal, explicit scale, dv != d.
  EXPECT_GT(CheckGradients({"nn.Attention",
                            "causal=false scale=0.7",
                            {F64({1, 3, 4, 2}), F64({1, 5, 2, 2}), F64({1, 5, 2, 3})}}),
            0);
  // Causal decoding: 2 new queries against 5 keys.
  EXPECT_GT(CheckGradients(
                {"nn.Attention", "", {F64({1, 2, 2, 3}), F64({1, 5, 2, 3}), F64({1, 5, 2, 3})}}),
            0);
}

TEST(NnGrad, CrossEntropy) {
  OpCase c{"nn.CrossEntropy",
           "ignore_index=-1",
           {F64({2, 3, 5}), I64({2, 3})},
           {{1, {0, 4, -1, 2, 2, 1}}},
           {1}};
  EXPECT_EQ(CheckGradients(c), 30);
  OpCase masked{"nn.CrossEntropy",
                "",
                {F64({4, 5}), I64({4}), F64({4})},
                {{1, {0, 4, 3, 2}}, {2, {1, 0, 1, 0.5}}},
                {1, 2}};
  EXPECT_EQ(CheckGradients(masked), 20);
}

TEST(NnGrad, ShapeOps) {
  EXPECT_GT(CheckGradients({"nn.Reshape", "shape=[0, -1]", {F64({2, 3, 2})}}), 0);
  EXPECT_GT(CheckGradients({"nn.Transpose", "perm=[2, 0, 1]", {F64({2, 3, 4})}}), 0);
  EXPECT_GT(CheckGradients({"nn.Concat", "axis=1", {F64({2, 1, 3}), F64({2, 2, 3})}}), 0);
  EXPECT_EQ(CheckGradients({"nn.Concat", "axis=1", {F64({2, 0, 3}), F64({2, 2, 3})}}), 12);
  EXPECT_GT(CheckGradients({"nn.Slice", "axis=1 begin=1 end=3", {F64({2, 4, 2})}}), 0);
  // Negative bounds count from the end: all time steps but the last.
  EXPECT_EQ(CheckGradients({"nn.Slice", "axis=1 begin=0 end=-1", {F64({2, 4, 2})}}), 16);
  EXPECT_EQ(CheckGradients({"nn.Slice", "axis=1 begin=1", {F64({2, 4, 2})}}), 16);
  EXPECT_EQ(CheckGradients({"nn.Slice", "axis=1 begin=-1", {F64({2, 4, 2})}}), 16);
  // Every part used (the gradient is a Concat) and only one used (zeros elsewhere).
  OpCase split{"nn.Split", "num=3 axis=1", {F64({2, 6, 2})}};
  split.output = -1;
  EXPECT_EQ(CheckGradients(split), 24);
  OpCase part{"nn.Split", "num=3 sizes=[1, 4, 1] axis=1", {F64({2, 6, 2})}};
  part.output = 1;
  EXPECT_EQ(CheckGradients(part), 24);
  EXPECT_EQ(CheckGradients({"nn.Expand", "axis=-2 size=3", {F64({2, 2, 1, 4})}}), 16);
  EXPECT_EQ(CheckGradients({"nn.Cached", "", {F64({2, 3, 2})}}), 12);
  EXPECT_EQ(CheckGradients({"nn.Weight", "shape=[3, 2] T=f64", {}}), 6);
}

TEST(NnGrad, HeadMatMul) {
  EXPECT_EQ(CheckGradients({"nn.HeadMatMul", "", {F64({2, 3, 2, 4}), F64({2, 4, 5})}}), 48 + 40);
  EXPECT_EQ(CheckGradients({"nn.HeadMatMul", "transpose_w=true", {F64({3, 2, 4}), F64({2, 5, 4})}}),
            24 + 40);
}

TEST(NnReference, HeadMatMulMultipliesEachHeadByItsMatrix) {
  OpCase c{"nn.HeadMatMul", "", {F64({2, 2, 3}), F64({2, 3, 2})}};
  auto y = RunOp(c);
  ASSERT_TRUE(y.ok()) << y.status().ToString();
  std::vector<Tensor> in = CaseInputs(c);
  std::vector<double> x = in[0].ToVector(), w = in[1].ToVector(), out = (*y)[0].ToVector();
  for (int r = 0; r < 2; ++r)
    for (int h = 0; h < 2; ++h)
      for (int j = 0; j < 2; ++j) {
        double expect = 0;
        for (int k = 0; k < 3; ++k) expect += x[(r * 2 + h) * 3 + k] * w[(h * 3 + k) * 2 + j];
        EXPECT_NEAR(out[(r * 2 + h) * 2 + j], expect, 1e-12);
      }
  auto f32 = RunOp({"nn.HeadMatMul", "", {{DT_F32, {5, 2, 3}}, {DT_F32, {2, 3, 4}}}});
  auto bf16 = RunOp({"nn.HeadMatMul", "", {{DT_BF16, {5, 2, 3}}, {DT_BF16, {2, 3, 4}}}});
  ASSERT_TRUE(f32.ok() && bf16.ok());
  std::vector<double> a = (*f32)[0].ToVector(), b = (*bf16)[0].ToVector();
  for (size_t i = 0; i < a.size(); ++i) EXPECT_NEAR(a[i], b[i], 0.03 * (1 + std::abs(a[i])));
  auto bad = RunOp({"nn.HeadMatMul", "", {F64({2, 2, 3}), F64({3, 3, 2})}});
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("does not multiply per head"), std::string::npos);
}

TEST(NnReference, ArgmaxMatchCountsAgreeingRows) {
  // Rows agree at 2, disagree (0 vs 1), agree at 0 (a tie goes to the first).
  OpCase c{"nn.ArgmaxMatch",
           "",
           {F64({3, 3}), F64({3, 3})},
           {{0, {0.1, 0.2, 0.9, 0.5, 0.4, 0.0, 1.0, 1.0, 0.0}},
            {1, {0.0, 0.0, 3.0, 0.1, 0.7, 0.2, 2.0, 0.5, 0.5}}}};
  auto y = RunOp(c);
  ASSERT_TRUE(y.ok()) << y.status().ToString();
  EXPECT_NEAR((*y)[0].At(0), 2.0 / 3.0, 1e-7);
  auto bad = RunOp({"nn.ArgmaxMatch", "", {F64({3, 3}), F64({3, 4})}});
  ASSERT_FALSE(bad.ok());
}

TEST(NnReference, ExpandRepeatsTheSizeOneDim) {
  OpCase c{"nn.Expand", "axis=1 size=3", {F64({2, 1, 2})}};
  auto y = RunOp(c);
  ASSERT_TRUE(y.ok()) << y.status().ToString();
  std::vector<double> x = CaseInputs(c)[0].ToVector();
  EXPECT_EQ((*y)[0].shape(), (Shape{2, 3, 2}));
  EXPECT_EQ((*y)[0].ToVector(), (std::vector<double>{x[0], x[1], x[0], x[1], x[0], x[1], x[2], x[3],
                                                     x[2], x[3], x[2], x[3]}));
  auto bad = RunOp({"nn.Expand", "axis=1 size=3", {F64({2, 2, 2})}});
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("axis 1 of [2, 2, 2] is not one"), std::string::npos)
      << bad.status().ToString();
}

TEST(NnReference, SplitPartsAreTheSlices) {
  OpCase c{"nn.Split", "num=3 sizes=[2, 0, 3] axis=-1", {F64({2, 5})}};
  auto parts = RunOp(c);
  ASSERT_TRUE(parts.ok()) << parts.status().ToString();
  ASSERT_EQ(parts->size(), 3u);
  std::vector<double> x = CaseInputs(c)[0].ToVector();
  EXPECT_EQ((*parts)[0].shape(), (Shape{2, 2}));
  EXPECT_EQ((*parts)[1].shape(), (Shape{2, 0}));
  EXPECT_EQ((*parts)[0].ToVector(), (std::vector<double>{x[0], x[1], x[5], x[6]}));
  EXPECT_EQ((*parts)[2].ToVector(), (std::vector<double>{x[2], x[3], x[4], x[7], x[8], x[9]}));
}

TEST(NnGrad, Dropout) {
  // The mask is random per call: check the gradient against the mask the forward pass drew.
  OpCase c{"nn.Dropout", "rate=0.0", {F64({3, 4})}};
  EXPECT_GT(CheckGradients(c), 0);
  auto out = RunOp({"nn.Dropout", "rate=0.5 seed=3", {F64({1000})}});
  ASSERT_TRUE(out.ok()) << out.status().ToString();
  int kept = 0;
  std::vector<double> x = CaseInputs({"nn.Dropout", "", {F64({1000})}})[0].ToVector();
  for (int i = 0; i < 1000; ++i) {
    double y = (*out)[0].At(i);
    if ((*out)[1].At(i) != 0) {
      ++kept;
      EXPECT_DOUBLE_EQ(y, 2 * x[static_cast<size_t>(i)]);
    } else {
      EXPECT_EQ(y, 0);
    }
  }
  EXPECT_GT(kept, 430);  // Binomial(1000, 0.5): sd 16
  EXPECT_LT(kept, 570);
}

// Naive double-precision references.

TEST(NnReference, AttentionMatchesNaiveSoftmax) {
  OpCase c{"nn.Attention", "", {F64({1, 5, 4, 3}), F64({1, 7, 2, 3}), F64({1, 7, 2, 2})}};
  auto out = RunOp(c);
  ASSERT_TRUE(out.ok()) << out.status().ToString();
  std::vector<Tensor> in = CaseInputs(c);
  const Tensor &q = in[0], &k = in[1], &v = in[2];
  double scale = 1 / std::sqrt(3.0);
  for (int h = 0; h < 4; ++h) {
    int hk = h / 2;
    for (int t = 0; t < 5; ++t) {
      int last = t + 2;  // causal, aligned to the end
      std::vector<double> s;
      double m = -1e300;
      for (int j = 0; j <= last; ++j) {
        double dot = 0;
        for (int x = 0; x < 3; ++x) dot += q.At((t * 4 + h) * 3 + x) * k.At((j * 2 + hk) * 3 + x);
        s.push_back(dot * scale);
        m = std::max(m, s.back());
      }
      double z = 0;
      for (double& e : s) z += (e = std::exp(e - m));
      for (int x = 0; x < 2; ++x) {
        double o = 0;
        for (int j = 0; j <= last; ++j)
          o += s[static_cast<size_t>(j)] / z * v.At((j * 2 + hk) * 2 + x);
        EXPECT_NEAR((*out)[0].At((t * 4 + h) * 2 + x), o, 1e-12);
      }
      EXPECT_NEAR((*out)[1].At(h * 5 + t), m + std::log(z), 1e-12);
    }
  }
}

TEST(NnReference, RmsNormRopeCrossEntropy) {
  OpCase norm{"nn.RMSNorm", "T=f64 eps=0.001", {F64({2, 4})}};
  ParamStore params;
  params.Set("op.weight", Tensor::FromValues(DT_F64, {4}, {1, 2, 3, -4}));
  auto y = RunOp(norm, {}, &params);
  ASSERT_TRUE(y.ok()) << y.status().ToString();
  Tensor x = CaseInputs(norm)[0];
  for (int r = 0; r < 2; ++r) {
    double ss = 0;
    for (int k = 0; k < 4; ++k) ss += x.At(r * 4 + k) * x.At(r * 4 + k);
    double rstd = 1 / std::sqrt(ss / 4 + 0.001);
    double w[] = {1, 2, 3, -4};
    for (int k = 0; k < 4; ++k)
      EXPECT_NEAR((*y)[0].At(r * 4 + k), x.At(r * 4 + k) * rstd * w[k], 1e-12);
  }

  OpCase rope{"nn.RoPE", "theta=10000", {F64({1, 3, 1, 4})}};
  auto ry = RunOp(rope);
  ASSERT_TRUE(ry.ok());
  Tensor rx = CaseInputs(rope)[0];
  for (int t = 0; t < 3; ++t) {
    for (int i = 0; i < 2; ++i) {
      double f = std::pow(10000.0, -2.0 * i / 4), a = t * f;
      double x0 = rx.At(t * 4 + 2 * i), x1 = rx.At(t * 4 + 2 * i + 1);
      EXPECT_NEAR(ry->at(0).At(t * 4 + 2 * i), x0 * std::cos(a) - x1 * std::sin(a), 1e-12);
      EXPECT_NEAR(ry->at(0).At(t * 4 + 2 * i + 1), x0 * std::sin(a) + x1 * std::cos(a), 1e-12);
    }
  }

  OpCase ce{"nn.CrossEntropy", "", {F64({3, 4}), I64({3})}, {{1, {2, -100, 0}}}};
  auto loss = RunOp(ce);
  ASSERT_TRUE(loss.ok());
  Tensor logits = CaseInputs(ce)[0];
  double total = 0;
  for (int r : {0, 2}) {
    double z = 0;
    for (int j = 0; j < 4; ++j) z += std::exp(logits.At(r * 4 + j));
    total += std::log(z) - logits.At(r * 4 + (r == 0 ? 2 : 0));
  }
  EXPECT_NEAR((*loss)[0].At(0), total / 2, 1e-12);
}

TEST(NnReference, YarnRampFollowsTheSpec) {
  // deepseek.md §2.1: for d = 64, θ = 10000, s = 40, original 4096, β 32/1: low = 10, high = 23;
  // pairs up to 10 keep their frequency, pairs from 23 on are divided by 40.
  OpCase c{"nn.RoPE",
           "rope_factor=40 original_max_position=4096",
           {F64({1, 2, 1, 64})},
           {{0, std::vector<double>(128, 0.0)}}};
  std::vector<double> x(128, 0.0);
  for (int i = 0; i < 32; ++i)
    x[static_cast<size_t>(64 + 2 * i)] = 1.0;  // position 1, cos/sin probe
  c.values[0] = x;
  auto y = RunOp(c);
  ASSERT_TRUE(y.ok()) << y.status().ToString();
  for (int i : {0, 5, 10, 23, 31}) {
    double f = std::pow(10000.0, -2.0 * i / 64);
    double expected = i <= 10 ? f : f / 40;
    double angle = std::atan2(y->at(0).At(64 + 2 * i + 1), y->at(0).At(64 + 2 * i));
    EXPECT_NEAR(angle, expected, 1e-12) << "pair " << i;
  }
  double f16 = std::pow(10000.0, -2.0 * 16 / 64), ramp = (16 - 10) / 13.0;
  EXPECT_NEAR(std::atan2(y->at(0).At(64 + 33), y->at(0).At(64 + 32)),
              f16 / 40 * ramp + f16 * (1 - ramp), 1e-12);
}

TEST(NnBf16, KernelsStayCloseToF32) {
  struct Case {
    std::string op, attrs;
    std::vector<Shape> shapes;
    double tol;
  };
  for (const Case& k :
       std::vector<Case>{{"nn.MatMul", "", {{4, 16}, {16, 8}}, 0.05},
                         {"nn.RMSNorm", "T=bf16", {{4, 16}}, 0.03},
                         {"nn.SwiGLU", "", {{4, 16}, {4, 16}}, 0.02},
                         {"nn.Attention", "", {{1, 8, 2, 8}, {1, 8, 2, 8}, {1, 8, 2, 8}}, 0.03},
                         {"nn.RoPE", "", {{1, 4, 2, 8}}, 0.02}}) {
    OpCase f32{k.op, k.attrs, {}};
    OpCase b16{k.op, k.attrs, {}};
    for (const Shape& s : k.shapes) {
      f32.inputs.push_back({DT_F32, s});
      b16.inputs.push_back({DT_BF16, s});
    }
    if (k.op == "nn.RMSNorm") f32.attrs = "T=f32";
    std::map<int, Tensor> rounded;  // the same (bf16-representable) values for both
    std::vector<Tensor> base = CaseInputs(f32);
    std::map<int, Tensor> as_f32, as_bf16;
    for (size_t i = 0; i < base.size(); ++i) {
      as_bf16[static_cast<int>(i)] = base[i].To(DT_BF16);
      as_f32[static_cast<int>(i)] = as_bf16[static_cast<int>(i)].To(DT_F32);
    }
    auto a = RunOp(f32, as_f32), b = RunOp(b16, as_bf16);
    ASSERT_TRUE(a.ok()) << k.op << ": " << a.status().ToString();
    ASSERT_TRUE(b.ok()) << k.op << ": " << b.status().ToString();
    double worst = 0;
    for (int64_t i = 0; i < (*a)[0].numel(); ++i)
      worst = std::max(
          worst, std::abs((*a)[0].At(i) - (*b)[0].At(i)) / std::max(1.0, std::abs((*a)[0].At(i))));
    EXPECT_LT(worst, k.tol) << k.op;
  }
}

TEST(Conformance, DevicesThisBuildCannotRunAreReportedNotPassed) {
  if (HaveCudaDevice(nullptr)) GTEST_SKIP() << "a GPU runs the CUDA kernels here";
  // Without a GPU, an op's CUDA kernel (built with nvcc, or the test plugin's) is reported.
  std::vector<std::string> not_runnable;
  auto compared =
      CheckDeviceConformance({"test.CudaToo", "", {{DT_F32, {4}}}}, 1e-6, &not_runnable);
  EXPECT_TRUE(compared.empty());
  EXPECT_EQ(not_runnable, std::vector<std::string>{"cuda"});
  not_runnable.clear();
  compared = CheckDeviceConformance({"nn.SiLU", "", {F64({2, 3})}}, 1e-6, &not_runnable);
  EXPECT_TRUE(compared.empty());
#ifdef WEIR_HAVE_CUDA
  EXPECT_EQ(not_runnable, std::vector<std::string>{"cuda"});
#else
  EXPECT_TRUE(not_runnable.empty());  // no CUDA kernels in this build
#endif
}

TEST(NnShapes, MismatchesNameBothShapes) {
  auto matmul = RunOp({"nn.MatMul", "", {F64({2, 3}), F64({4, 5})}});
  ASSERT_FALSE(matmul.ok());
  EXPECT_NE(
      matmul.status().message().find("matmul of [2, 3] and [4, 5]: inner dims differ (3 vs 4)"),
      std::string::npos)
      << matmul.status().ToString();
  auto attention =
      RunOp({"nn.Attention", "", {F64({1, 2, 3, 4}), F64({1, 2, 2, 4}), F64({1, 2, 2, 4})}});
  ASSERT_FALSE(attention.ok());
  EXPECT_NE(attention.status().message().find("heads must be a multiple of kv heads"),
            std::string::npos);
  auto linear = RunOp({"nn.Linear", "out_features=3", {F64({2, 4})}});
  ASSERT_FALSE(linear.ok());
  EXPECT_NE(linear.status().message().find("the op computes in f32 (attr T)"), std::string::npos)
      << linear.status().ToString();
  auto reshape = RunOp({"nn.Reshape", "shape=[4, -1]", {F64({3, 3})}});
  ASSERT_FALSE(reshape.ok());
  EXPECT_NE(reshape.status().message().find("cannot reshape [3, 3]"), std::string::npos);
  // The error names the node and its place in the graph file.
  EXPECT_NE(reshape.status().ToString().find(":5:"), std::string::npos)
      << reshape.status().ToString();
  EXPECT_NE(reshape.status().ToString().find("node 'op' (op 'nn.Reshape')"), std::string::npos);
  auto split = RunOp({"nn.Split", "num=2 sizes=[2, 3]", {F64({2, 6})}});
  ASSERT_FALSE(split.ok());
  EXPECT_NE(split.status().message().find("sizes add up to 5, axis 1 of [2, 6] has 6"),
            std::string::npos)
      << split.status().ToString();
  auto uneven = RunOp({"nn.Split", "num=4", {F64({2, 6})}});
  ASSERT_FALSE(uneven.ok());
  EXPECT_NE(uneven.status().message().find("does not split into 4 equal parts"), std::string::npos)
      << uneven.status().ToString();
  auto ids = RunOp({"nn.Embedding", "num_embeddings=3 dim=2", {I64({2})}, {{0, {1, 7}}}});
  ASSERT_FALSE(ids.ok());
  EXPECT_NE(ids.status().message().find("id 7 at position 1 is outside the table [0, 3)"),
            std::string::npos);
}

}  // namespace
}  // namespace weir::testing
