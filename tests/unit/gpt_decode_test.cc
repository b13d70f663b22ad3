// Cached decoding of the GPT of graphs/models/gpt.pbtxt (GptBlockDecode over a K/V cache,
// driven by tools/bench/gpt_decoder.h) against the training function's full forward pass.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>

#include "../../tools/bench/gpt_decoder.h"
#include "test_util.h"
#include "weir/runtime/program.h"

namespace weir::testing {
namespace {

// Grouped-query attention (4 query heads over 2 K/V heads) in f64, with weights large enough
// that the logits differ clearly from token to token.
std::map<std::string, AttrValue> TinyGpt() {
  std::map<std::string, AttrValue> a;
  auto i = [&](const char* k, int64_t v) { a[k].set_i(v); };
  i("vocab", 13);
  i("n_layers", 2);
  i("d_model", 16);
  i("n_heads", 4);
  i("n_kv_heads", 2);
  i("q_dim", 16);
  i("kv_dim", 8);
  i("d_ff", 24);
  a["init_std"].set_f(0.4);
  a["out_std"].set_f(0.4);
  a["T"].set_type(DT_F64);
  return a;
}

std::string GptGraph() { return std::string(WEIR_SOURCE_DIR) + "/graphs/models/gpt.pbtxt"; }

// Prefill then one token at a time over the K/V cache gives the logits of one full forward pass.
TEST(GptDecode, CachedDecodingMatchesTheFullForward) {
  const int64_t batch = 2, time = 7, prefill = 3;
  auto graph = LoadTestGraph(GptGraph());
  ASSERT_TRUE(graph.ok()) << graph.status().ToString();
  std::vector<TensorType> types = {{DT_I64, {batch, time}}, {DT_I64, {batch, time}}};
  ProgramOptions options;
  options.outputs = {"logits"};
  auto full = Program::Build(*graph, "Gpt", TinyGpt(), types, TestRegistry(), options);
  ASSERT_TRUE(full.ok()) << full.status().ToString();
  ParamStore params;
  params.Initialize((*full)->params(), 5);
  std::vector<Tensor> inputs = RandomTokens(batch, time, 13, 17);
  auto reference = (*full)->Run(inputs, params);
  ASSERT_TRUE(reference.ok()) << reference.status().ToString();
  const Tensor& logits = reference->values[0];  // [batch, time, vocab]
  int64_t vocab = logits.dim(2);

  auto programs = std::make_shared<deepseek::DecodePrograms>();
  bench::GptDecoder decoder(*graph, TinyGpt(), TestRegistry(), params, programs);
  double worst = 0, spread = 0;
  for (int64_t begin = 0; begin < time;) {
    int64_t end = begin == 0 ? prefill : begin + 1;
    auto out = decoder.Feed(inputs[0].Slice(1, begin, end).Contiguous());
    ASSERT_TRUE(out.ok()) << out.status().ToString();
    ASSERT_EQ(out->shape(), (Shape{batch, end - begin, vocab}));
    for (int64_t b = 0; b < batch; ++b)
      for (int64_t t = begin; t < end; ++t)
        for (int64_t v = 0; v < vocab; ++v) {
          double want = logits.At((b * time + t) * vocab + v);
          double got = out->At((b * (end - begin) + (t - begin)) * vocab + v);
          worst = std::max(worst, std::abs(want - got));
          spread = std::max(spread, std::abs(want - logits.At(b * time * vocab + v)));
        }
    begin = end;
  }
  EXPECT_EQ(decoder.position(), time);
  EXPECT_LT(worst, 1e-10);
  EXPECT_GT(spread, 1e-3);  // later positions' logits are not the first one's

  // Programs: one block program per step shared by both layers (5 steps: the prefill and 4
  // single tokens), and the embedding and head built once per input shape (prefill, single).
  EXPECT_EQ(programs->builds(), 5 + 2 + 2);
  // Hits: the second layer at every step, and the embedding and head at the 3 later singles.
  EXPECT_EQ(programs->hits(), 5 + 3 * 2);
}

// A second generation of the same prompt length over the same programs builds nothing.
TEST(GptDecode, RepeatedGenerationsReuseTheirPrograms) {
  auto graph = LoadTestGraph(GptGraph());
  ASSERT_TRUE(graph.ok()) << graph.status().ToString();
  std::vector<TensorType> types = {{DT_I64, {1, 4}}, {DT_I64, {1, 4}}};
  auto full = Program::Build(*graph, "Gpt", TinyGpt(), types, TestRegistry(), {});
  ASSERT_TRUE(full.ok()) << full.status().ToString();
  ParamStore params;
  params.Initialize((*full)->params(), 5);
  Tensor prompt = RandomTokens(1, 4, 13, 3)[0];
  Tensor token = Tensor::FromValues(DT_I64, {1, 1}, {2});
  auto programs = std::make_shared<deepseek::DecodePrograms>();
  std::vector<Tensor> last;
  for (int g = 0; g < 2; ++g) {
    bench::GptDecoder decoder(*graph, TinyGpt(), TestRegistry(), params, programs);
    ASSERT_TRUE(decoder.Feed(prompt).ok());
    auto out = decoder.Feed(token);
    ASSERT_TRUE(out.ok()) << out.status().ToString();
    last.push_back(*out);
  }
  EXPECT_EQ(programs->builds(), 2 + 2 + 2);  // per step: block, embedding, head
  EXPECT_EQ(last[0].ToVector(), last[1].ToVector());
}

// Decoding in bf16 (T=bf16) over a bf16 copy of the f32 masters made once (ComputeParams): the
// weights become bf16, the masters stay as they were, the logits are those of decoding over the
// masters (converted by the programs at every step: the same conversion) and follow the f32
// model's within bf16's precision.
TEST(GptDecode, Bf16DecodingOverParamsConvertedOnce) {
  const int64_t time = 6, prefill = 3;
  auto graph = LoadTestGraph(GptGraph());
  ASSERT_TRUE(graph.ok()) << graph.status().ToString();
  std::map<std::string, AttrValue> f32 = TinyGpt(), bf16 = TinyGpt();
  f32["T"].set_type(DT_F32);
  bf16["T"].set_type(DT_BF16);
  std::vector<TensorType> types = {{DT_I64, {1, time}}, {DT_I64, {1, time}}};
  ProgramOptions options;
  options.outputs = {"logits"};
  auto full = Program::Build(*graph, "Gpt", f32, types, TestRegistry(), options);
  ASSERT_TRUE(full.ok()) << full.status().ToString();
  auto typed = Program::Build(*graph, "Gpt", bf16, types, TestRegistry(), options);
  ASSERT_TRUE(typed.ok()) << typed.status().ToString();
  ParamStore masters;
  masters.Initialize((*full)->params(), 5);
  ParamStore converted = deepseek::ComputeParams(masters, (*typed)->params());
  ASSERT_EQ(converted.values().size(), masters.values().size());
  const Tensor* weight = converted.Find("layers.0.wq.weight");
  ASSERT_NE(weight, nullptr);
  EXPECT_EQ(weight->dtype(), DT_BF16);
  EXPECT_EQ(masters.Find("layers.0.wq.weight")->dtype(), DT_F32);
  for (const ParamInfo& info : (*typed)->params())
    EXPECT_EQ(converted.Find(info.name)->dtype(), info.type.dtype) << info.name;

  std::vector<Tensor> inputs = RandomTokens(1, time, 13, 17);
  auto reference = (*full)->Run(inputs, masters);
  ASSERT_TRUE(reference.ok()) << reference.status().ToString();
  const Tensor& logits = reference->values[0];  // [1, time, vocab]
  int64_t vocab = logits.dim(2);
  bench::GptDecoder once(*graph, bf16, TestRegistry(), converted);
  bench::GptDecoder every_step(*graph, bf16, TestRegistry(), masters);
  double worst = 0, largest = 0;
  for (int64_t begin = 0; begin < time;) {
    int64_t end = begin == 0 ? prefill : begin + 1;
    Tensor step = inputs[0].Slice(1, begin, end).Contiguous();
    auto got = once.Feed(step);
    ASSERT_TRUE(got.ok()) << got.status().ToString();
    auto again = every_step.Feed(step);
    ASSERT_TRUE(again.ok()) << again.status().ToString();
    ASSERT_EQ(got->dtype(), DT_BF16);
    EXPECT_EQ(got->ToVector(), again->ToVector()) << "position " << begin;
    for (int64_t t = begin; t < end; ++t)
      for (int64_t v = 0; v < vocab; ++v) {
        double want = logits.At(t * vocab + v);
        worst = std::max(worst, std::abs(want - got->At((t - begin) * vocab + v)));
        largest = std::max(largest, std::abs(want));
      }
    begin = end;
  }
  EXPECT_GT(largest, 0.5);
  // Two layers of bf16 rounding (8 significant bits) at every op: a few percent of the largest.
  EXPECT_LT(worst, 0.05 * largest) << "largest " << largest;
}

}  // namespace
}  // namespace weir::testing
