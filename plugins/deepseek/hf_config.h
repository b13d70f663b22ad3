// A Hugging Face DeepSeek config.json (DeepSeek-V2, V2-Lite, V3, R1) and the attrs of the
// DeepseekV3 graph function (graphs/models/deepseek_v3.pbtxt) that it means.
//
// The attrs carry the HF field names; nested or encoded fields are flattened as the model file's
// header says (rope_scaling -> rope_factor, original_max_position_embeddings, beta_fast,
// beta_slow, mscale_all_dim; topk_method noaux_tc -> correction_bias; q_lora_rank 0/null ->
// query=MlaQueryDirect). Missing optional fields take the defaults of HF's DeepseekV3Config (or
// DeepseekV2Config when model_type is deepseek_v2). Values the graph cannot express are errors
// naming config.json and the field.
#pragma once

#include <google/protobuf/struct.pb.h>

#include <filesystem>
#include <map>
#include <string>
#include <vector>

#include "weir/graph.pb.h"
#include "weir/status.h"

namespace weir::deepseek {

struct HfConfig {
  std::string model_type = "deepseek_v3";
  int64_t vocab_size = 129280;
  int64_t hidden_size = 7168;
  int64_t intermediate_size = 18432;
  int64_t moe_intermediate_size = 2048;
  int64_t num_hidden_layers = 61;
  int64_t first_k_dense_replace = 3;  // = num_hidden_layers for a dense-only model
  int64_t num_attention_heads = 128;
  int64_t q_lora_rank = 1536;  // 0: a plain q_proj
  int64_t kv_lora_rank = 512;
  int64_t qk_nope_head_dim = 128;
  int64_t qk_rope_head_dim = 64;
  int64_t v_head_dim = 128;
  int64_t n_routed_experts = 256;  // 0: dense only
  int64_t n_shared_experts = 1;
  int64_t num_experts_per_tok = 8;
  int64_t n_group = 8;
  int64_t topk_group = 4;
  std::string scoring_func = "sigmoid";
  std::string topk_method = "noaux_tc";
  double routed_scaling_factor = 2.5;
  bool norm_topk_prob = true;
  double rope_theta = 10000.0;
  bool has_rope_scaling = false;  // rope_scaling present (YaRN)
  double rope_factor = 1.0;
  int64_t original_max_position_embeddings = 4096;
  double beta_fast = 32.0;
  double beta_slow = 1.0;
  double mscale = 1.0;
  double mscale_all_dim = 1.0;
  int64_t max_position_embeddings = 4096;
  double rms_norm_eps = 1e-6;
  int64_t num_nextn_predict_layers = 0;
  double aux_loss_alpha = 0.001;
  // quantization_config.weight_block_size of an FP8 checkpoint ([rows, columns]).
  int64_t block_rows = 128;
  int64_t block_cols = 128;

  bool dense_only() const { return n_routed_experts == 0; }
  bool correction_bias() const { return topk_method == "noaux_tc"; }
  // Layers of the main model that use MoE.
  int64_t moe_layers() const { return num_hidden_layers - first_k_dense_replace; }

  // The attrs of the DeepseekV3 function, with T = `dtype` (the compute dtype).
  std::map<std::string, AttrValue> Attrs(DataType dtype = DT_F32) const;
};

// Parses a config.json object; `file` names it in errors.
StatusOr<HfConfig> ParseHfConfig(const google::protobuf::Struct& json, const std::string& file);
// Reads `path`: a config.json file or a folder holding one.
StatusOr<HfConfig> ReadHfConfig(const std::filesystem::path& path);

// The config.json object of `path` (a file or a folder holding config.json).
StatusOr<google::protobuf::Struct> ReadHfConfigJson(const std::filesystem::path& path,
                                                    std::string* file);
// Attrs as a JSON object (for model.json) and as the key=value text a `model` resource takes.
std::string AttrsToJson(const std::map<std::string, AttrValue>& attrs);
std::string AttrsToString(const std::map<std::string, AttrValue>& attrs);

}  // namespace weir::deepseek
