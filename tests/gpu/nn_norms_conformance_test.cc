// The nn plugin's CUDA kernels for normalization, rotary embedding, embedding lookup, the
// cross-entropy loss, argmax agreement, dropout and segment ids, against the CPU kernels: forward
// outputs in f32, bf16 and f64 over edge-case shapes (size 1, sizes that are no multiple of a
// block, more than one block or launch), and gradients differentiated on cuda against the CPU.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "weir/random.h"
#include "weir/testing/gpu.h"
#include "weir/testing/op_check.h"

namespace weir::testing {
namespace {

// f32 sums over thousands of terms (a vocabulary, many rows) round differently per device.
constexpr double kF32LongReduction = 1e-3;

TensorType I64(Shape s) { return {DT_I64, std::move(s)}; }
TensorType I32(Shape s) { return {DT_I32, std::move(s)}; }
TensorType U8(Shape s) { return {DT_U8, std::move(s)}; }
TensorType F32(Shape s) { return {DT_F32, std::move(s)}; }
TensorType F64(Shape s) { return {DT_F64, std::move(s)}; }

std::string Name(DataType t) { return DataTypeName(t); }

// Integer ids in [0, n): i · step mod n, so ids repeat.
std::vector<double> Ids(int64_t count, int64_t n, int64_t step = 7) {
  std::vector<double> ids(static_cast<size_t>(count));
  for (int64_t i = 0; i < count; ++i)
    ids[static_cast<size_t>(i)] = static_cast<double>(i * step % n);
  return ids;
}

// ---- nn.RMSNorm ----

TEST(NnNormsCuda, RmsNormForward) {
  WEIR_REQUIRE_GPU();
  // One element, a row narrower than a warp, rows wider than one thread's share, a row wider
  // than the largest block (512 threads · 4), many rows.
  const std::vector<Shape> shapes = {{1, 1}, {3, 5}, {2, 7, 300}, {4, 2049}, {700, 64}};
  for (const DtypeTolerance& f : GpuTolerances()) {
    for (const Shape& s : shapes)
      ExpectCudaConformance({"nn.RMSNorm", "eps=1e-5 T=" + Name(f.dtype), {{f.dtype, s}}},
                            f.tolerance);
  }
}

TEST(NnNormsCuda, RmsNormGradients) {
  WEIR_REQUIRE_GPU();
  ExpectCudaGradients({"nn.RMSNorm", "T=f64 eps=1e-5", {F64({5, 300})}}, 1e-9);
  // One element: dx = rstd·g·w·eps/(x² + eps), a difference of nearly equal terms unless eps is
  // large.
  ExpectCudaGradients({"nn.RMSNorm", "T=f64 eps=0.5", {F64({1, 1})}}, 1e-9);
  ExpectCudaGradients({"nn.RMSNorm", "T=f32", {F32({3, 2, 77})}}, 1e-3);
}

TEST(NnNormsCuda, RmsNormGradXAndGradW) {
  WEIR_REQUIRE_GPU();
  for (const DtypeTolerance& f : GpuTolerances()) {
    const DataType t = f.dtype;
    // A single element needs a large eps (see RmsNormGradients); the rows are realistic.
    for (const auto& [s, eps] : std::vector<std::pair<Shape, std::string>>{
             {{1, 1}, "0.5"}, {{6, 513}, "1e-6"}, {{2, 3, 33}, "1e-6"}}) {
      const Shape w{s.back()};
      ExpectCudaNearCpu({"nn.RMSNormGradX", "eps=" + eps, {{t, s}, {t, w}, {t, s}}}, f.tolerance);
      ExpectCudaNearCpu({"nn.RMSNormGradW", "eps=" + eps, {{t, s}, {t, s}}}, f.tolerance);
    }
    // Many rows: several row chunks per column tile, and more than one column tile.
    const double long_tolerance = t == DT_F32 ? kF32LongReduction : f.tolerance;
    ExpectCudaNearCpu({"nn.RMSNormGradW", "", {{t, {5000, 40}}, {t, {5000, 40}}}}, long_tolerance);
  }
}

// ---- nn.RoPE ----

TEST(NnNormsCuda, RopeForward) {
  WEIR_REQUIRE_GPU();
  struct Case {
    std::string attrs;
    Shape shape;
  };
  const std::vector<Case> cases = {
      {"", {2, 5, 3, 8}},
      {"", {1, 1, 1, 2}},
      {"", {2, 3, 4}},  // no head dim
      {"interleaved=false start=7", {1, 9, 2, 6}},
      {"inverse=true theta=100", {1, 3, 2, 4}},
      {"rope_factor=40 original_max_position=8", {1, 4, 1, 8}},
      {"rope_factor=4 original_max_position=16 theta=50000 beta_fast=16 beta_slow=2",
       {2, 3, 2, 64}},
      {"interleaved=false", {1, 3, 1, 600}},  // 300 pairs: two frequency launches
      {"start=100000", {1, 2, 1, 16}},        // angles far beyond float's exact integers
  };
  for (const DtypeTolerance& f : GpuTolerances()) {
    for (const Case& k : cases)
      ExpectCudaConformance({"nn.RoPE", k.attrs, {{f.dtype, k.shape}}}, f.tolerance);
    // Per-row starts (decoding sequences of different lengths), added to the attr.
    ExpectCudaConformance({"nn.RoPE",
                           "start=2 rope_factor=40 original_max_position=8",
                           {{f.dtype, {3, 2, 4, 8}}, {DT_I64, {3}}},
                           {{1, {0, 70, 100000}}}},
                          f.tolerance);
  }
}

TEST(NnNormsCuda, RopeGradients) {
  WEIR_REQUIRE_GPU();
  ExpectCudaGradients({"nn.RoPE", "theta=100", {F64({2, 3, 2, 4})}}, 1e-9);
  ExpectCudaGradients({"nn.RoPE", "interleaved=false start=5", {F64({1, 3, 1, 6})}}, 1e-9);
  ExpectCudaGradients({"nn.RoPE", "", {F64({2, 3, 2, 4}), {DT_I64, {2}}}, {{1, {4, 0}}}, {1}},
                      1e-9);
  ExpectCudaGradients({"nn.RoPE", "rope_factor=40 original_max_position=8", {F32({1, 4, 1, 8})}},
                      1e-4);
}

// ---- nn.Embedding ----

TEST(NnNormsCuda, EmbeddingForward) {
  WEIR_REQUIRE_GPU();
  for (const DtypeTolerance& f : GpuTolerances()) {
    const std::string t = " T=" + Name(f.dtype);
    // Rows of 3 elements (odd byte counts), 130 (wide words), 1.
    ExpectCudaConformance(
        {"nn.Embedding", "num_embeddings=5 dim=3" + t, {I64({2, 3})}, {{0, {0, 4, 1, 1, 3, 0}}}},
        1e-12);
    ExpectCudaConformance(
        {"nn.Embedding", "num_embeddings=11 dim=130" + t, {I32({37})}, {{0, Ids(37, 11)}}}, 1e-12);
    ExpectCudaConformance(
        {"nn.Embedding", "num_embeddings=4 dim=1" + t, {I64({4, 1})}, {{0, {3, 2, 1, 0}}}}, 1e-12);
  }
}

TEST(NnNormsCuda, EmbeddingIdOutsideTheTableGivesNaN) {
  WEIR_REQUIRE_GPU();
  // The CPU kernel fails with an error naming the id; a device kernel cannot see it without
  // waiting, so it poisons the row instead.
  auto y = RunOp({"nn.Embedding", "num_embeddings=3 dim=2", {I64({2})}, {{0, {1, 7}}}}, {}, nullptr,
                 "cuda");
  ASSERT_TRUE(y.ok()) << y.status().ToString();
  std::vector<double> values = (*y)[0].To(DT_F64).ToVector();
  ASSERT_EQ(values.size(), 4u);
  EXPECT_FALSE(std::isnan(values[0]));
  EXPECT_TRUE(std::isnan(values[2]));
  EXPECT_TRUE(std::isnan(values[3]));
}

TEST(NnNormsCuda, EmbeddingGradient) {
  WEIR_REQUIRE_GPU();
  ExpectCudaGradients(
      {"nn.Embedding", "num_embeddings=5 dim=3 T=f64", {I64({2, 3})}, {{0, {0, 4, 1, 1, 3, 0}}}},
      1e-9);
  // f64: the rows' sums come in any order, and in f32 a sum that cancels would differ beyond the
  // gradient check's absolute floor (ExpectCudaNearCpu below covers f32 and bf16).
  ExpectCudaGradients(
      {"nn.Embedding", "num_embeddings=9 dim=70 T=f64", {I64({4, 25})}, {{0, Ids(100, 9)}}}, 1e-9);
  for (const DtypeTolerance& f : GpuTolerances()) {
    // Up to 43 rows summed into one (atomics: any order), unused rows stay zero.
    ExpectCudaNearCpu({"nn.EmbeddingGrad",
                       "num_embeddings=11",
                       {I64({300}), {f.dtype, {300, 33}}},
                       {{0, Ids(300, 7)}}},
                      f.tolerance);
    ExpectCudaNearCpu({"nn.EmbeddingGrad",
                       "num_embeddings=3",
                       {I32({2, 1}), {f.dtype, {2, 1, 1}}},
                       {{0, {2, 2}}}},
                      f.tolerance);
  }
}

// ---- nn.CrossEntropy ----

TEST(NnNormsCuda, CrossEntropyForward) {
  WEIR_REQUIRE_GPU();
  for (const DtypeTolerance& f : GpuTolerances()) {
    const DataType t = f.dtype;
    const double tolerance = t == DT_F32 ? kF32LongReduction : f.tolerance;
    // An ignored position.
    ExpectCudaConformance({"nn.CrossEntropy",
                           "ignore_index=-1",
                           {{t, {2, 3, 5}}, I64({2, 3})},
                           {{1, {0, 4, -1, 2, 2, 1}}}},
                          tolerance);
    // A mask with a zero and a half.
    ExpectCudaConformance({"nn.CrossEntropy",
                           "",
                           {{t, {4, 5}}, I64({4}), {t, {4}}},
                           {{1, {0, 4, 3, 2}}, {2, {1, 0, 1, 0.5}}}},
                          tolerance);
    // A vocabulary of many blocks' worth per row, i32 targets at both ends.
    ExpectCudaConformance({"nn.CrossEntropy", "", {{t, {3, 5000}}, I32({3})}, {{1, {17, 4999, 0}}}},
                          tolerance);
    // More rows than the finishing block's threads.
    ExpectCudaConformance(
        {"nn.CrossEntropy", "", {{t, {1300, 33}}, I64({1300})}, {{1, Ids(1300, 33, 5)}}},
        tolerance);
    // Everything ignored: the loss is 0.
    ExpectCudaConformance({"nn.CrossEntropy", "", {{t, {2, 4}}, I64({2})}, {{1, {-100, -100}}}},
                          tolerance);
    ExpectCudaConformance({"nn.CrossEntropy", "", {{t, {1, 1}}, I64({1})}, {{1, {0}}}}, tolerance);
  }
}

TEST(NnNormsCuda, CrossEntropyTargetOutsideTheVocabularyGivesNaN) {
  WEIR_REQUIRE_GPU();
  auto loss =
      RunOp({"nn.CrossEntropy", "", {F32({2, 3}), I64({2})}, {{1, {0, 9}}}}, {}, nullptr, "cuda");
  ASSERT_TRUE(loss.ok()) << loss.status().ToString();
  EXPECT_TRUE(std::isnan((*loss)[0].To(DT_F64).ToVector()[0]));
}

TEST(NnNormsCuda, CrossEntropyGradients) {
  WEIR_REQUIRE_GPU();
  ExpectCudaGradients({"nn.CrossEntropy",
                       "ignore_index=-1",
                       {F64({2, 3, 5}), I64({2, 3})},
                       {{1, {0, 4, -1, 2, 2, 1}}},
                       {1}},
                      1e-9);
  ExpectCudaGradients({"nn.CrossEntropy",
                       "",
                       {F64({4, 5}), I64({4}), F64({4})},
                       {{1, {0, 4, 3, 2}}, {2, {1, 0, 1, 0.5}}},
                       {1, 2}},
                      1e-9);
  ExpectCudaGradients(
      {"nn.CrossEntropy", "", {F32({3, 5000}), I32({3})}, {{1, {17, 4999, 0}}}, {1}},
      kF32LongReduction);
  for (const DtypeTolerance& f : GpuTolerances()) {
    const DataType t = f.dtype;
    const TensorType dloss{t == DT_F64 ? DT_F64 : DT_F32, {}};
    ExpectCudaConformance({"nn.CrossEntropyGrad",
                           "ignore_index=-1",
                           {{t, {2, 3, 5}}, I64({2, 3}), dloss},
                           {{1, {0, 4, -1, 2, 2, 1}}, {2, {0.75}}}},
                          f.tolerance);
    ExpectCudaConformance({"nn.CrossEntropyGrad",
                           "",
                           {{t, {4, 5}}, I32({4}), dloss, {t, {4}}},
                           {{1, {0, 4, 3, 2}}, {2, {-1.5}}, {3, {1, 0, 1, 0.5}}}},
                          f.tolerance);
    ExpectCudaConformance({"nn.CrossEntropyGrad",
                           "",
                           {{t, {3, 5000}}, I64({3}), dloss},
                           {{1, {17, 4999, 0}}, {2, {1}}}},
                          f.tolerance);
    ExpectCudaConformance(
        {"nn.CrossEntropyGrad", "", {{t, {2, 4}}, I64({2}), dloss}, {{1, {-100, -100}}, {2, {1}}}},
        f.tolerance);
  }
}

// ---- nn.ArgmaxMatch ----

TEST(NnNormsCuda, ArgmaxMatch) {
  WEIR_REQUIRE_GPU();
  // Rows agreeing at 2, disagreeing, agreeing at 0 through a tie.
  const std::vector<double> a3 = {0.1, 0.2, 0.9, 0.5, 0.4, 0.0, 1.0, 1.0, 0.0};
  const std::vector<double> b3 = {0.0, 0.0, 3.0, 0.1, 0.7, 0.2, 2.0, 0.5, 0.5};
  // Wide rows: every third row of b is a's, the rest are independent.
  const int64_t rows = 37, width = 1000;
  std::mt19937_64 rng(5);
  std::uniform_real_distribution<double> u(-1, 1);
  std::vector<double> a(static_cast<size_t>(rows * width)), b(a.size());
  for (double& v : a) v = u(rng);
  for (size_t i = 0; i < b.size(); ++i) b[i] = i / width % 3 == 0 ? a[i] : u(rng);
  for (const DtypeTolerance& f : GpuTolerances()) {
    const DataType t = f.dtype;
    ExpectCudaConformance({"nn.ArgmaxMatch", "", {{t, {3, 3}}, {t, {3, 3}}}, {{0, a3}, {1, b3}}},
                          1e-7);
    // bf16 rounds many of these to equal values: ties.
    ExpectCudaConformance(
        {"nn.ArgmaxMatch", "", {{t, {rows, width}}, {t, {rows, width}}}, {{0, a}, {1, b}}}, 1e-7);
    ExpectCudaConformance({"nn.ArgmaxMatch", "", {{t, {3, 1}}, {t, {3, 1}}}}, 1e-7);
  }
  // NaNs are never the largest, except at index 0 where nothing beats them; −∞ rows pick 0.
  const double nan = std::numeric_limits<double>::quiet_NaN(), inf = INFINITY;
  const std::vector<double> a5 = {nan, 1, 2,   3,   1,   nan, 3,    2, 1,   1,
                                  1,   1, nan, nan, nan, nan, -inf, 5, nan, 5};
  const std::vector<double> b5 = {5, 1, 2,    3,    0,    0,    9, 1, 2, 1,
                                  2, 2, -inf, -inf, -inf, -inf, 0, 0, 0, 1};
  for (DataType t : {DT_F32, DT_F64})
    ExpectCudaConformance({"nn.ArgmaxMatch", "", {{t, {5, 4}}, {t, {5, 4}}}, {{0, a5}, {1, b5}}},
                          1e-7);
}

// ---- nn.Dropout ----

// The CPU's mask of call number `call`: weir/random.h's functions, as dropout.cc uses them.
std::vector<uint8_t> ReferenceMask(int64_t seed, uint64_t call, double rate, size_t n) {
  uint64_t stream = SplitMix64(static_cast<uint64_t>(seed) ^ SplitMix64(call));
  std::vector<uint8_t> mask(n);
  for (size_t i = 0; i < n; ++i)
    mask[i] = UnitInterval(SplitMix64(stream ^ static_cast<uint64_t>(i))) >= rate ? 1 : 0;
  return mask;
}

// The call number whose reference mask `mask` is, or -1.
int64_t CallOf(const std::vector<uint8_t>& mask, int64_t seed, double rate) {
  for (uint64_t call = 0; call < (1u << 16); ++call)
    if (ReferenceMask(seed, call, rate, mask.size()) == mask) return static_cast<int64_t>(call);
  return -1;
}

TEST(NnNormsCuda, DropoutMaskIsTheCpuFunction) {
  WEIR_REQUIRE_GPU();
  // Each device counts its own calls (the CPU's counter is private to its file), so the test
  // finds the call number each device's mask belongs to instead of assuming they are in step.
  const int64_t seed = 5;
  const double rate = 0.3;
  OpCase c{"nn.Dropout", "rate=0.3 seed=5", {F32({1000})}};
  std::vector<double> x = CaseInputs(c)[0].ToVector();
  for (const std::string device : {"cpu", "cuda"}) {
    SCOPED_TRACE(device);
    auto out = RunOp(c, {}, nullptr, device);
    ASSERT_TRUE(out.ok()) << out.status().ToString();
    std::vector<double> y = (*out)[0].To(DT_F64).ToVector(), m = (*out)[1].To(DT_F64).ToVector();
    std::vector<uint8_t> mask(m.begin(), m.end());
    EXPECT_GE(CallOf(mask, seed, rate), 0) << "the mask is not SplitMix64's of any call";
    const float keep = static_cast<float>(1.0 / (1.0 - rate));
    for (size_t i = 0; i < x.size(); ++i) {
      const float want = mask[i] ? static_cast<float>(x[i]) * keep : 0.f;
      EXPECT_EQ(static_cast<float>(y[i]), want) << i;
    }
  }
}

TEST(NnNormsCuda, DropoutConformance) {
  WEIR_REQUIRE_GPU();
  std::vector<double> mask(5 * 67);
  for (size_t i = 0; i < mask.size(); ++i) mask[i] = i % 3 == 1 ? 0 : 1;
  for (const DtypeTolerance& f : GpuTolerances()) {
    // Rates whose masks do not depend on the call: keep all, drop all.
    ExpectCudaConformance({"nn.Dropout", "rate=0", {{f.dtype, {3, 67}}}}, f.tolerance);
    ExpectCudaConformance({"nn.Dropout", "rate=1 seed=3", {{f.dtype, {3, 67}}}}, f.tolerance);
    ExpectCudaConformance(
        {"nn.DropoutGrad", "rate=0.25", {{f.dtype, {5, 67}}, U8({5, 67})}, {{1, mask}}},
        f.tolerance);
    ExpectCudaConformance({"nn.DropoutGrad", "rate=1", {{f.dtype, {1}}, U8({1})}, {{1, {1}}}},
                          f.tolerance);
  }
  ExpectCudaGradients({"nn.Dropout", "rate=0.0", {F64({3, 4})}}, 1e-9);
}

// ---- nn.SegmentIds ----

TEST(NnNormsCuda, SegmentIds) {
  WEIR_REQUIRE_GPU();
  std::mt19937_64 rng(11);
  std::uniform_int_distribution<int> token(0, 4);
  auto tokens = [&](size_t n) {
    std::vector<double> v(n);
    for (double& t : v) t = token(rng);
    return v;
  };
  // Rows of one tile, one tile and one, many tiles; separator 2 is a fifth of the tokens.
  for (const Shape& s : std::vector<Shape>{{1, 1}, {3, 256}, {2, 257}, {3, 700}, {1, 5000}}) {
    const size_t n = static_cast<size_t>(NumElements(s));
    ExpectCudaConformance({"nn.SegmentIds", "separator=2", {I64(s)}, {{0, tokens(n)}}}, 0);
    ExpectCudaConformance({"nn.SegmentIds", "separator=4", {I32(s)}, {{0, tokens(n)}}}, 0);
    ExpectCudaConformance({"nn.SegmentIds", "separator=-1", {I64(s)}, {{0, tokens(n)}}}, 0);
  }
}

}  // namespace
}  // namespace weir::testing
