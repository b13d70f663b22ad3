// The DeepSeek Hugging Face converter (plugins/deepseek): config.json fields to DeepseekV3 attrs,
// its HF name table against the parameters the model graph declares, FP8 block dequantization
// and the export/import round trip.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <cstring>
#include <fstream>
#include <set>

#include "hf_config.h"
#include "hf_weights.h"
#include "test_util.h"
#include "weir/half.h"
#include "weir/json.h"
#include "weir/runtime/program.h"
#include "weir/safetensors.h"

namespace weir::testing {
namespace {

namespace fs = std::filesystem;
using deepseek::HfConfig;

constexpr char kTinyV3[] = R"({
  "model_type": "deepseek_v3", "vocab_size": 13, "hidden_size": 8, "intermediate_size": 12,
  "moe_intermediate_size": 4, "num_hidden_layers": 3, "first_k_dense_replace": 1,
  "num_attention_heads": 2, "q_lora_rank": 6, "kv_lora_rank": 4, "qk_nope_head_dim": 4,
  "qk_rope_head_dim": 4, "v_head_dim": 3, "n_routed_experts": 4, "n_shared_experts": 1,
  "num_experts_per_tok": 2, "n_group": 2, "topk_group": 1, "scoring_func": "sigmoid",
  "topk_method": "noaux_tc", "norm_topk_prob": true, "routed_scaling_factor": 2.5,
  "rope_scaling": {"type": "yarn", "factor": 4, "original_max_position_embeddings": 4,
                   "beta_fast": 32, "beta_slow": 1, "mscale": 1.0, "mscale_all_dim": 1.0},
  "max_position_embeddings": 16, "num_nextn_predict_layers": 1})";

StatusOr<HfConfig> Parse(const std::string& text, const std::string& patch_key = "",
                         const std::string& patch_value = "") {
  WEIR_ASSIGN_OR_RETURN(auto json, ParseJsonObject(text));
  if (!patch_key.empty()) {
    WEIR_ASSIGN_OR_RETURN(auto patch, ParseJsonObject("{\"v\": " + patch_value + "}"));
    (*json.mutable_fields())[patch_key] = patch.fields().at("v");
  }
  return deepseek::ParseHfConfig(json, "dir/config.json");
}

StatusOr<std::shared_ptr<const Program>> BuildModel(const HfConfig& c) {
  WEIR_ASSIGN_OR_RETURN(Graph g, LoadTestGraph(TestGraph("good/deepseek_import.pbtxt")));
  std::vector<TensorType> types = {{DT_I64, {1, 3}}, {DT_I64, {1, 3}}};
  return Program::Build(g, "DeepseekV3", c.Attrs(DT_F32), types, TestRegistry(), {});
}

// The converter's table names exactly the parameters the graph declares, with their shapes.
void ExpectLayoutMatchesGraph(const HfConfig& c) {
  auto p = BuildModel(c);
  ASSERT_TRUE(p.ok()) << p.status().ToString();
  std::map<std::string, Shape> graph, table;
  for (const ParamInfo& info : (*p)->params()) graph[info.name] = info.type.shape;
  for (const auto& param : deepseek::HfLayout(c)) table[param.weir] = param.shape;
  EXPECT_EQ(graph, table);
}

TEST(DeepseekHfConfig, MapsFieldsToAttrs) {
  auto c = Parse(kTinyV3);
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  auto a = c->Attrs(DT_F32);
  EXPECT_EQ(a["query"].s(), "MlaQueryLoRA");
  EXPECT_TRUE(a["correction_bias"].b());
  EXPECT_EQ(a["rope_factor"].f(), 4.0);
  EXPECT_EQ(a["original_max_position_embeddings"].i(), 4);
  EXPECT_EQ(a["num_nextn_predict_layers"].i(), 1);
  EXPECT_EQ(a["rms_norm_eps"].f(), 1e-6);  // the HF default
  ExpectLayoutMatchesGraph(*c);
}

TEST(DeepseekHfConfig, V2LiteAndDenseOnlyLayoutsMatchTheGraph) {
  auto v2 = Parse(kTinyV3, "q_lora_rank", "null");
  ASSERT_TRUE(v2.ok());
  v2->topk_method = "greedy";
  v2->scoring_func = "softmax";
  v2->n_group = 1;
  v2->topk_group = 1;
  v2->num_nextn_predict_layers = 0;
  EXPECT_EQ(v2->Attrs()["query"].s(), "MlaQueryDirect");
  ExpectLayoutMatchesGraph(*v2);

  auto dense = Parse(R"({"vocab_size": 13, "hidden_size": 8, "intermediate_size": 12,
      "num_hidden_layers": 2, "num_attention_heads": 2, "q_lora_rank": 6, "kv_lora_rank": 4,
      "qk_nope_head_dim": 4, "qk_rope_head_dim": 4, "v_head_dim": 3, "n_routed_experts": null,
      "num_nextn_predict_layers": 0, "first_k_dense_replace": 1})");
  ASSERT_TRUE(dense.ok()) << dense.status().ToString();
  EXPECT_EQ(dense->first_k_dense_replace, 2);
  EXPECT_EQ(dense->Attrs()["rope_factor"].f(), 1.0);
  ExpectLayoutMatchesGraph(*dense);
}

TEST(DeepseekHfConfig, UnsupportedValuesNameTheFileAndField) {
  auto c = Parse(kTinyV3, "scoring_func", "\"relu\"");
  ASSERT_FALSE(c.ok());
  EXPECT_NE(c.status().message().find("dir/config.json: field 'scoring_func' is 'relu'"),
            std::string::npos)
      << c.status().message();
  c = Parse(kTinyV3, "num_hidden_layers", "2.5");
  ASSERT_FALSE(c.ok());
  EXPECT_NE(c.status().message().find("field 'num_hidden_layers' expects an integer"),
            std::string::npos);
  c = Parse(kTinyV3, "moe_layer_freq", "2");
  ASSERT_FALSE(c.ok());
  EXPECT_NE(c.status().message().find("'moe_layer_freq'"), std::string::npos);
}

