// Hugging Face DeepSeek safetensors <-> weir parameters of the DeepseekV3 graph function.
//
// The names follow rules (hf_weights.cc, HfLayout): layer i of HF is dense_layers.i below
// first_k_dense_replace, else moe_layers.(i - first_k_dense_replace); the MTP layer
// (model.layers.<num_hidden_layers>) is mtp.0; within a layer a fixed table renames the HF
// modules to model.py's (self_attn.q_a_proj -> attn.q.wq_a, mlp.gate_proj -> ffn.w1, ...), and the
// routed experts' per-expert matrices are stacked on a new first axis (experts.w1 [E, I, d]).
#pragma once

#include <filesystem>
#include <map>
#include <string>
#include <vector>

#include "hf_config.h"
#include "weir/tensor.h"

namespace weir::deepseek {

// One weir parameter and the HF tensors that hold it.
struct HfParam {
  std::string weir;             // "moe_layers.0.ffn.experts.w1"
  Shape shape;                  // its weir shape
  std::vector<std::string> hf;  // one HF name, or one per expert (stacked on axis 0)
  bool always_f32 = false;      // e_score_correction_bias: F32 in every HF checkpoint
};

// Every parameter of the model `c` describes, in HF file order.
std::vector<HfParam> HfLayout(const HfConfig& c);
// HF tensors that copy a weir parameter: the MTP layer's embed_tokens and shared_head.head.
// Pairs of (HF name, weir name). Ignored on import, written on export.
std::vector<std::pair<std::string, std::string>> HfDuplicates(const HfConfig& c);

// Reads `dir`'s model.safetensors (or model.safetensors.index.json and its shards) into f32
// tensors with weir names. F32, BF16, F16 and F64 convert exactly to f32 where they can; F8_E4M3
// weights are multiplied by their `<name>_scale_inv` blocks. A missing, unexpected or misshapen
// tensor is an error naming the file and the tensor (all such problems at once).
StatusOr<std::map<std::string, Tensor>> ImportHfWeights(const std::filesystem::path& dir,
                                                        const HfConfig& c);

struct HfExportOptions {
  DataType dtype = DT_F32;                     // DT_F32 or DT_BF16 (round to nearest even)
  int64_t max_shard_bytes = int64_t{5} << 30;  // larger sets are sharded with an index
};

// Writes `params` (weir names) as `dir`/model.safetensors (or shards and an index) with HF names.
// `source` names the checkpoint in errors (a missing or misshapen parameter).
Status ExportHfWeights(const std::map<std::string, Tensor>& params, const HfConfig& c,
                       const std::filesystem::path& dir, const HfExportOptions& options,
                       const std::string& source);

}  // namespace weir::deepseek
