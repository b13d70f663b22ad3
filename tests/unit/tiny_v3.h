// The tiny DeepseekV3 configuration the model tests share: MLA with a query latent, one dense
// and one MoE layer (4 routed experts in 2 groups, a shared expert), MTP, YaRN.
#pragma once

#include <map>
#include <string>

#include "weir/attr.h"

namespace weir::testing {

inline std::map<std::string, AttrValue> TinyV3Attrs(DataType dtype) {
  std::map<std::string, AttrValue> a;
  auto i = [&](const char* k, int64_t v) { a[k].set_i(v); };
  auto f = [&](const char* k, double v) { a[k].set_f(v); };
  i("vocab_size", 13);
  i("hidden_size", 8);
  i("intermediate_size", 12);
  i("moe_intermediate_size", 4);
  i("num_hidden_layers", 2);
  i("first_k_dense_replace", 1);
  i("num_attention_heads", 2);
  i("q_lora_rank", 6);
  i("kv_lora_rank", 4);
  i("qk_nope_head_dim", 4);
  i("qk_rope_head_dim", 4);
  i("v_head_dim", 3);
  i("n_routed_experts", 4);
  i("n_shared_experts", 1);
  i("num_experts_per_tok", 2);
  i("n_group", 2);
  i("topk_group", 1);
  i("num_nextn_predict_layers", 1);
  f("rope_factor", 4.0);
  i("original_max_position_embeddings", 4);
  f("aux_loss_alpha", 0.01);
  f("init_std", 0.4);
  a["T"].set_type(dtype);
  a["loss_dtype"].set_type(dtype == DT_F64 ? DT_F64 : DT_F32);
  return a;
}

}  // namespace weir::testing
