// LoRA: nn.LoRALinear's gradients (central differences in f64), its dropout, the program
// rewrite that puts it on a model's chosen Linear layers and trains the adapters alone, merged
// and separate adapters giving the same model, and a LoRA training run's checkpoints.
#include "weir/runtime/lora.h"

#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <set>

#include "test_util.h"
#include "tiny_v3.h"
#include "weir/json.h"
#include "weir/runtime/program.h"
#include "weir/safetensors.h"
#include "weir/testing/op_check.h"

namespace weir::testing {
namespace {

namespace fs = std::filesystem;

TensorType F64(Shape s) { return {DT_F64, std::move(s)}; }

TEST(LoraGrad, LinearWithAdapter) {
  // Every input and parameter (weight, lora_a, lora_b), perturbed so that B is not zero.
  EXPECT_GT(
      CheckGradients(
          {"nn.LoRALinear", "out_features=3 lora_rank=2 lora_alpha=4 T=f64", {F64({2, 3, 5})}}),
      0);
  EXPECT_GT(
      CheckGradients(
          {"nn.LoRALinear", "out_features=4 lora_rank=1 lora_alpha=0.5 T=f64", {F64({6, 2})}}),
      0);
}

// With dropout the adapter sees x masked and scaled by 1/(1 - rate); the base path sees all of x.
TEST(LoraOp, DropoutMasksTheAdapterInputOnly) {
  OpCase c{"nn.LoRALinear",
           "out_features=3 lora_rank=2 lora_alpha=2 lora_dropout=0.5 T=f64",
           {F64({4, 6})}};
  ParamStore params;
  auto values = [](Shape shape, double phase) {
    Tensor t = Tensor::Zeros(DT_F64, shape);
    for (int64_t i = 0; i < t.numel(); ++i) t.data<double>()[i] = std::sin(phase + 0.7 * i);
    return t;
  };
  params.Set("op.weight", values({3, 6}, 0.1));
  params.Set("op.lora_a", values({2, 6}, 0.2));
  params.Set("op.lora_b", values({3, 2}, 0.3));
  auto out = RunOp(c, {}, &params);
  ASSERT_TRUE(out.ok()) << out.status().ToString();
  std::vector<Tensor> inputs = CaseInputs(c);
  const Tensor& x = inputs[0];
  const Tensor &y = (*out)[0], &h = (*out)[1], &mask = (*out)[2];
  const Tensor &w = *params.Find("op.weight"), &a = *params.Find("op.lora_a"),
               &b = *params.Find("op.lora_b");
  ASSERT_EQ(mask.shape(), x.shape());
  int kept = 0;
  for (int64_t i = 0; i < mask.numel(); ++i) kept += mask.data<uint8_t>()[i];
  EXPECT_GT(kept, 4);
  EXPECT_LT(kept, 20);
  for (int64_t r = 0; r < 4; ++r) {
    double hr[2] = {0, 0};
    for (int64_t k = 0; k < 2; ++k) {
      for (int64_t i = 0; i < 6; ++i) {
        double xd = mask.data<uint8_t>()[r * 6 + i] ? 2.0 * x.At(r * 6 + i) : 0.0;
        hr[k] += xd * a.At(k * 6 + i);
      }
      EXPECT_NEAR(h.At(r * 2 + k), hr[k], 1e-12);
    }
    for (int64_t o = 0; o < 3; ++o) {
      double expect = 0;
      for (int64_t i = 0; i < 6; ++i) expect += x.At(r * 6 + i) * w.At(o * 6 + i);
      for (int64_t k = 0; k < 2; ++k) expect += 1.0 * hr[k] * b.At(o * 2 + k);  // alpha/rank = 1
      EXPECT_NEAR(y.At(r * 3 + o), expect, 1e-12);
    }
  }
}

TEST(LoraPaths, MatchBySuffix) {
  EXPECT_TRUE(MatchesPathSuffix("moe_layers.3.attn.wq_b", "wq_b"));
  EXPECT_TRUE(MatchesPathSuffix("moe_layers.3.attn.wq_b", "attn.wq_b"));
  EXPECT_TRUE(MatchesPathSuffix("moe_layers.3.attn.wq_b", "*.wq_b"));
  EXPECT_TRUE(MatchesPathSuffix("moe_layers.3.attn.wq_b", "3.*.wq_b"));
  EXPECT_TRUE(MatchesPathSuffix("moe_layers.3.attn.wq_b.lora_a", "lora_a"));
  EXPECT_FALSE(MatchesPathSuffix("moe_layers.3.attn.wq_b", "wq"));
  EXPECT_FALSE(MatchesPathSuffix("moe_layers.3.attn.wq_b", "q_b"));
  EXPECT_FALSE(MatchesPathSuffix("moe_layers.3.attn.wq_b", "2.attn.wq_b"));
  EXPECT_FALSE(MatchesPathSuffix("wq_b", "attn.wq_b"));
  EXPECT_FALSE(MatchesPathSuffix("wq_b", ""));
}

struct Built {
  std::shared_ptr<const Program> program;
  std::vector<Tensor> inputs;
};

StatusOr<Built> BuildTiny(DataType dtype, const LoraConfig& lora, const std::string& loss) {
  WEIR_ASSIGN_OR_RETURN(Graph g, LoadTestGraph(TestGraph("good/deepseek_import.pbtxt")));
  ProgramOptions options;
  options.loss = loss;
  lora.AddTo(options);
  Built b;
  b.inputs = RandomTokens(2, 6, 13, 7);
  for (Tensor& t : b.inputs) t = t.To(DT_I64);
  std::vector<TensorType> types = {{DT_I64, {2, 6}}, {DT_I64, {2, 6}}};
  WEIR_ASSIGN_OR_RETURN(b.program, Program::Build(g, "DeepseekV3", TinyV3Attrs(dtype), types,
                                                  TestRegistry(), options));
  return b;
}

LoraConfig AttentionAndFfnLora() {
  LoraConfig lora;
  lora.targets = {"q.wq_b", "wkv_b", "dense_layers.*.ffn.w2"};
  lora.rank = 2;
  lora.alpha = 3;
  return lora;
}

// The rewrite adapts exactly the targeted Linears; only the adapters take gradients, and those
// match central differences.
TEST(LoraModel, AdaptersAloneAreTrained) {
  LoraConfig lora = AttentionAndFfnLora();
  auto built = BuildTiny(DT_F64, lora, "loss");
  ASSERT_TRUE(built.ok()) << built.status().ToString();
  const Program& p = *built->program;
  std::set<std::string> adapters, frozen;
  for (const ParamInfo& info : p.params()) {
    if (IsLoraParam(info.name)) {
      adapters.insert(info.name);
      EXPECT_FALSE(info.frozen) << info.name;
    } else {
      frozen.insert(info.name);
      EXPECT_TRUE(info.frozen) << info.name;
    }
  }
  // wq_b and wkv_b in the dense layer, the MoE layer and MTP's block; w2 in the dense layer only.
  std::set<std::string> expected;
  for (const char* node :
       {"dense_layers.0.attn.q.wq_b", "dense_layers.0.attn.wkv_b", "moe_layers.0.attn.q.wq_b",
        "moe_layers.0.attn.wkv_b", "mtp.0.block.attn.q.wq_b", "mtp.0.block.attn.wkv_b",
        "dense_layers.0.ffn.w2"}) {
    expected.insert(std::string(node) + ".lora_a");
    expected.insert(std::string(node) + ".lora_b");
  }
  EXPECT_EQ(adapters, expected);
  EXPECT_TRUE(frozen.count("dense_layers.0.attn.q.wq_b.weight"));
  ParamStore params;
  params.Initialize(p.params(), 3);
  // B starts at zero, which would leave A's gradient zero: start from a trained-looking adapter.
  for (auto& [name, t] : params.mutable_values())
    if (name.size() > 7 && name.substr(name.size() - 7) == ".lora_b")
      for (int64_t i = 0; i < t.numel(); ++i) t.data<double>()[i] = 0.3 * std::sin(1.0 + i);
  auto out = p.Run(built->inputs, params);
  ASSERT_TRUE(out.ok()) << out.status().ToString();
  std::set<std::string> with_grads;
  for (const auto& [name, g] : out->param_grads) with_grads.insert(name);
  EXPECT_EQ(with_grads, expected);
  EXPECT_GT(CheckModelGradients(p, params, built->inputs, 3, 1e-5), 20);
}

// Kept separate or merged into W + alpha/rank · B·A, the adapters give the same logits.
TEST(LoraModel, MergedAndSeparateAdaptersAgree) {
  LoraConfig lora = AttentionAndFfnLora();
  auto adapted = BuildTiny(DT_F32, lora, "");
  auto plain = BuildTiny(DT_F32, LoraConfig(), "");
  ASSERT_TRUE(adapted.ok()) << adapted.status().ToString();
  ASSERT_TRUE(plain.ok()) << plain.status().ToString();
  ParamStore params;
  params.Initialize(adapted->program->params(), 5);
  for (auto& [name, t] : params.mutable_values())
    if (name.size() > 7 && name.substr(name.size() - 7) == ".lora_b")
      for (int64_t i = 0; i < t.numel(); ++i) t.data<float>()[i] = 0.5f * std::cos(2.0f + i);
  auto separate = adapted->program->Run(adapted->inputs, params);
  ASSERT_TRUE(separate.ok()) << separate.status().ToString();
  auto merged = MergeLora(params.values(), lora.alpha);
  ASSERT_TRUE(merged.ok()) << merged.status().ToString();
  ParamStore merged_params;
  for (auto& [name, t] : *merged) merged_params.Set(name, t);
  EXPECT_EQ(merged->size() + 14, params.values().size());  // the 7 adapter pairs are gone
  auto together = plain->program->Run(plain->inputs, merged_params);
  ASSERT_TRUE(together.ok()) << together.status().ToString();
  auto base = plain->program->Run(plain->inputs, params);  // the adapters ignored
  ASSERT_TRUE(base.ok()) << base.status().ToString();
  size_t logits = 1;
  ASSERT_EQ(adapted->program->output_names()[logits], "logits");
  const Tensor &a = separate->values[logits], &m = together->values[logits],
               &b = base->values[logits];
  double diff = 0, moved = 0;
  for (int64_t i = 0; i < a.numel(); ++i) {
    diff = std::max(diff, std::abs(a.At(i) - m.At(i)));
    moved = std::max(moved, std::abs(a.At(i) - b.At(i)));
  }
  EXPECT_LT(diff, 1e-5);
  EXPECT_GT(moved, 1e-2);  // the adapters do change the model
}

TEST(LoraModel, ErrorsNameTheProblem) {
  LoraConfig lora;
  lora.targets = {"kv_norm"};  // an RMSNorm
  auto built = BuildTiny(DT_F32, lora, "");
  ASSERT_FALSE(built.ok());
  EXPECT_NE(built.status().message().find("'kv_norm' names a node of op nn.RMSNorm"),
            std::string::npos)
      << built.status().ToString();
  std::map<std::string, Tensor> params = {{"x.weight", Tensor::Zeros(DT_F32, {3, 4})},
                                          {"x.lora_a", Tensor::Zeros(DT_F32, {2, 4})}};
  auto merged = MergeLora(params, 1.0);
  ASSERT_FALSE(merged.ok());
  EXPECT_NE(merged.status().message().find("has no x.lora_b"), std::string::npos);
  params["x.lora_b"] = Tensor::Zeros(DT_F32, {3, 3});
  merged = MergeLora(params, 1.0);
  ASSERT_FALSE(merged.ok());
  EXPECT_NE(merged.status().message().find("do not fit its weight [3, 4]"), std::string::npos)
      << merged.status().ToString();
}

// A LoRA training run saves its adapters alone, as PEFT does, resumes from them, and leaves the
// base weights as they were.
TEST(LoraTraining, SavesAdaptersAloneAndResumes) {
  fs::path out = fs::path(::testing::TempDir()) / "lora_train";
  fs::remove_all(out);
  RunResult full = RunGraphFile(TestGraph("good/train_lora.pbtxt"), out / "full");
  ASSERT_TRUE(full.status.ok()) << full.status.ToString();
  fs::path last = out / "full/checkpoints/step-000012";
  EXPECT_FALSE(fs::exists(last / "model.safetensors"));
  auto adapters = ReadSafetensorsSharded(last, "adapter");
  ASSERT_TRUE(adapters.ok()) << adapters.status().ToString();
  ASSERT_FALSE(adapters->empty());
  for (const auto& [name, t] : *adapters) EXPECT_TRUE(IsLoraParam(name)) << name;
  auto config = ReadJsonFile(last / "adapter_config.json");
  ASSERT_TRUE(config.ok()) << config.status().ToString();
  EXPECT_EQ(config->fields().at("r").number_value(), 4);
  EXPECT_EQ(config->fields().at("lora_alpha").number_value(), 8);
  // The adapters learned something: some B is no longer zero.
  double largest = 0;
  for (const auto& [name, t] : *adapters)
    if (name.find("lora_b") != std::string::npos)
      for (int64_t i = 0; i < t.numel(); ++i) largest = std::max(largest, std::abs(t.At(i)));
  EXPECT_GT(largest, 1e-4);
  // Resumed from the checkpoint of step 8: the same adapters at step 12, bit for bit.
  RunResult resumed_run = RunGraphFile(TestGraph("good/train_lora.pbtxt"), out / "resumed", {},
                                       out / "full/checkpoints/step-000008");
  ASSERT_TRUE(resumed_run.status.ok()) << resumed_run.status.ToString();
  auto resumed = ReadSafetensorsSharded(out / "resumed/checkpoints/step-000012", "adapter");
  ASSERT_TRUE(resumed.ok()) << resumed.status().ToString();
  for (const auto& [name, t] : *adapters) {
    const Tensor& r = resumed->at(name);
    ASSERT_EQ(r.numel(), t.numel());
    for (int64_t i = 0; i < t.numel(); ++i) ASSERT_EQ(r.At(i), t.At(i)) << name;
  }
}

}  // namespace
}  // namespace weir::testing