TEST(DeepseekHfWeights, E4m3CodesDecodeAsE4m3fn) {
  // Subnormals (2^-9 steps), the largest normal 448, -0 and the two NaN codes.
  Tensor codes = Tensor::Empty(DT_F8E4M3, {6});
  const uint8_t bits[] = {0x01, 0x07, 0x08, 0x7e, 0x80, 0x7f};
  std::memcpy(codes.raw_data(), bits, sizeof(bits));
  std::vector<double> v = codes.To(DT_F32).ToVector();
  EXPECT_EQ(v[0], std::ldexp(1.0, -9));
  EXPECT_EQ(v[1], 7 * std::ldexp(1.0, -9));
  EXPECT_EQ(v[2], std::ldexp(1.0, -6));
  EXPECT_EQ(v[3], 448.0);
  EXPECT_EQ(v[4], 0.0);
  EXPECT_TRUE(std::signbit(v[4]));
  EXPECT_TRUE(std::isnan(v[5]));
  std::memset(codes.raw_data(), 0xff, 1);
  EXPECT_TRUE(std::isnan(codes.To(DT_F32).At(0)));
}

TEST(DeepseekHfWeights, Fp8BlocksAreScaledAndExportRoundTrips) {
  auto c = Parse(kTinyV3);
  ASSERT_TRUE(c.ok());
  c->block_rows = 2;  // small blocks so the tiny matrices have partial edge blocks
  c->block_cols = 3;
  fs::path dir = ::testing::TempDir() + "/deepseek_hf_" + std::to_string(::getpid());
  fs::create_directories(dir / "hf");
  // Every weight 1.0 as f32, except one FP8 matrix: codes of 0.5 (0x30) and 448 (0x7e), with a
  // scale grid whose block (r, c) holds r * 10 + c + 1.
  std::vector<std::pair<std::string, Tensor>> tensors;
  std::string fp8 = "model.layers.0.self_attn.kv_b_proj.weight";
  for (const auto& p : deepseek::HfLayout(*c)) {
    Shape one = p.hf.size() == 1 ? p.shape : Shape(p.shape.begin() + 1, p.shape.end());
    for (const std::string& name : p.hf) {
      if (name != fp8) {
        tensors.emplace_back(name, Tensor::Full(DT_F32, one, 1.0));
        continue;
      }
      Tensor codes = Tensor::Empty(DT_F8E4M3, one);
      auto* bits = static_cast<uint8_t*>(codes.raw_data());
      for (int64_t k = 0; k < codes.numel(); ++k) bits[k] = k == 0 ? 0x7e : 0x30;
      Shape grid = {(one[0] + 1) / 2, (one[1] + 2) / 3};
      std::vector<double> s;
      for (int64_t r = 0; r < grid[0]; ++r)
        for (int64_t col = 0; col < grid[1]; ++col) s.push_back(r * 10 + col + 1);
      tensors.emplace_back(name, codes);
      tensors.emplace_back(name + "_scale_inv", Tensor::FromValues(DT_F32, grid, s));
    }
  }
  ASSERT_TRUE(WriteSafetensors(dir / "hf" / "model.safetensors", tensors).ok());
  auto w = deepseek::ImportHfWeights(dir / "hf", *c);
  ASSERT_TRUE(w.ok()) << w.status().ToString();
  const Tensor& kv = w->at("dense_layers.0.attn.wkv_b.weight");  // [2 * (4 + 3), 4]
  EXPECT_EQ(kv.At(0), 448.0);                                    // block (0, 0), scale 1
  EXPECT_EQ(kv.At(3), 0.5 * 2);                                  // row 0, col 3: block (0, 1)
  EXPECT_EQ(kv.At(13 * 4 + 2), 0.5 * 61);                        // row 13: block (6, 0)
  EXPECT_EQ(w->at("moe_layers.0.ffn.experts.w2").shape(), (Shape{4, 8, 4}));

  // Export (the FP8 matrix replaced: export writes f32) and import again: the same values.
  std::map<std::string, Tensor> params = *w;
  params["dense_layers.0.attn.wkv_b.weight"] = Tensor::Full(DT_F32, kv.shape(), 0.25);
  deepseek::HfExportOptions options;
  options.max_shard_bytes = 2000;
  ASSERT_TRUE(deepseek::ExportHfWeights(params, *c, dir / "out", options, "ckpt").ok());
  EXPECT_TRUE(fs::exists(dir / "out" / "model.safetensors.index.json"));
  auto back = deepseek::ImportHfWeights(dir / "out", *c);
  ASSERT_TRUE(back.ok()) << back.status().ToString();
  for (const auto& [name, t] : params) EXPECT_EQ(t.ToVector(), back->at(name).ToVector()) << name;
  auto files = ReadSafetensorsSharded(dir / "out", "model");
  ASSERT_TRUE(files.ok());
  EXPECT_TRUE(files->count("model.layers.3.embed_tokens.weight"));  // the MTP copies
  EXPECT_TRUE(files->count("model.layers.3.shared_head.head.weight"));

  params.erase("norm.weight");
  Status missing = deepseek::ExportHfWeights(params, *c, dir / "out2", options, "ckpt");
  EXPECT_NE(missing.message().find("ckpt: missing tensor 'norm.weight'"), std::string::npos)
      << missing.message();
  fs::remove_all(dir);
}

}  // namespace
}  // namespace weir::testing
