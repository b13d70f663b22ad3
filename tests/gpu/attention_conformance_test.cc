// nn.Attention and nn.AttentionGrad on CUDA (plugins/nn/cuda/attention.cu) against the CPU
// kernels, in f32, bf16 and f64: causal and not, grouped-query heads, dv != d (MLA's 192/128),
// a cached prefix (more keys than queries), queries before the first key (fewer keys), packed
// documents (segments), sizes that are no multiple of the kernels' tiles, several tiles and CPU
// blocks, one position, head dims up to 256.
//
// How the comparisons stay meaningful at per-element relative tolerances:
//  - v is positive, so each output is an average of positive values, never a sum that cancels
//    to near zero (where two devices' last-bit differences would be a large relative error).
//  - The backward kernel is compared on its own, from the same o and lse (the CPU forward's) on
//    both devices. End to end, a bf16 output that rounds one ulp apart on the two devices moves
//    delta = rowsum(do ⊙ o) for its whole row, and with it every dq element of the row; near-zero
//    elements then differ by far more than 2e-2. So bf16 runs end to end only on small cases, and
//    the larger ones run end to end in f32 and f64.
//  - Gradients are compared as CheckDeviceGradients does: relative, at least absolute
//    tolerance · 1e-3 (a query that sees one key has dq = 0 up to rounding on both devices).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "../unit/paged_attention_cases.h"
#include "weir/testing/gpu.h"
#include "weir/testing/op_check.h"

