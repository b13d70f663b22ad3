// Incremental decoding of the GPT of graphs/models/gpt.pbtxt over a K/V cache: per layer the
// rotated keys and the values of every token so far. Each block is a program of the graph's
// GptBlockDecode, shared by all layers (DecodePrograms), run over the layer's parameters
// (layers.N.*), so it reads the ones the Gpt function created. Header-only: the decode bench
// and its unit test are its only users.
#pragma once

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "decoder.h"  // plugins/deepseek: DecodePrograms
#include "weir/attr.h"
#include "weir/graph.h"
#include "weir/op_registry.h"
#include "weir/runtime/program.h"

namespace weir::bench {

class GptDecoder {
 public:
  // `attrs` are the Gpt function's (vocab, n_layers, d_model, ...); `params` must outlive the
  // decoder and keep its values while it decodes.
  GptDecoder(const Graph& graph, std::map<std::string, AttrValue> attrs, const OpRegistry& ops,
             const ParamStore& params, std::shared_ptr<deepseek::DecodePrograms> programs = nullptr)
      : graph_(graph),
        attrs_(std::move(attrs)),
        ops_(ops),
        params_(params),
        programs_(programs ? std::move(programs) : std::make_shared<deepseek::DecodePrograms>()) {}

  // Feeds tokens [batch, t] that follow the ones fed so far (the first call is the prefill);
  // returns their logits [batch, t, vocab] and appends them to the cache.
  StatusOr<Tensor> Feed(const Tensor& tokens) {
    if (tokens.rank() != 2 || tokens.dim(1) < 1)
      return InvalidArgument("tokens must be [batch, t >= 1], got " + tokens.DebugString());
    int64_t layers = Int("n_layers");
    if (keys_.empty()) {
      int64_t kv_heads = Int("n_kv_heads"), head_dim = Int("kv_dim") / kv_heads;
      DataType dtype = deepseek::ModelDtype(attrs_);
      for (int64_t l = 0; l < layers; ++l) {
        keys_.push_back(Tensor::Zeros(dtype, {tokens.dim(0), 0, kv_heads, head_dim}));
        values_.push_back(keys_.back());
      }
    }
    WEIR_ASSIGN_OR_RETURN(auto embedded, Run("GptDecodeEmbed", "", {tokens}));
    Tensor x = embedded[0];
    for (size_t l = 0; l < static_cast<size_t>(layers); ++l) {
      WEIR_ASSIGN_OR_RETURN(auto out, Run("GptBlockDecode", "layers." + std::to_string(l),
                                          {x, keys_[l], values_[l]}));
      x = out[0];
      keys_[l] = out[1];
      values_[l] = out[2];
    }
    WEIR_ASSIGN_OR_RETURN(auto head, Run("GptDecodeHead", "", {x}));
    position_ += tokens.dim(1);
    return head[0];
  }
  int64_t position() const { return position_; }

 private:
  int64_t Int(const std::string& name) const {
    if (auto it = attrs_.find(name); it != attrs_.end()) return it->second.i();
    for (const WrittenAttr& a : graph_.functions.at("Gpt").attrs)
      if (a.key == name) return InferLiteral(a.value)->i();
    return 0;
  }

  StatusOr<std::vector<Tensor>> Run(const std::string& function, const std::string& prefix,
                                    const std::vector<Tensor>& inputs) {
    return deepseek::RunDecodeFunction({graph_, attrs_, ops_, params_, *programs_}, block_params_,
                                       function, prefix, position_, inputs);
  }

  const Graph& graph_;
  std::map<std::string, AttrValue> attrs_;
  const OpRegistry& ops_;
  const ParamStore& params_;
  std::shared_ptr<deepseek::DecodePrograms> programs_;
  std::map<std::string, ParamStore> block_params_;
  std::vector<Tensor> keys_, values_;  // per layer: [batch, position, kv_heads, head_dim]
  int64_t position_ = 0;
};

}  // namespace weir::bench
