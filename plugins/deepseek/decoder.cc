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

StatusOr<std::vector<Tensor>> LatentDecoder::Run(const std::string& function,
                                                 const std::string& prefix, int64_t position,
                                                 const std::vector<Tensor>& inputs,
                                                 const std::vector<std::string>& outputs) {
  auto fn = graph_.functions.find(function);
  if (fn == graph_.functions.end())
    return NotFound("the model graph has no function '" + function + "'");
  // The model's attrs that this function takes, and the position of its first token.
  std::map<std::string, AttrValue> attrs;
  for (const WrittenAttr& a : fn->second.attrs) {
    if (a.key == "position") {
      attrs["position"].set_i(position);
    } else if (auto it = attrs_.find(a.key); it != attrs_.end()) {
      attrs[a.key] = it->second;
    }
  }
  std::vector<TensorType> types;
  for (const Tensor& t : inputs) types.push_back({t.dtype(), t.shape()});
  ProgramOptions options;
  options.prefix = prefix;
  options.outputs = outputs;
  WEIR_ASSIGN_OR_RETURN(auto program,
                        Program::Build(graph_, function, attrs, types, ops_, options));
  WEIR_ASSIGN_OR_RETURN(auto result, program->Run(inputs, params_));
  return std::move(result.values);
}

void LatentDecoder::Open(Cache& cache, int64_t batch, int64_t layers) const {
  if (!cache.latent.empty()) return;
  DataType dtype = DT_F32;
  if (auto t = attrs_.find("T"); t != attrs_.end() && t->second.has_type())
    dtype = t->second.type();
  for (int64_t l = 0; l < layers; ++l) {
    cache.latent.push_back(Tensor::Zeros(dtype, {batch, 0, Int("kv_lora_rank")}));
    cache.rope_key.push_back(Tensor::Zeros(dtype, {batch, 0, Int("qk_rope_head_dim")}));
  }
}

StatusOr<Tensor> LatentDecoder::Block(const std::string& function, const std::string& prefix,
                                      Cache& cache, size_t layer, std::vector<Tensor> inputs) {
  inputs.push_back(cache.latent[layer]);
  inputs.push_back(cache.rope_key[layer]);
  WEIR_ASSIGN_OR_RETURN(auto out, Run(function, prefix, cache.position, inputs, {}));
  cache.latent[layer] = out[1];
  cache.rope_key[layer] = out[2];
  return out[0];
}

StatusOr<Tensor> LatentDecoder::Feed(const Tensor& tokens) {
  if (tokens.rank() != 2 || tokens.dim(1) < 1)
    return InvalidArgument("tokens must be [batch, t >= 1], got " + tokens.DebugString());
  int64_t layers = Int("num_hidden_layers"), dense = Int("first_k_dense_replace");
  Open(main_, tokens.dim(0), layers);
  if (main_.latent[0].dim(0) != tokens.dim(0)) {
    return InvalidArgument("batch " + std::to_string(tokens.dim(0)) + " after a prefill of batch " +
                           std::to_string(main_.latent[0].dim(0)));
  }
  WEIR_ASSIGN_OR_RETURN(auto embedded, Run("DecodeEmbed", "", 0, {tokens}, {}));
  Tensor x = embedded[0];
  for (int64_t l = 0; l < layers; ++l) {
    bool is_dense = l < dense;
    std::string prefix =
        is_dense ? "dense_layers." + std::to_string(l) : "moe_layers." + std::to_string(l - dense);
    WEIR_ASSIGN_OR_RETURN(x, Block(is_dense ? "DenseBlockDecode" : "MoEBlockDecode", prefix, main_,
                                   static_cast<size_t>(l), {x}));
  }
  WEIR_ASSIGN_OR_RETURN(auto head, Run("DecodeHead", "", 0, {x}, {}));
  main_.position += tokens.dim(1);
  hidden_ = head[1];
  return head[0];
}

void LatentDecoder::Truncate(int64_t position) {
  if (position >= main_.position) return;
  for (size_t l = 0; l < main_.latent.size(); ++l) {
    main_.latent[l] = main_.latent[l].Slice(1, 0, position).Contiguous();
    main_.rope_key[l] = main_.rope_key[l].Slice(1, 0, position).Contiguous();
  }
  main_.position = position;
}