namespace weir::testing {
namespace {

// One attention problem; dtype-free.
struct Problem {
  std::string name;
  int64_t batch, time, keys, heads, kv_heads, d, dv;
  std::string attrs;                       // "" is causal with scale 1/√d
  std::vector<std::vector<int64_t>> docs;  // per batch row, document lengths; empty: no segments
};

constexpr int kSegmentsForward = 3, kSegmentsBackward = 6;

struct Tolerance {
  DataType dtype;
  double forward, backward;  // the backward's f32 sums are long: 1e-3
};
const std::vector<Tolerance>& Tolerances() {
  static const std::vector<Tolerance> all = {
      {DT_F32, 1e-4, 1e-3}, {DT_BF16, 2e-2, 2e-2}, {DT_F64, 1e-9, 1e-9}};
  return all;
}

std::string Describe(const Problem& p, DataType dtype) {
  return p.name + " (" + DataTypeName(dtype) + ", batch " + std::to_string(p.batch) + ", time " +
         std::to_string(p.time) + ", keys " + std::to_string(p.keys) + ", heads " +
         std::to_string(p.heads) + "/" + std::to_string(p.kv_heads) + ", d " + std::to_string(p.d) +
         ", dv " + std::to_string(p.dv) + ", attrs [" + p.attrs + "])";
}

// Values in [0.25, 1], deterministic in the seed.
std::vector<double> Positive(int64_t n, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<double> u(0.25, 1.0);
  std::vector<double> v(static_cast<size_t>(n));
  for (double& x : v) x = u(rng);
  return v;
}

// Segment ids [batch, time] from document lengths; ids start at 3 and step by 2 (any
// non-decreasing ids will do).
std::vector<double> SegmentIds(const Problem& p) {
  std::vector<double> ids;
  for (const auto& row : p.docs) {
    int64_t total = 0;
    for (size_t doc = 0; doc < row.size(); ++doc) {
      ids.insert(ids.end(), static_cast<size_t>(row[doc]), 3.0 + 2.0 * static_cast<double>(doc));
      total += row[doc];
    }
    EXPECT_EQ(total, p.time) << p.name << ": documents must fill each row";
  }
  return ids;
}

// nn.Attention over q, k (random in [-1, 1]), v (positive) and the segments.
OpCase ForwardCase(const Problem& p, DataType dtype) {
  OpCase c;
  c.op = "nn.Attention";
  c.attrs = p.attrs;
  c.inputs = {{dtype, {p.batch, p.time, p.heads, p.d}},
              {dtype, {p.batch, p.keys, p.kv_heads, p.d}},
              {dtype, {p.batch, p.keys, p.kv_heads, p.dv}}};
  c.values[2] = Positive(p.batch * p.keys * p.kv_heads * p.dv, 11);
  if (!p.docs.empty()) {
    c.inputs.push_back({DT_I64, {p.batch, p.time}});
    c.values[kSegmentsForward] = SegmentIds(p);
    c.no_grad = {kSegmentsForward};
  }
  return c;
}

// The forward pass through CheckDeviceConformance (outputs relative to their own values).
void ExpectForwardConformance(const Problem& p) {
  for (const Tolerance& t : Tolerances()) {
    SCOPED_TRACE(Describe(p, t.dtype));
    std::vector<std::string> not_runnable;
    std::vector<std::string> compared =
        CheckDeviceConformance(ForwardCase(p, t.dtype), t.forward, &not_runnable);
    EXPECT_NE(std::find(compared.begin(), compared.end(), "cuda"), compared.end())
        << "not compared on cuda";
  }
}

// nn.AttentionGrad on both devices from the same q, k, v, o, lse (the CPU forward's) and random
// do.
void ExpectBackwardConformance(const Problem& p) {
  for (const Tolerance& t : Tolerances()) {
    SCOPED_TRACE(Describe(p, t.dtype));
    OpCase forward = ForwardCase(p, t.dtype);
    std::vector<Tensor> in = CaseInputs(forward);
    auto saved = RunOp(forward, {}, nullptr, "cpu");
    ASSERT_TRUE(saved.ok()) << saved.status().ToString();
    const Tensor &o = (*saved)[0], &lse = (*saved)[1];
    OpCase c;
    c.op = "nn.AttentionGrad";
    c.attrs = p.attrs;
    c.seed = 7;  // do differs from q
    for (int i = 0; i < 3; ++i) {
      c.inputs.push_back({in[static_cast<size_t>(i)].dtype(), in[static_cast<size_t>(i)].shape()});
      c.values[i] = in[static_cast<size_t>(i)].To(DT_F64).ToVector();
    }
    c.inputs.push_back({o.dtype(), o.shape()});
    c.values[3] = o.To(DT_F64).ToVector();
    c.inputs.push_back({lse.dtype(), lse.shape()});
    c.values[4] = lse.To(DT_F64).ToVector();
    c.inputs.push_back({o.dtype(), o.shape()});  // do, random
    if (!p.docs.empty()) {
      c.inputs.push_back({DT_I64, {p.batch, p.time}});
      c.values[kSegmentsBackward] = SegmentIds(p);
    }
    ExpectCudaNearCpu(c, t.backward, 1e-3);
  }
}

// The problems every test runs; the first three are small enough for bf16 end to end.
const std::vector<Problem>& Problems() {
  static const std::vector<Problem> all = {
      {"small causal, grouped-query, dv != d", 2, 9, 9, 4, 2, 5, 3, "", {}},
      {"small cached prefix", 2, 9, 12, 4, 2, 5, 3, "", {}},
      {"small documents", 2, 12, 12, 2, 1, 4, 3, "", {{5, 7}, {1, 11}}},
      {"causal, grouped-query, odd sizes", 2, 67, 67, 4, 2, 5, 7, "", {}},
      {"cached prefix", 2, 67, 100, 4, 2, 5, 5, "", {}},
      {"not causal, explicit scale", 2, 67, 67, 4, 2, 5, 7, "causal=false scale=0.7", {}},
      {"not causal, more keys", 2, 67, 300, 4, 2, 64, 32, "causal=false scale=0.3", {}},
      {"causal documents across tiles and CPU blocks",
       2,
       300,
       300,
       2,
       1,
       8,
       4,
       "",
       {{100, 60, 120, 20}, {1, 127, 2, 170}}},
      {"documents, not causal",
       2,
       340,
       340,
       4,
       2,
       5,
       6,
       "causal=false",
       {{130, 200, 10}, {257, 83}}},
      {"MLA head dims", 1, 70, 70, 2, 1, 192, 128, "", {}},
      {"MLA head dims with a cache", 2, 20, 24, 2, 1, 192, 128, "", {}},
      {"many key blocks", 1, 600, 600, 1, 1, 16, 24, "", {}},
      {"head dims 64, several tiles", 2, 200, 200, 2, 2, 64, 64, "", {}},
      {"head dims 256", 1, 40, 50, 1, 1, 256, 256, "causal=false", {}},
      {"one position", 1, 1, 1, 1, 1, 3, 2, "", {}},
  };
  return all;
}

// Causal with fewer keys than queries: the first queries see no key (o = 0, lse = −∞).
const Problem& QueriesBeforeTheKeys() {
  static const Problem p{"queries before the first key", 2, 67, 30, 4, 2, 5, 7, "", {}};
  return p;
}

TEST(CudaAttention, ForwardMatchesCpu) {
  WEIR_REQUIRE_GPU();
  for (const Problem& p : Problems()) ExpectForwardConformance(p);
}

TEST(CudaAttention, ForwardQueriesThatSeeNoKey) {
  WEIR_REQUIRE_GPU();
  const Problem& p = QueriesBeforeTheKeys();
  for (const Tolerance& t : Tolerances()) {
    SCOPED_TRACE(Describe(p, t.dtype));
    OpCase c = ForwardCase(p, t.dtype);
    ExpectCudaNearCpu(c, t.forward, 1e-12);
    // The CPU's convention, checked on cuda's own output: o is 0 and lse is −∞ there.
    auto gpu = RunOp(c, {}, nullptr, "cuda");
    ASSERT_TRUE(gpu.ok()) << gpu.status().ToString();
    const Tensor lse = (*gpu)[1].To(DT_F64);  // [batch, heads, time]
    const Tensor o = (*gpu)[0].To(DT_F64);    // [batch, time, heads, dv]
    const int64_t blind = p.time - p.keys;    // queries before the first key
    for (int64_t b = 0; b < p.batch; ++b) {
      for (int64_t h = 0; h < p.heads; ++h) {
        EXPECT_EQ(lse.At((b * p.heads + h) * p.time + blind - 1),
                  -std::numeric_limits<double>::infinity());
        EXPECT_TRUE(std::isfinite(lse.At((b * p.heads + h) * p.time + blind)));
        EXPECT_EQ(o.At(((b * p.time + blind - 1) * p.heads + h) * p.dv), 0.0);
      }
    }
  }
}

TEST(CudaAttention, BackwardMatchesCpu) {
  WEIR_REQUIRE_GPU();
  for (const Problem& p : Problems()) ExpectBackwardConformance(p);
  ExpectBackwardConformance(QueriesBeforeTheKeys());
}

TEST(CudaAttention, GradientsThroughAutodiff) {
  WEIR_REQUIRE_GPU();
  std::vector<Problem> problems = Problems();
  problems.push_back(QueriesBeforeTheKeys());
  for (size_t i = 0; i < problems.size(); ++i) {
    const Problem& p = problems[i];
    for (const Tolerance& t : Tolerances()) {
      if (t.dtype == DT_BF16 && i >= 3) continue;  // see the top of the file
      SCOPED_TRACE(Describe(p, t.dtype));
      EXPECT_GT(CheckDeviceGradients(ForwardCase(p, t.dtype), "cuda", t.backward), 0);
    }
  }
}

}  // namespace
}  // namespace weir::testing

