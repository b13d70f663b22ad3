// The DeepSeek-V3 model file (graphs/models/deepseek_v3.pbtxt) through Programs: a tiny model with
// MLA, a dense and a MoE layer (groups, correction bias, shared expert) and MTP in f64 against
// finite differences; the V2-Lite query and softmax gating; a dense-only model; parameter names.
#include <gtest/gtest.h>

#include <algorithm>
#include <random>
#include <utility>

#include "decoder.h"
#include "test_util.h"
#include "tiny_v3.h"
#include "weir/runtime/program.h"

namespace weir::testing {
namespace {

std::map<std::string, AttrValue> TinyV3(const std::string& dtype) {
  return TinyV3Attrs(*ParseDataType(dtype));
}

StatusOr<std::shared_ptr<const Program>> Build(std::map<std::string, AttrValue> attrs,
                                               int64_t batch, int64_t time,
                                               const std::string& loss = "loss") {
  WEIR_ASSIGN_OR_RETURN(Graph g, LoadTestGraph(TestGraph("good/deepseek_import.pbtxt")));
  ProgramOptions options;
  options.loss = loss;
  std::vector<TensorType> types = {{DT_I64, {batch, time}}, {DT_I64, {batch, time}}};
  return Program::Build(g, "DeepseekV3", attrs, types, TestRegistry(), options);
}

TEST(TinyDeepseekV3, ParametersFollowTheModelPyNames) {
  auto p = Build(TinyV3("f32"), 2, 6);
  ASSERT_TRUE(p.ok()) << p.status().ToString();
  std::map<std::string, Shape> shapes;
  for (const ParamInfo& info : (*p)->params()) shapes[info.name] = info.type.shape;
  std::map<std::string, Shape> expected = {{"embed.weight", {13, 8}},
                                           {"dense_layers.0.attn.q.wq_a.weight", {6, 8}},
                                           {"dense_layers.0.attn.q.q_norm.weight", {6}},
                                           {"dense_layers.0.attn.q.wq_b.weight", {2 * (4 + 4), 6}},
                                           {"dense_layers.0.attn.wkv_a.weight", {4 + 4, 8}},
                                           {"dense_layers.0.attn.kv_norm.weight", {4}},
                                           {"dense_layers.0.attn.wkv_b.weight", {2 * (4 + 3), 4}},
                                           {"dense_layers.0.attn.wo.weight", {8, 2 * 3}},
                                           {"dense_layers.0.ffn.w1.weight", {12, 8}},
                                           {"moe_layers.0.ffn.gate.weight", {4, 8}},
                                           {"moe_layers.0.ffn.router.bias", {4}},
                                           {"moe_layers.0.ffn.experts.w1", {4, 4, 8}},
                                           {"moe_layers.0.ffn.experts.w2", {4, 8, 4}},
                                           {"moe_layers.0.ffn.shared_experts.w1.weight", {4, 8}},
                                           {"mtp.0.eh_proj.weight", {8, 16}},
                                           {"mtp.0.block.ffn.experts.w3", {4, 4, 8}},
                                           {"norm.weight", {8}},
                                           {"head.weight", {13, 8}}};
  for (const auto& [name, shape] : expected) {
    ASSERT_TRUE(shapes.count(name)) << name;
    EXPECT_EQ(shapes[name], shape) << name;
  }
  for (const ParamInfo& info : (*p)->params())
    EXPECT_EQ(info.trainable(), !info.name.ends_with("router.bias")) << info.name;
}

TEST(TinyDeepseekV3, WholeModelGradientMatchesFiniteDifferences) {
  auto p = Build(TinyV3("f64"), 2, 6);
  ASSERT_TRUE(p.ok()) << p.status().ToString();
  ParamStore params;
  params.Initialize((*p)->params(), 3);
  // A bias that steers the selection: it must not change the gradients' agreement.
  Tensor* bias = params.Find("moe_layers.0.ffn.router.bias");
  ASSERT_NE(bias, nullptr);
  for (int64_t e = 0; e < bias->numel(); ++e)
    StoreFromDouble(bias->raw_data(), bias->dtype(), e, 0.05 * static_cast<double>(e));
  EXPECT_GT(CheckModelGradients(**p, params, RandomTokens(2, 6, 13, 4), 6, 1e-6), 250);
}

TEST(TinyDeepseekV3, V2LiteQueryAndSoftmaxGatingTrain) {
  std::map<std::string, AttrValue> a = TinyV3("f64");
  a["query"].set_s("MlaQueryDirect");
  a["q_lora_rank"].set_i(0);
  a["scoring_func"].set_s("softmax");
  a["norm_topk_prob"].set_b(false);
  a["correction_bias"].set_b(false);
  a["n_group"].set_i(1);
  a["routed_scaling_factor"].set_f(1.0);
  a["num_nextn_predict_layers"].set_i(0);
  auto p = Build(a, 2, 5);
  ASSERT_TRUE(p.ok()) << p.status().ToString();
  bool direct = false;
  for (const ParamInfo& info : (*p)->params()) {
    direct = direct || info.name == "dense_layers.0.attn.q.wq.weight";
    EXPECT_EQ(info.name.find("router.bias"), std::string::npos);
    EXPECT_EQ(info.name.find("mtp."), std::string::npos);
  }
  EXPECT_TRUE(direct);
  ParamStore params;
  params.Initialize((*p)->params(), 8);
  EXPECT_GT(CheckModelGradients(**p, params, RandomTokens(2, 5, 13, 9), 4, 1e-6), 100);
}

// An inference program asks only for the logits: multi-token prediction drops out, with its
// parameters, and the logits stay the same.
TEST(TinyDeepseekV3, AnInferenceProgramLeavesOutTheMtpModule) {
  auto full = Build(TinyV3("f32"), 2, 6, "");
  auto loaded = LoadTestGraph(TestGraph("good/deepseek_import.pbtxt"));
  ASSERT_TRUE(loaded.ok()) << loaded.status().ToString();
  const Graph& g = *loaded;
  ProgramOptions options;
  options.outputs = {"logits"};
  std::vector<TensorType> types = {{DT_I64, {2, 6}}, {DT_I64, {2, 6}}};
  auto logits_only = Program::Build(g, "DeepseekV3", TinyV3("f32"), types, TestRegistry(), options);
  ASSERT_TRUE(full.ok() && logits_only.ok()) << logits_only.status().ToString();
  EXPECT_EQ((*logits_only)->output_names(), std::vector<std::string>{"logits"});
  size_t mtp = 0;
  for (const ParamInfo& info : (*full)->params()) mtp += info.name.starts_with("mtp.");
  EXPECT_GT(mtp, 10u);
  EXPECT_EQ((*logits_only)->params().size(), (*full)->params().size() - mtp);
  for (const ParamInfo& info : (*logits_only)->params())
    EXPECT_FALSE(info.name.starts_with("mtp."));
  ParamStore params;
  params.Initialize((*full)->params(), 2);
  std::vector<Tensor> inputs = RandomTokens(2, 6, 13, 3);
  auto a = (*full)->Run(inputs, params);
  auto b = (*logits_only)->Run(inputs, params);
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_EQ(a->values[1].ToVector(), b->values[0].ToVector());
  options.outputs = {"logitz"};
  auto bad = Program::Build(g, "DeepseekV3", TinyV3("f32"), types, TestRegistry(), options);
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("function 'DeepseekV3' has no output 'logitz'"),
            std::string::npos);
}

// Prefill then one token at a time over the paged latent cache (absorbed MLA) gives the logits of
// one full forward pass (decompressed MLA), in f64. Returns the programs the decoder built.
int64_t ExpectDecodingMatchesTheFullForward(std::map<std::string, AttrValue> attrs,
                                            int64_t time = 7, int64_t prefill = 3) {
  const int64_t batch = 2;
  auto full = Build(attrs, batch, time, "");
  EXPECT_TRUE(full.ok()) << full.status().ToString();
  if (!full.ok()) return 0;
  ParamStore params;
  params.Initialize((*full)->params(), 11);
  if (Tensor* bias = params.Find("moe_layers.0.ffn.router.bias"))
    for (int64_t e = 0; e < bias->numel(); ++e)
      StoreFromDouble(bias->raw_data(), bias->dtype(), e, 0.03 * static_cast<double>(e % 3));
  std::vector<Tensor> inputs = RandomTokens(batch, time, 13, 12);
  auto reference = (*full)->Run(inputs, params);
  EXPECT_TRUE(reference.ok()) << reference.status().ToString();
  if (!reference.ok()) return 0;
  Tensor logits = reference->values[1];  // [batch, time, vocab]

  auto loaded = LoadTestGraph(TestGraph("good/deepseek_import.pbtxt"));
  EXPECT_TRUE(loaded.ok()) << loaded.status().ToString();
  if (!loaded.ok()) return 0;
  auto programs = std::make_shared<deepseek::DecodePrograms>();
  deepseek::LatentDecoder decoder(*loaded, attrs, TestRegistry(), params, programs);
  int64_t vocab = logits.dim(2);
  double worst = 0;
  for (int64_t begin = 0; begin < time;) {
    int64_t end = begin == 0 ? prefill : begin + 1;
    Tensor step = inputs[0].Slice(1, begin, end).Contiguous();
    auto out = decoder.Feed(step);
    EXPECT_TRUE(out.ok()) << out.status().ToString();
    if (!out.ok()) return 0;
    EXPECT_EQ(out->shape(), (Shape{batch, end - begin, vocab}));
    for (int64_t b = 0; b < batch; ++b)
      for (int64_t t = begin; t < end; ++t)
        for (int64_t v = 0; v < vocab; ++v) {
          double want = logits.At((b * time + t) * vocab + v);
          double got = out->At((b * (end - begin) + (t - begin)) * vocab + v);
          worst = std::max(worst, std::abs(want - got));
        }
    begin = end;
  }
  EXPECT_EQ(decoder.position(), time);
  EXPECT_LT(worst, 1e-10);
  return programs->builds();
}

TEST(TinyDeepseekV3, DecodingOverTheLatentCacheMatchesTheFullForward) {
  ExpectDecodingMatchesTheFullForward(TinyV3("f64"));
}

// Past the cache's first blocks of 64: the prefill ends inside block 0, decoding crosses into
// blocks 1 and 2 (the pool grows twice, moving what is cached). A block program serves every
// step until the pool grows: a handful of builds for 95 steps, where one per step and block kind
// would be 190.
TEST(TinyDeepseekV3, DecodingAcrossCacheBlocksReusesItsPrograms) {
  int64_t builds = ExpectDecodingMatchesTheFullForward(TinyV3("f64"), 150, 55);
  EXPECT_GT(builds, 0);
  EXPECT_LE(builds, 16);
}

TEST(TinyDeepseekV3, DecodingMatchesWithTheDirectQueryAndSoftmaxGating) {
  std::map<std::string, AttrValue> a = TinyV3("f64");
  a["query"].set_s("MlaQueryDirect");
  a["q_lora_rank"].set_i(0);
  a["scoring_func"].set_s("softmax");
  a["correction_bias"].set_b(false);
  a["n_group"].set_i(1);
  a["mscale_all_dim"].set_f(0.707);
  ExpectDecodingMatchesTheFullForward(a);
}

// MTP drafts the token after the next one and the main model checks it in the same step: the
// tokens are exactly greedy decoding's, whatever is accepted.
TEST(TinyDeepseekV3, SpeculativeDecodingWithMtpGivesTheGreedyTokens) {
  std::map<std::string, AttrValue> attrs = TinyV3("f64");
  auto full = Build(attrs, 1, 4, "");
  ASSERT_TRUE(full.ok()) << full.status().ToString();
  auto loaded = LoadTestGraph(TestGraph("good/deepseek_import.pbtxt"));
  ASSERT_TRUE(loaded.ok()) << loaded.status().ToString();
  Tensor prompt = RandomTokens(1, 4, 13, 3)[0];
  auto generate = [&](const ParamStore& params, bool speculative) {
    deepseek::LatentDecoder decoder(*loaded, attrs, TestRegistry(), params);
    deepseek::GenerateOptions options;
    options.max_new = 24;
    options.speculative = speculative;
    return deepseek::Generate(decoder, prompt, options);
  };
  // Random weights: MTP's drafts are rejected and rolled back.
  ParamStore params;
  params.Initialize((*full)->params(), 21);
  auto greedy = generate(params, false);
  auto speculative = generate(params, true);
  ASSERT_TRUE(greedy.ok() && speculative.ok()) << speculative.status().ToString();
  EXPECT_EQ(speculative->tokens, greedy->tokens);
  EXPECT_EQ(static_cast<int64_t>(speculative->tokens[0].size()), 24);
  EXPECT_EQ(greedy->drafted, 0);
  EXPECT_GT(speculative->drafted, 10);
  EXPECT_GT(speculative->accepted, 0);
  EXPECT_LT(speculative->accepted, speculative->drafted);
  LOG(INFO) << speculative->accepted << " of " << speculative->drafted << " drafts accepted";
  // A head whose rows are all the same ties every logit: both predict token 0 every time, so
  // every draft is accepted and each main step yields two tokens.
  Tensor* head = params.Find("head.weight");
  ASSERT_NE(head, nullptr);
  int64_t width = head->dim(1);
  for (int64_t k = 0; k < head->numel(); ++k)
    StoreFromDouble(head->raw_data(), head->dtype(), k, head->At(k % width));
  greedy = generate(params, false);
  speculative = generate(params, true);
  ASSERT_TRUE(greedy.ok() && speculative.ok()) << speculative.status().ToString();
  EXPECT_EQ(speculative->tokens, greedy->tokens);
  EXPECT_EQ(speculative->accepted, speculative->drafted);
  EXPECT_EQ(speculative->drafted, 12);  // 1 token from the prefill, 2 per step after
  EXPECT_EQ(greedy->main_steps, 24);
  EXPECT_EQ(speculative->main_steps, 13);
  // A model without MTP has nothing to draft with.
  attrs["num_nextn_predict_layers"].set_i(0);
  deepseek::LatentDecoder no_mtp(*loaded, attrs, TestRegistry(), params);
  deepseek::GenerateOptions drafting;
  drafting.speculative = true;
  auto refused = deepseek::Generate(no_mtp, prompt, drafting);
  ASSERT_FALSE(refused.ok());
  EXPECT_NE(refused.status().message().find("no MTP module"), std::string::npos);
}

// Prompts of different lengths, right-padded into one batch, decode as they do alone: the same
// logits at their own positions (prefill and steps, f64) and the same greedy tokens, across a
// cache block (the longer prompt ends at position 70).
TEST(TinyDeepseekV3, PaddedPromptsOfDifferentLengthsDecodeAsTheyDoAlone) {
  std::map<std::string, AttrValue> attrs = TinyV3("f64");
  auto full = Build(attrs, 1, 4, "");
  ASSERT_TRUE(full.ok()) << full.status().ToString();
  ParamStore params;
  params.Initialize((*full)->params(), 6);
  auto loaded = LoadTestGraph(TestGraph("good/deepseek_import.pbtxt"));
  ASSERT_TRUE(loaded.ok()) << loaded.status().ToString();
  const std::vector<int64_t> lengths = {5, 70, 64};
  const int64_t longest = 70;
  Tensor random = RandomTokens(3, longest, 13, 9)[0];
  std::vector<double> padded = random.ToVector();
  for (int64_t b = 0; b < 3; ++b)
    for (int64_t t = lengths[static_cast<size_t>(b)]; t < longest; ++t)
      padded[static_cast<size_t>(b * longest + t)] = 1;  // padding: any id
  Tensor prompts = Tensor::FromValues(DT_I64, {3, longest}, padded);
  auto alone = [&](int64_t b) {
    return prompts.Slice(0, b, b + 1).Slice(1, 0, lengths[static_cast<size_t>(b)]).Contiguous();
  };
  // Logits: the prefill, then two steps.
  deepseek::LatentDecoder together(*loaded, attrs, TestRegistry(), params);
  std::vector<Tensor> steps;
  auto first = together.Feed(prompts, lengths);
  ASSERT_TRUE(first.ok()) << first.status().ToString();
  steps.push_back(*first);
  for (double token : {3.0, 11.0}) {
    auto next = together.Feed(Tensor::FromValues(DT_I64, {3, 1}, {token, token, token}));
    ASSERT_TRUE(next.ok()) << next.status().ToString();
    steps.push_back(*next);
  }
  EXPECT_EQ(together.position(), longest + 2);
  const int64_t vocab = steps[0].dim(2);
  for (int64_t b = 0; b < 3; ++b) {
    deepseek::LatentDecoder one(*loaded, attrs, TestRegistry(), params);
    std::vector<Tensor> own;
    own.push_back(*one.Feed(alone(b)));
    own.push_back(*one.Feed(Tensor::FromValues(DT_I64, {1, 1}, {3.0})));
    own.push_back(*one.Feed(Tensor::FromValues(DT_I64, {1, 1}, {11.0})));
    double worst = 0;
    for (size_t s = 0; s < 3; ++s) {
      const int64_t t_all = steps[s].dim(1), t_own = own[s].dim(1);
      for (int64_t t = 0; t < t_own; ++t)
        for (int64_t v = 0; v < vocab; ++v)
          worst = std::max(
              worst, std::abs(steps[s].At((b * t_all + t) * vocab + v) - own[s].At(t * vocab + v)));
    }
    EXPECT_LT(worst, 1e-10) << "row " << b;
  }
  // Greedy generation.
  deepseek::GenerateOptions greedy;
  greedy.max_new = 12;
  deepseek::LatentDecoder batch(*loaded, attrs, TestRegistry(), params);
  auto all = deepseek::Generate(batch, prompts, greedy, lengths);
  ASSERT_TRUE(all.ok()) << all.status().ToString();
  for (int64_t b = 0; b < 3; ++b) {
    deepseek::LatentDecoder one(*loaded, attrs, TestRegistry(), params);
    auto mine = deepseek::Generate(one, alone(b), greedy);
    ASSERT_TRUE(mine.ok()) << mine.status().ToString();
    EXPECT_EQ(all->tokens[static_cast<size_t>(b)], mine->tokens[0]) << "row " << b;
  }
  // A row cannot use more tokens than it was given, nor none.
  deepseek::LatentDecoder bad(*loaded, attrs, TestRegistry(), params);
  auto refused = bad.Feed(prompts, {5, 71, 64});
  ASSERT_FALSE(refused.ok());
  EXPECT_NE(refused.status().message().find("row 1 uses 71 of its 70 tokens (1 to 70)"),
            std::string::npos)
      << refused.status().message();
}

// Sampling: reproducible from the seed, greedy at top-k 1 or a tiny top-p, a batch giving each
// prompt what it gets alone, stop tokens ending a prompt.
TEST(TinyDeepseekV3, SamplingIsReproducibleAndStopsAtStopTokens) {
  std::map<std::string, AttrValue> attrs = TinyV3("f64");
  auto full = Build(attrs, 1, 4, "");
  ASSERT_TRUE(full.ok()) << full.status().ToString();
  ParamStore params;
  params.Initialize((*full)->params(), 4);
  auto loaded = LoadTestGraph(TestGraph("good/deepseek_import.pbtxt"));
  ASSERT_TRUE(loaded.ok()) << loaded.status().ToString();
  Tensor prompts = RandomTokens(3, 4, 13, 8)[0];
  auto run = [&](const Tensor& p, deepseek::GenerateOptions options) {
    deepseek::LatentDecoder decoder(*loaded, attrs, TestRegistry(), params);
    auto out = deepseek::Generate(decoder, p, options);
    EXPECT_TRUE(out.ok()) << out.status().ToString();
    return out.ok() ? out->tokens : std::vector<std::vector<int64_t>>{};
  };
  deepseek::GenerateOptions greedy;
  greedy.max_new = 10;
  deepseek::GenerateOptions hot = greedy;
  hot.temperature = 2.0;
  hot.seed = 5;
  auto a = run(prompts, hot), b = run(prompts, hot);
  EXPECT_EQ(a, b);
  hot.seed = 6;
  EXPECT_NE(run(prompts, hot), a);
  deepseek::GenerateOptions one = hot;
  one.top_k = 1;
  EXPECT_EQ(run(prompts, one), run(prompts, greedy));
  deepseek::GenerateOptions narrow = hot;
  narrow.top_p = 1e-9;  // the nucleus is the likeliest token alone
  EXPECT_EQ(run(prompts, narrow), run(prompts, greedy));
  // In a batch, a prompt gets what it gets alone (its own cache rows).
  Tensor second = prompts.Slice(0, 1, 2).Contiguous();
  EXPECT_EQ(run(second, greedy)[0], run(prompts, greedy)[1]);
  // A stop token ends its prompt (kept last); the others go on.
  deepseek::GenerateOptions stopping = greedy;
  std::vector<std::vector<int64_t>> plain = run(prompts, greedy);
  stopping.stop_tokens = {plain[0][2]};
  std::vector<std::vector<int64_t>> stopped = run(prompts, stopping);
  size_t first = static_cast<size_t>(std::find(plain[0].begin(), plain[0].end(), plain[0][2]) -
                                     plain[0].begin());
  EXPECT_EQ(stopped[0], std::vector<int64_t>(plain[0].begin(), plain[0].begin() + first + 1));
  for (size_t r = 1; r < 3; ++r) {
    auto end = std::find(plain[r].begin(), plain[r].end(), plain[0][2]);
    EXPECT_EQ(stopped[r],
              std::vector<int64_t>(plain[r].begin(), end == plain[r].end() ? end : end + 1));
  }
}

TEST(ChooseToken, SamplesTheSoftmaxWithinTopKAndTopP) {
  const float logits[4] = {2.0f, 1.0f, 0.0f, -1.0f};
  double z = std::exp(2.0) + std::exp(1.0) + 1 + std::exp(-1.0);
  std::mt19937_64 rng(1);
  deepseek::GenerateOptions o;
  o.temperature = 1;
  std::vector<int> count(4, 0);
  const int n = 40000;
  for (int i = 0; i < n; ++i)
    ++count[static_cast<size_t>(deepseek::ChooseToken(logits, 4, o, rng))];
  for (int v = 0; v < 4; ++v)
    EXPECT_NEAR(count[static_cast<size_t>(v)] / double(n), std::exp(2.0 - v) / z, 0.01) << v;
  o.top_k = 2;
  std::fill(count.begin(), count.end(), 0);
  for (int i = 0; i < n; ++i)
    ++count[static_cast<size_t>(deepseek::ChooseToken(logits, 4, o, rng))];
  EXPECT_EQ(count[2] + count[3], 0);
  EXPECT_NEAR(count[0] / double(n), std::exp(1.0) / (std::exp(1.0) + 1), 0.01);
  // top-p 0.7: token 0 holds 0.64 of the mass, so tokens 0 and 1 make the nucleus.
  o.top_k = 0;
  o.top_p = 0.7;
  std::fill(count.begin(), count.end(), 0);
  for (int i = 0; i < n; ++i)
    ++count[static_cast<size_t>(deepseek::ChooseToken(logits, 4, o, rng))];
  EXPECT_EQ(count[2] + count[3], 0);
  EXPECT_GT(count[1], 0);
  o.temperature = 0;
  EXPECT_EQ(deepseek::ChooseToken(logits, 4, o, rng), 0);
}

// A model resource writes T as a word ("T=bf16"): the cache takes that dtype too.
TEST(TinyDeepseekV3, DecodesInTheDtypeAWordNames) {
  std::map<std::string, AttrValue> attrs = TinyV3("f32");
  attrs["T"].set_s("bf16");
  auto full = Build(attrs, 1, 4, "");
  ASSERT_TRUE(full.ok()) << full.status().ToString();
  ParamStore params;
  params.Initialize((*full)->params(), 2);
  auto loaded = LoadTestGraph(TestGraph("good/deepseek_import.pbtxt"));
  ASSERT_TRUE(loaded.ok()) << loaded.status().ToString();
  deepseek::LatentDecoder decoder(*loaded, attrs, TestRegistry(), params);
  Tensor prompt = RandomTokens(1, 4, 13, 1)[0];
  auto prefill = decoder.Feed(prompt.Slice(1, 0, 3).Contiguous());
  ASSERT_TRUE(prefill.ok()) << prefill.status().ToString();
  auto step = decoder.Feed(prompt.Slice(1, 3, 4).Contiguous());
  ASSERT_TRUE(step.ok()) << step.status().ToString();
  EXPECT_EQ(step->dtype(), DT_BF16);
}

// A bf16 decoder over the parameters converted once (DecodeParams) decodes as it does over the
// f32 masters, which its programs convert at every step; parameters the bf16 model keeps in f32
// (if any) are the masters themselves.
TEST(TinyDeepseekV3, Bf16DecodingOverParamsConvertedOnce) {
  std::map<std::string, AttrValue> attrs = TinyV3("bf16");
  EXPECT_EQ(deepseek::ModelDtype(attrs), DT_BF16);
  auto full = Build(TinyV3("f32"), 1, 5, "");
  ASSERT_TRUE(full.ok()) << full.status().ToString();
  auto typed = Build(attrs, 1, 5, "");
  ASSERT_TRUE(typed.ok()) << typed.status().ToString();
  ParamStore masters;
  masters.Initialize((*full)->params(), 2);
  auto loaded = LoadTestGraph(TestGraph("good/deepseek_import.pbtxt"));
  ASSERT_TRUE(loaded.ok()) << loaded.status().ToString();
  auto decode_params =
      deepseek::DecodeParams(*loaded, "DeepseekV3", attrs, TestRegistry(), masters);
  ASSERT_TRUE(decode_params.ok()) << decode_params.status().ToString();
  const ParamStore& converted = *decode_params;
  ASSERT_EQ(converted.values().size(), masters.values().size());
  int64_t bf16_weights = 0;
  for (const ParamInfo& info : (*typed)->params()) {
    const Tensor* value = converted.Find(info.name);
    ASSERT_NE(value, nullptr) << info.name;
    EXPECT_EQ(value->dtype(), info.type.dtype) << info.name;
    if (info.type.dtype == DT_F32) {
      EXPECT_EQ(value->storage(), masters.Find(info.name)->storage()) << info.name;
    }
    bf16_weights += info.type.dtype == DT_BF16;
  }
  EXPECT_GT(bf16_weights, 10);
  deepseek::LatentDecoder once(*loaded, attrs, TestRegistry(), converted);
  deepseek::LatentDecoder every_step(*loaded, attrs, TestRegistry(), masters);
  Tensor prompt = RandomTokens(1, 5, 13, 1)[0];
  for (auto [begin, end] : {std::pair<int64_t, int64_t>{0, 3}, {3, 4}, {4, 5}}) {
    Tensor step = prompt.Slice(1, begin, end).Contiguous();
    auto got = once.Feed(step);
    ASSERT_TRUE(got.ok()) << got.status().ToString();
    auto want = every_step.Feed(step);
    ASSERT_TRUE(want.ok()) << want.status().ToString();
    EXPECT_EQ(got->dtype(), DT_BF16);
    EXPECT_EQ(got->ToVector(), want->ToVector()) << "position " << begin;
  }
}

TEST(TinyDeepseekV3, DenseOnlyModelHasNoMoeLayers) {
  std::map<std::string, AttrValue> a = TinyV3("f32");
  a["first_k_dense_replace"].set_i(2);
  a["num_nextn_predict_layers"].set_i(0);
  auto p = Build(a, 1, 4);
  ASSERT_TRUE(p.ok()) << p.status().ToString();
  int dense = 0;
  for (const ParamInfo& info : (*p)->params()) {
    EXPECT_EQ(info.name.find("moe_layers"), std::string::npos) << info.name;
    dense += info.name.ends_with("ffn.w1.weight");
  }
  EXPECT_EQ(dense, 2);
  ParamStore params;
  params.Initialize((*p)->params(), 1);
  auto out = (*p)->Run(RandomTokens(1, 4, 13, 2), params);
  ASSERT_TRUE(out.ok()) << out.status().ToString();
  EXPECT_TRUE(std::isfinite(out->values[0].At(0)));
  EXPECT_EQ(out->values[1].shape(), (Shape{1, 4, 13}));  // logits
}

}  // namespace
}  // namespace weir::testing

namespace weir::testing {
namespace {

// Trained through lm_loss alone, the MTP module gets no gradient: the program says so, and
// train.Step leaves those parameters alone (no weight decay or momentum on them).
TEST(TinyDeepseekV3, ParametersTheLossDoesNotReachAreListed) {
  auto lm = Build(TinyV3("f32"), 2, 6, "lm_loss");
  auto all = Build(TinyV3("f32"), 2, 6, "loss");
  ASSERT_TRUE(lm.ok()) << lm.status().ToString();
  ASSERT_TRUE(all.ok()) << all.status().ToString();
  EXPECT_TRUE((*all)->params_without_gradient().empty());
  const std::set<std::string>& skipped = (*lm)->params_without_gradient();
  EXPECT_TRUE(skipped.count("mtp.0.eh_proj.weight"));
  EXPECT_FALSE(skipped.count("head.weight"));  // shared by the main model's logits
  for (const std::string& name : skipped) EXPECT_EQ(name.rfind("mtp.", 0), 0u) << name;
}

}  // namespace
}  // namespace weir::testing
