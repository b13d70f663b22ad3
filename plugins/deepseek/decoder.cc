#include "decoder.h"

namespace weir::deepseek {

LatentDecoder::LatentDecoder(const Graph& graph, std::map<std::string, AttrValue> attrs,
                             const OpRegistry& ops, const ParamStore& params)
    : graph_(graph), attrs_(std::move(attrs)), ops_(ops), params_(params) {}

int64_t LatentDecoder::Int(const std::string& name) const {
  auto it = attrs_.find(name);
  if (it != attrs_.end()) return it->second.i();
  // The function's default, as written in the graph.
  for (const WrittenAttr& a : graph_.functions.at("DeepseekV3").attrs)
    if (a.key == name) return InferLiteral(a.value)->i();
  return 0;
}

int64_t LatentDecoder::cached_elements_per_token() const {
  return Int("num_hidden_layers") * (Int("kv_lora_rank") + Int("qk_rope_head_dim"));
}

StatusOr<std::vector<Tensor>> LatentDecoder::Run(const std::string& function,
                                                 const std::string& prefix,
                                                 const std::vector<Tensor>& inputs,
                                                 const std::vector<std::string>& outputs) {
  auto fn = graph_.functions.find(function);
  if (fn == graph_.functions.end())
    return NotFound("the model graph has no function '" + function + "'");
  // The model's attrs that this function takes, and the position of its first token.
  std::map<std::string, AttrValue> attrs;
  for (const WrittenAttr& a : fn->second.attrs) {
    if (a.key == "position") {
      attrs["position"].set_i(position_);
    } else if (auto it = attrs_.find(a.key); it != attrs_.end()) {
      attrs[a.key] = it->second;
    }
  }
  std::vector<TensorType> types;
  for (const Tensor& t : inputs) types.push_back({t.dtype(), t.shape()});
  ProgramOptions options;
  options.prefix = prefix;
  options.outputs = outputs;
  WEIR_ASSIGN_OR_RETURN(auto program, Program::Build(graph_, function, attrs, types, ops_, options));
  WEIR_ASSIGN_OR_RETURN(auto result, program->Run(inputs, params_));
  return std::move(result.values);
}

StatusOr<Tensor> LatentDecoder::Feed(const Tensor& tokens) {
  if (tokens.rank() != 2 || tokens.dim(1) < 1)
    return InvalidArgument("tokens must be [batch, t >= 1], got " + tokens.DebugString());
  int64_t batch = tokens.dim(0), layers = Int("num_hidden_layers");
  int64_t dense = Int("first_k_dense_replace");
  if (latent_.empty()) {
    DataType dtype = DT_F32;
    if (auto t = attrs_.find("T"); t != attrs_.end() && t->second.has_type()) dtype = t->second.type();
    for (int64_t l = 0; l < layers; ++l) {
      latent_.push_back(Tensor::Zeros(dtype, {batch, 0, Int("kv_lora_rank")}));
      rope_key_.push_back(Tensor::Zeros(dtype, {batch, 0, Int("qk_rope_head_dim")}));
    }
  } else if (latent_[0].dim(0) != batch) {
    return InvalidArgument("batch " + std::to_string(batch) + " after a prefill of batch " +
                           std::to_string(latent_[0].dim(0)));
  }
  WEIR_ASSIGN_OR_RETURN(auto embedded, Run("DecodeEmbed", "", {tokens}, {}));
  Tensor x = embedded[0];
  for (int64_t l = 0; l < layers; ++l) {
    bool is_dense = l < dense;
    std::string prefix = is_dense ? "dense_layers." + std::to_string(l)
                                  : "moe_layers." + std::to_string(l - dense);
    auto& c = latent_[static_cast<size_t>(l)];
    auto& kpe = rope_key_[static_cast<size_t>(l)];
    WEIR_ASSIGN_OR_RETURN(auto out, Run(is_dense ? "DenseBlockDecode" : "MoEBlockDecode", prefix,
                                        {x, c, kpe}, {"x", "c", "kpe"}));
    x = out[0];
    c = out[1];
    kpe = out[2];
  }
  WEIR_ASSIGN_OR_RETURN(auto logits, Run("DecodeHead", "", {x}, {}));
  position_ += tokens.dim(1);
  return logits[0];
}

}  // namespace weir::deepseek