namespace weir::testing {
namespace {

// The split-key kernel (cuda/attention_decode.cu): decoding (a few queries over a long cache)
// and head dims above the flash kernels' 256, MLA's absorbed decode among them (one latent head
// of 576 for the keys, its first 512 as values).
TEST(CudaAttention, SplitKeyAttentionMatchesCpu) {
  WEIR_REQUIRE_GPU();
  const std::vector<Problem> decoding = {
      {"decode, grouped-query, two queries", 2, 2, 700, 8, 2, 64, 64, "", {}},
      {"decode, not causal", 1, 3, 260, 4, 4, 128, 96, "causal=false scale=0.2", {}},
      {"decode, one key split per tile", 3, 1, 256, 2, 1, 5, 7, "", {}},
  };
  for (const Problem& p : decoding) ExpectForwardConformance(p);
  const std::vector<Problem> large = {
      {"MLA absorbed decode", 2, 1, 300, 16, 1, 576, 512, "", {}},
      {"MLA absorbed, a few queries", 1, 4, 90, 20, 1, 576, 512, "", {}},
      {"large head dims, prefill", 1, 20, 20, 2, 1, 320, 300, "", {}},
  };
  for (const Problem& p : large) {
    for (DataType dtype : {DT_F32, DT_BF16}) {  // f64 tiles of these dims exceed shared memory
      SCOPED_TRACE(Describe(p, dtype));
      ExpectCudaConformance(ForwardCase(p, dtype), dtype == DT_F32 ? 1e-4 : 2e-2);
    }
  }
}

}  // namespace
}  // namespace weir::testing

