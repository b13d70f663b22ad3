// Incremental decoding of a DeepseekV3 model (graphs/models/deepseek_v3.pbtxt) over MLA's latent
// cache: per layer only the normalized latent c_KV and the rotated RoPE key are kept, and
// attention runs in the absorbed form (spec §2.2). Each block is a program of the graph's
// DenseBlockDecode / MoEBlockDecode built with the block's name as prefix, so it reads the
// parameters the training function created (or the HF converter imported).
#pragma once

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "weir/graph.h"
#include "weir/op_registry.h"
#include "weir/runtime/program.h"

namespace weir::deepseek {

class LatentDecoder {
 public:
  // `attrs` are the DeepseekV3 function's (HfConfig::Attrs); `params` must outlive the decoder.
  LatentDecoder(const Graph& graph, std::map<std::string, AttrValue> attrs, const OpRegistry& ops,
                const ParamStore& params);

  // Feeds tokens [batch, t] that follow the ones fed so far (the first call is the prefill);
  // returns their logits [batch, t, vocab] and appends them to the cache.
  StatusOr<Tensor> Feed(const Tensor& tokens);

  int64_t position() const { return position_; }
  // Cached elements per token, summed over the layers (kv_lora_rank + qk_rope_head_dim each).
  int64_t cached_elements_per_token() const;

 private:
  StatusOr<std::vector<Tensor>> Run(const std::string& function, const std::string& prefix,
                                    const std::vector<Tensor>& inputs,
                                    const std::vector<std::string>& outputs);
  int64_t Int(const std::string& name) const;

  const Graph& graph_;
  std::map<std::string, AttrValue> attrs_;
  const OpRegistry& ops_;
  const ParamStore& params_;
  int64_t position_ = 0;
  std::vector<Tensor> latent_, rope_key_;  // per layer: [batch, position, width]
};

}  // namespace weir::deepseek