StatusOr<Tensor> LatentDecoder::FeedMtp(const Tensor& h, const Tensor& next_tokens) {
  if (Int("num_nextn_predict_layers") < 1)
    return InvalidArgument("the model has no MTP module (num_nextn_predict_layers is 0)");
  Open(mtp_, next_tokens.dim(0), 1);
  WEIR_ASSIGN_OR_RETURN(auto embedded, Run("DecodeEmbed", "", 0, {next_tokens}, {}));
  WEIR_ASSIGN_OR_RETURN(Tensor state, Block("MTPDecode", "mtp.0", mtp_, 0, {h, embedded[0]}));
  mtp_.position += next_tokens.dim(1);
  WEIR_ASSIGN_OR_RETURN(auto logits, Run("MTPHead", "", 0, {state}, {}));
  return logits[0];
}

namespace {

// The argmax of row `t` of logits [1, t, vocab] (ties: the first).
int64_t Greedy(const Tensor& logits, int64_t t) {
  int64_t vocab = logits.dim(2), best = 0;
  for (int64_t v = 1; v < vocab; ++v)
    if (logits.At(t * vocab + v) > logits.At(t * vocab + best)) best = v;
  return best;
}

Tensor Ids(const std::vector<int64_t>& ids) {
  std::vector<double> values(ids.begin(), ids.end());
  return Tensor::FromValues(DT_I64, {1, static_cast<int64_t>(ids.size())}, values);
}

}  // namespace

StatusOr<Generated> GenerateGreedy(LatentDecoder& decoder, const Tensor& prompt, int64_t max_new,
                                   bool speculative) {
  if (prompt.rank() != 2 || prompt.dim(0) != 1 || prompt.dim(1) < 1)
    return InvalidArgument("greedy generation takes one prompt [1, length], got " +
                           prompt.DebugString());
  if (decoder.position() != 0) return InvalidArgument("the decoder has already seen tokens");
  Generated out;
  if (max_new < 1) return out;
  Tensor p = prompt.Contiguous();
  WEIR_ASSIGN_OR_RETURN(Tensor logits, decoder.Feed(p));
  out.main_steps = 1;
  int64_t length = p.dim(1);
  int64_t next = Greedy(logits, length - 1);
  out.tokens.push_back(next);
  if (!speculative) {
    while (static_cast<int64_t>(out.tokens.size()) < max_new) {
      WEIR_ASSIGN_OR_RETURN(logits, decoder.Feed(Ids({next})));
      ++out.main_steps;
      next = Greedy(logits, 0);
      out.tokens.push_back(next);
    }
    return out;
  }
  // MTP over the prompt: position i sees h_i and token i+1 (the last one is `next`) and guesses
  // token i+2.
  std::vector<int64_t> shifted;
  for (int64_t i = 1; i < length; ++i) shifted.push_back(static_cast<int64_t>(p.At(i)));
  shifted.push_back(next);
  WEIR_ASSIGN_OR_RETURN(Tensor guesses, decoder.FeedMtp(decoder.hidden(), Ids(shifted)));
  int64_t draft = Greedy(guesses, length - 1);
  while (static_cast<int64_t>(out.tokens.size()) < max_new) {
    // One main step over `next` and the draft: its choice after `next` checks the draft.
    int64_t before = decoder.position();
    WEIR_ASSIGN_OR_RETURN(logits, decoder.Feed(Ids({next, draft})));
    ++out.main_steps;
    Tensor h = decoder.hidden();
    int64_t choice = Greedy(logits, 0);
    ++out.drafted;
    if (choice == draft) {
      ++out.accepted;
      int64_t after = Greedy(logits, 1);
      out.tokens.push_back(draft);
      if (static_cast<int64_t>(out.tokens.size()) < max_new) out.tokens.push_back(after);
      WEIR_ASSIGN_OR_RETURN(guesses, decoder.FeedMtp(h, Ids({draft, after})));
      next = after;
      draft = Greedy(guesses, 1);
    } else {
      decoder.Truncate(before + 1);  // the draft's cache entries are wrong
      out.tokens.push_back(choice);
      WEIR_ASSIGN_OR_RETURN(guesses, decoder.FeedMtp(h.Slice(1, 0, 1).Contiguous(), Ids({choice})));
      next = choice;
      draft = Greedy(guesses, 0);
    }
  }
  out.tokens.resize(static_cast<size_t>(max_new));
  return out;
}

}  // namespace weir::deepseek