namespace weir::testing {
namespace {

// nn.PagedLatentAttention's kernel (the split-key kernels over the paged cache): MLA's absorbed
// decode over blocks of 64 scattered through the cache, sequences of different lengths (partial
// last blocks, none cached), two new tokens (an MTP verification step), and small dims in f64.
TEST(CudaPagedLatentAttention, MatchesCpu) {
  WEIR_REQUIRE_GPU();
  const std::vector<PagedProblem> mla = {
      {"MLA decode step", 1, 16, 576, 512, 64, {300, 64, 0, 1}, "scale=0.05", true},
      {"MLA, two new tokens", 2, 8, 576, 512, 64, {129, 1000}, "", true},
  };
  for (const PagedProblem& p : mla) {
    for (DataType dtype : {DT_F32, DT_BF16}) {  // f64 tiles of these dims exceed shared memory
      SCOPED_TRACE(p.name + " in " + DataTypeName(dtype));
      ExpectCudaNearCpu(PagedCase(p, dtype), dtype == DT_F32 ? 1e-4 : 2e-2, 1e-3);
    }
  }
  const PagedProblem small{
      "small dims, prefill after a cache", 20, 4, 9, 6, 16, {40, 0, 77}, "", true};
  for (const DtypeTolerance& t : GpuTolerances()) {
    SCOPED_TRACE(small.name + " in " + DataTypeName(t.dtype));
    ExpectCudaNearCpu(PagedCase(small, t.dtype), t.tolerance, 1e-3);
  }
}

// The kernel cannot report a block the cache lacks without a wait: that sequence's outputs are
// NaN, and the others' are unharmed.
TEST(CudaPagedLatentAttention, BadBlockGivesNanForItsSequenceOnly) {
  WEIR_REQUIRE_GPU();
  const PagedProblem p{"a bad block", 1, 2, 8, 8, 4, {6, 5}, "", true};
  OpCase c = PagedCase(p, DT_F32);
  auto good = RunOp(c, {}, nullptr, "cuda");
  ASSERT_TRUE(good.ok()) << good.status().ToString();
  c.values[3][0] = 99;  // sequence 0's first block
  auto out = RunOp(c, {}, nullptr, "cuda");
  ASSERT_TRUE(out.ok()) << out.status().ToString();
  const Tensor &o = (*out)[0], &expected = (*good)[0];  // [2, 1, 2, 8]
  for (int64_t i = 0; i < 16; ++i) EXPECT_TRUE(std::isnan(o.At(i))) << i;
  for (int64_t i = 16; i < 32; ++i) EXPECT_EQ(o.At(i), expected.At(i)) << i;
}

}  // namespace
}  // namespace weir::testing
