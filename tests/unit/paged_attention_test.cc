// nn.PagedLatentAttention on the CPU: against nn.Attention over the same keys gathered densely
// (sequences of different lengths, blocks scattered over the cache, partial last blocks, no cache
// at all, a decode step whose keys are split across tasks and a prefill whose rows are), and its
// errors for bad tables, lengths and shapes.
#include <gtest/gtest.h>

#include <cmath>

#include "paged_attention_cases.h"
#include "weir/testing/op_check.h"

namespace weir::testing {
namespace {

const std::vector<PagedProblem>& Problems() {
  static const std::vector<PagedProblem> all = {
      {"decode step over long caches (key runs split across tasks)",
       1,
       4,
       9,
       6,
       16,
       {300, 17, 0},
       ""},
      {"prefill after a cache (row blocks split across tasks)", 70, 3, 7, 5, 8, {21, 64}, ""},
      {"MLA-like: value is most of the key, explicit scale", 2, 8, 20, 16, 4, {9, 12}, "scale=0.2"},
      {"no cache", 5, 2, 6, 6, 4, {0, 0}, ""},
      {"one token per block", 3, 2, 5, 3, 1, {7, 2}, ""},
  };
  return all;
}

void ExpectMatchesGathered(const PagedProblem& p, DataType dtype, double tolerance) {
  SCOPED_TRACE(p.name + " in " + DataTypeName(dtype));
  OpCase paged = PagedCase(p, dtype);
  std::vector<Tensor> in = CaseInputs(paged);
  std::map<int, Tensor> given;
  for (size_t i = 0; i < in.size(); ++i) given[static_cast<int>(i)] = in[i];
  auto out = RunOp(paged, given);
  ASSERT_TRUE(out.ok()) << out.status().ToString();
  const Tensor o = (*out)[0].To(DT_F64), lse = (*out)[1].To(DT_F64);
  for (int64_t b = 0; b < static_cast<int64_t>(p.lengths.size()); ++b) {
    auto ref = RunOp(GatheredCase(p, in, b));
    ASSERT_TRUE(ref.ok()) << ref.status().ToString();
    const Tensor ro = (*ref)[0].To(DT_F64), rl = (*ref)[1].To(DT_F64);
    const int64_t per_o = ro.numel(), per_lse = rl.numel();
    for (int64_t i = 0; i < per_o; ++i) {
      ASSERT_NEAR(o.At(b * per_o + i), ro.At(i), tolerance * (1 + std::abs(ro.At(i))))
          << "sequence " << b << ", o element " << i;
    }
    for (int64_t i = 0; i < per_lse; ++i) {
      ASSERT_NEAR(lse.At(b * per_lse + i), rl.At(i), tolerance * (1 + std::abs(rl.At(i))))
          << "sequence " << b << ", lse element " << i;
    }
  }
}

TEST(PagedLatentAttention, MatchesAttentionOverTheGatheredKeys) {
  for (const PagedProblem& p : Problems()) {
    ExpectMatchesGathered(p, DT_F64, 1e-12);
    ExpectMatchesGathered(p, DT_F32, 1e-5);
  }
}

TEST(PagedLatentAttention, Bf16) {
  // bf16 rounds p before p·v on both paths, in different block orders: a few ulps.
  ExpectMatchesGathered(Problems()[0], DT_BF16, 3e-2);
  ExpectMatchesGathered(Problems()[1], DT_BF16, 3e-2);
}

// The error of running `c` with the given fixed value of input i changed.
std::string ErrorWith(OpCase c, int input, std::vector<double> values) {
  c.values[input] = std::move(values);
  auto out = RunOp(c);
  return out.ok() ? "no error" : out.status().ToString();
}

TEST(PagedLatentAttention, RefusesBadTablesAndLengths) {
  PagedProblem p{"two sequences", 1, 2, 4, 4, 4, {5, 3}, ""};
  OpCase c = PagedCase(p, DT_F64);  // table [2, 3]; 3 blocks used, 3 spare
  ASSERT_TRUE(RunOp(c).ok());
  std::vector<double> table = c.values[3];
  EXPECT_NE(ErrorWith(c, 4, {13, 3})
                .find("sequence 0 has 13 cached tokens; its block table "
                      "holds 0 to 12"),
            std::string::npos)
      << ErrorWith(c, 4, {13, 3});
  EXPECT_NE(ErrorWith(c, 4, {5, -1}).find("sequence 1 has -1 cached tokens"), std::string::npos);
  table[1] = 7;  // sequence 0's second block
  EXPECT_NE(ErrorWith(c, 3, table).find("block_table[0, 1] is 7; the cache has 6 blocks"),
            std::string::npos)
      << ErrorWith(c, 3, table);
  table = c.values[3];
  table[3] = -1;  // sequence 1's first block
  EXPECT_NE(ErrorWith(c, 3, table).find("block_table[1, 0] is -1"), std::string::npos);
}

TEST(PagedLatentAttention, RefusesBadShapes) {
  auto error = [](OpCase c) {
    auto out = RunOp(c);
    return out.ok() ? std::string("no error") : out.status().ToString();
  };
  PagedProblem p{"one sequence", 2, 2, 4, 3, 4, {5}, ""};
  OpCase c = PagedCase(p, DT_F32);
  OpCase wrong_kv = c;
  wrong_kv.inputs[1].shape = {1, 2, 5};
  EXPECT_NE(error(wrong_kv).find("kv must be [batch, time, d]"), std::string::npos)
      << error(wrong_kv);
  OpCase wrong_cache = c;
  wrong_cache.inputs[2].shape = {3, 4, 5};
  EXPECT_NE(error(wrong_cache).find("cache must be [blocks, block_size, d]"), std::string::npos);
  OpCase wrong_table = c;
  wrong_table.inputs[3].dtype = DT_F32;
  wrong_table.values.erase(3);
  EXPECT_NE(error(wrong_table).find("block_table must be i64 [batch, max_blocks]"),
            std::string::npos);
  OpCase wide = c;
  wide.attrs = "value_dim=5";
  EXPECT_NE(error(wide).find("value_dim 5 is wider than the keys"), std::string::npos)
      << error(wide);
  OpCase mixed = c;
  mixed.inputs[2].dtype = DT_F64;
  EXPECT_NE(error(mixed).find("q, kv and cache dtypes differ"), std::string::npos);
}

TEST(PagedLatentAttention, HasNoGradient) {
  // Decoding only: differentiating through it fails and names the op.
  OpCase c = PagedCase({"one sequence", 2, 2, 4, 3, 4, {5}, ""}, DT_F64);
  auto graph = OpGraph(c, /*with_loss=*/true);
  ASSERT_TRUE(graph.ok()) << graph.status().ToString();
  std::vector<TensorType> types = c.inputs;
  types.push_back({DT_F64, {1, 2, 2, 3}});  // the loss weights of o
  ProgramOptions options;
  options.loss = "loss";
  options.input_grads = {"x0"};
  auto program = Program::Build(*graph, "F", {}, types, TestRegistry(), options);
  ASSERT_FALSE(program.ok());
  EXPECT_NE(program.status().ToString().find("'nn.PagedLatentAttention' has no gradient"),
            std::string::npos)
      << program.status().ToString();
}

}  // namespace
}  // namespace weir::testing
