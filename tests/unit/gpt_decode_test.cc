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

}  // namespace
}  // namespace weir::testing
