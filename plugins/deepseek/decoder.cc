#include "decoder.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <numeric>

#include "weir/attr.h"

namespace weir::deepseek {

StatusOr<std::shared_ptr<const Program>> DecodePrograms::Get(
    const Graph& graph, const std::string& function, const std::map<std::string, AttrValue>& attrs,
    const std::vector<TensorType>& types, const OpRegistry& ops, const ProgramOptions& options) {
  std::string key = function + "|" + options.prefix + "|";
  // Binary, not text: the key is built for every block of every decoding step, and printing the
  // floats of ~30 attrs showed in the decode profile. AttrValue has no map fields, so its
  // serialization is deterministic; each value is prefixed by its length, so no two attr sets
  // give one key.
  for (const auto& [name, value] : attrs) {
    std::string bytes = value.SerializeAsString();
    key += name + "=" + std::to_string(bytes.size()) + ":" + bytes;
  }
  key += "|";
  for (const TensorType& t : types) key += t.ToString() + ";";
  key += "|";
  for (const std::string& o : options.outputs) key += o + ";";
  {
    std::lock_guard<std::mutex> lock(mutex_);
    if (auto it = programs_.find(key); it != programs_.end()) {
      ++hits_;
      return it->second;
    }
  }
  // Built outside the lock: decoders on other threads need not wait for it.
  WEIR_ASSIGN_OR_RETURN(auto program, Program::Build(graph, function, attrs, types, ops, options));
  std::lock_guard<std::mutex> lock(mutex_);
  ++builds_;
  if (capacity_ == 0) return program;
  // Programs of long-gone positions are never asked for again; a full cache starts over.
  if (programs_.size() >= capacity_) programs_.clear();
  programs_.emplace(key, program);
  return program;
}

ParamStore ComputeParams(const ParamStore& masters, const std::vector<ParamInfo>& infos) {
  std::map<std::string, DataType> types;
  for (const ParamInfo& info : infos) types[info.name] = info.type.dtype;
  ParamStore out;
  for (const auto& [name, value] : masters.values()) {
    auto it = types.find(name);
    out.Set(name, it == types.end() || it->second == value.dtype() ? value : value.To(it->second));
  }
  return out;
}

StatusOr<ParamStore> DecodeParams(const Graph& graph, const std::string& function,
                                  const std::map<std::string, AttrValue>& attrs,
                                  const OpRegistry& ops, const ParamStore& masters) {
  auto fn = graph.functions.find(function);
  if (fn == graph.functions.end())
    return NotFound("the model graph has no function '" + function + "'");
  // Long enough for the MTP module's shifted sequence.
  std::vector<TensorType> types(fn->second.inputs.size(), TensorType{DT_I64, {1, 4}});
  WEIR_ASSIGN_OR_RETURN(auto program, Program::Build(graph, function, attrs, types, ops, {}));
  return ComputeParams(masters, program->params());
}

DataType ModelDtype(const std::map<std::string, AttrValue>& attrs) {
  if (auto t = attrs.find("T"); t != attrs.end()) {
    auto typed = ConvertValue(t->second, ATTR_TYPE);
    if (typed.ok()) return typed->type();
  }
  return DT_F32;
}

LatentDecoder::LatentDecoder(const Graph& graph, std::map<std::string, AttrValue> attrs,
                             const OpRegistry& ops, const ParamStore& params,
                             std::shared_ptr<DecodePrograms> programs)
    : graph_(graph),
      attrs_(std::move(attrs)),
      ops_(ops),
      params_(params),
      programs_(programs ? std::move(programs) : std::make_shared<DecodePrograms>()) {}

int64_t LatentDecoder::Int(const std::string& name) const {
  auto it = attrs_.find(name);
  if (it != attrs_.end()) return it->second.i();
  // The function's default, as written in the graph.
  for (const WrittenAttr& a : graph_.functions.at("DeepseekV3").attrs)
    if (a.key == name) return InferLiteral(a.value)->i();
  return 0;
}

StatusOr<std::vector<Tensor>> RunDecodeFunction(const DecodeModel& model,
                                                std::map<std::string, ParamStore>& block_params,
                                                const std::string& function,
                                                const std::string& prefix, int64_t position,
                                                const std::vector<Tensor>& inputs,
                                                const std::vector<std::string>& outputs) {
  auto fn = model.graph.functions.find(function);
  if (fn == model.graph.functions.end())
    return NotFound("the model graph has no function '" + function + "'");
  // The model's attrs that this function takes, and the position of its first token.
  std::map<std::string, AttrValue> attrs;
  for (const WrittenAttr& a : fn->second.attrs) {
    if (a.key == "position") {
      attrs["position"].set_i(position);
    } else if (auto it = model.attrs.find(a.key); it != model.attrs.end()) {
      attrs[a.key] = it->second;
    }
  }
  std::vector<TensorType> types;
  for (const Tensor& t : inputs) types.push_back({t.dtype(), t.shape()});
  ProgramOptions options;
  options.outputs = outputs;
  const ParamStore* params = &model.params;
  if (!prefix.empty()) {
    // The block's parameters under the shared prefix (the tensors share storage with params).
    auto [it, added] = block_params.try_emplace(prefix);
    if (added) {
      std::string from = prefix + ".";
      for (const auto& [name, value] : model.params.values()) {
        if (name.compare(0, from.size(), from) == 0)
          it->second.Set(std::string(DecodePrograms::kBlockPrefix) + "." + name.substr(from.size()),
                         value);
      }
    }
    params = &it->second;
    options.prefix = DecodePrograms::kBlockPrefix;
  }
  WEIR_ASSIGN_OR_RETURN(
      auto program, model.programs.Get(model.graph, function, attrs, types, model.ops, options));
  WEIR_ASSIGN_OR_RETURN(auto result, program->Run(inputs, *params));
  return std::move(result.values);
}

StatusOr<std::vector<Tensor>> LatentDecoder::Run(const std::string& function,
                                                 const std::string& prefix, int64_t position,
                                                 const std::vector<Tensor>& inputs,
                                                 const std::vector<std::string>& outputs) {
  return RunDecodeFunction({graph_, attrs_, ops_, params_, *programs_}, block_params_, function,
                           prefix, position, inputs, outputs);
}

void LatentDecoder::Open(Cache& cache, int64_t batch, int64_t layers) const {
  if (!cache.blocks.empty()) return;
  cache.batch = batch;
  cache.lengths.assign(static_cast<size_t>(batch), 0);
  cache.blocks.assign(static_cast<size_t>(layers), Tensor::Zeros(ModelDtype(attrs_), {0, 0, 0}));
  cache.table = Tensor::Zeros(DT_I64, {batch, 0});
}

void LatentDecoder::Reserve(Cache& cache, int64_t tokens) const {
  const int64_t had = cache.table.dim(1), needed = (tokens + kBlockSize - 1) / kBlockSize;
  if (needed <= had) return;
  const int64_t max_blocks = std::max(needed, 2 * had), batch = cache.batch;
  const int64_t pool = had * batch;  // blocks in use: 0 .. pool - 1
  // The new blocks of each sequence follow the pool's.
  Tensor table = Tensor::Empty(DT_I64, {batch, max_blocks});
  for (int64_t b = 0; b < batch; ++b) {
    int64_t* row = table.data<int64_t>() + b * max_blocks;
    std::copy_n(cache.table.data<int64_t>() + b * had, had, row);
    for (int64_t j = had; j < max_blocks; ++j) row[j] = pool + b * (max_blocks - had) + (j - had);
  }
  const int64_t width = Int("kv_lora_rank") + Int("qk_rope_head_dim");
  for (Tensor& blocks : cache.blocks) {
    Tensor grown = Tensor::Zeros(blocks.dtype(), {batch * max_blocks, kBlockSize, width});
    if (pool > 0) std::memcpy(grown.raw_data(), blocks.raw_data(), blocks.nbytes());
    blocks = std::move(grown);
  }
  cache.table = std::move(table);
}

Status LatentDecoder::Prepare(Cache& cache, const Tensor& tokens,
                              const std::vector<int64_t>& used) const {
  const int64_t batch = tokens.dim(0), t = tokens.dim(1);
  if (cache.batch != batch) {
    return InvalidArgument("batch " + std::to_string(batch) + " after a prefill of batch " +
                           std::to_string(cache.batch));
  }
  if (!used.empty() && static_cast<int64_t>(used.size()) != batch) {
    return InvalidArgument(std::to_string(used.size()) + " used counts for a batch of " +
                           std::to_string(batch));
  }
  cache.used.assign(static_cast<size_t>(batch), t);
  for (size_t b = 0; b < used.size(); ++b) {
    if (used[b] < 1 || used[b] > t) {
      return InvalidArgument("row " + std::to_string(b) + " uses " + std::to_string(used[b]) +
                             " of its " + std::to_string(t) + " tokens (1 to " + std::to_string(t) +
                             ")");
    }
    cache.used[b] = used[b];
  }
  Reserve(cache, *std::max_element(cache.lengths.begin(), cache.lengths.end()) + t);
  return Status();
}

StatusOr<Tensor> LatentDecoder::Block(const std::string& function, const std::string& prefix,
                                      Cache& cache, size_t layer, std::vector<Tensor> inputs) {
  const int64_t t = inputs[0].dim(1);
  Tensor lengths = Tensor::FromValues(
      DT_I64, {cache.batch}, std::vector<double>(cache.lengths.begin(), cache.lengths.end()));
  Tensor& blocks = cache.blocks[layer];
  inputs.push_back(blocks);
  inputs.push_back(cache.table);
  inputs.push_back(lengths);
  WEIR_ASSIGN_OR_RETURN(auto out, Run(function, prefix, 0, inputs, {}));
  // The rows of the tokens each sequence uses into its blocks (Prepare made room).
  const Tensor rows = out[1].Contiguous();
  const size_t row_bytes = static_cast<size_t>(blocks.dim(2)) * DataTypeSize(blocks.dtype());
  const int64_t max_blocks = cache.table.dim(1);
  const auto* from = static_cast<const char*>(rows.raw_data());
  auto* to = static_cast<char*>(blocks.raw_data());
  for (int64_t b = 0; b < cache.batch; ++b) {
    for (int64_t i = 0; i < cache.used[static_cast<size_t>(b)]; ++i) {
      int64_t p = cache.lengths[static_cast<size_t>(b)] + i;
      int64_t block = cache.table.data<int64_t>()[b * max_blocks + p / kBlockSize];
      std::memcpy(to + (block * kBlockSize + p % kBlockSize) * static_cast<int64_t>(row_bytes),
                  from + (b * t + i) * static_cast<int64_t>(row_bytes), row_bytes);
    }
  }
  return out[0];
}

void LatentDecoder::Advance(Cache& cache) {
  for (size_t b = 0; b < cache.lengths.size(); ++b) cache.lengths[b] += cache.used[b];
}

StatusOr<Tensor> LatentDecoder::Feed(const Tensor& tokens, const std::vector<int64_t>& used) {
  if (tokens.rank() != 2 || tokens.dim(1) < 1)
    return InvalidArgument("tokens must be [batch, t >= 1], got " + tokens.DebugString());
  int64_t layers = Int("num_hidden_layers"), dense = Int("first_k_dense_replace");
  Open(main_, tokens.dim(0), layers);
  WEIR_RETURN_IF_ERROR(Prepare(main_, tokens, used));
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
  Advance(main_);
  hidden_ = head[1];
  return head[0];
}

int64_t LatentDecoder::position() const {
  return main_.lengths.empty() ? 0 : *std::max_element(main_.lengths.begin(), main_.lengths.end());
}

void LatentDecoder::Truncate(int64_t position) {
  // The rows after `position` stay in their blocks, to be overwritten.
  for (int64_t& length : main_.lengths) length = std::min(length, std::max<int64_t>(position, 0));
}

StatusOr<Tensor> LatentDecoder::FeedMtp(const Tensor& h, const Tensor& next_tokens) {
  if (Int("num_nextn_predict_layers") < 1)
    return InvalidArgument("the model has no MTP module (num_nextn_predict_layers is 0)");
  Open(mtp_, next_tokens.dim(0), 1);
  WEIR_RETURN_IF_ERROR(Prepare(mtp_, next_tokens, {}));
  WEIR_ASSIGN_OR_RETURN(auto embedded, Run("DecodeEmbed", "", 0, {next_tokens}, {}));
  WEIR_ASSIGN_OR_RETURN(Tensor state, Block("MTPDecode", "mtp.0", mtp_, 0, {h, embedded[0]}));
  Advance(mtp_);
  WEIR_ASSIGN_OR_RETURN(auto logits, Run("MTPHead", "", 0, {state}, {}));
  return logits[0];
}

namespace {

// The likeliest token (ties: the first).
int64_t Argmax(const float* logits, int64_t vocab) {
  int64_t best = 0;
  for (int64_t v = 1; v < vocab; ++v)
    if (logits[v] > logits[best]) best = v;
  return best;
}

bool Stops(const GenerateOptions& options, int64_t token) {
  return std::find(options.stop_tokens.begin(), options.stop_tokens.end(), token) !=
         options.stop_tokens.end();
}

}  // namespace

int64_t ChooseToken(const float* logits, int64_t vocab, const GenerateOptions& options,
                    std::mt19937_64& rng) {
  if (options.temperature <= 0) return Argmax(logits, vocab);
  // The candidates, likeliest first; top-k, then the nucleus of top-p.
  std::vector<int64_t> ids(static_cast<size_t>(vocab));
  std::iota(ids.begin(), ids.end(), 0);
  size_t keep = options.top_k > 0 ? std::min<size_t>(static_cast<size_t>(options.top_k), ids.size())
                                  : ids.size();
  std::partial_sort(ids.begin(), ids.begin() + static_cast<std::ptrdiff_t>(keep), ids.end(),
                    [&](int64_t a, int64_t b) { return logits[a] > logits[b]; });
  ids.resize(keep);
  std::vector<double> p(keep);
  double top = logits[ids[0]], sum = 0;
  for (size_t i = 0; i < keep; ++i)
    sum += p[i] = std::exp((logits[ids[i]] - top) / options.temperature);
  double mass = 0;
  size_t nucleus = 0;
  while (nucleus < keep && (nucleus == 0 || mass < options.top_p * sum)) mass += p[nucleus++];
  double u = std::uniform_real_distribution<double>(0, mass)(rng);
  for (size_t i = 0; i < nucleus; ++i) {
    if (u < p[i]) return ids[i];
    u -= p[i];
  }
  return ids[nucleus - 1];
}

namespace {

Tensor Ids(const std::vector<int64_t>& ids) {
  std::vector<double> values(ids.begin(), ids.end());
  return Tensor::FromValues(DT_I64, {1, static_cast<int64_t>(ids.size())}, values);
}

using Clock = std::chrono::steady_clock;
double Since(Clock::time_point t) {
  return std::chrono::duration<double>(Clock::now() - t).count();
}

// Speculative greedy decoding of one prompt (see Generate).
Status Speculate(LatentDecoder& decoder, const Tensor& prompt, const GenerateOptions& options,
                 Generated& out) {
  std::vector<int64_t>& tokens = out.tokens[0];
  // Appends t; false when the prompt is done.
  auto emit = [&](int64_t t) {
    tokens.push_back(t);
    return !Stops(options, t) && static_cast<int64_t>(tokens.size()) < options.max_new;
  };
  auto greedy = [](const Tensor& logits, int64_t t) {
    return Argmax(logits.data<float>() + t * logits.dim(2), logits.dim(2));
  };
  auto start = Clock::now();
  WEIR_ASSIGN_OR_RETURN(Tensor logits, decoder.Feed(prompt));
  logits = logits.To(DT_F32);
  out.prefill_seconds = Since(start);
  start = Clock::now();
  out.main_steps = 1;
  int64_t length = prompt.dim(1);
  int64_t next = greedy(logits, length - 1);
  if (!emit(next)) return Status();
  // MTP over the prompt: position i sees h_i and token i+1 (the last one is `next`) and guesses
  // token i+2.
  std::vector<int64_t> shifted;
  for (int64_t i = 1; i < length; ++i) shifted.push_back(static_cast<int64_t>(prompt.At(i)));
  shifted.push_back(next);
  WEIR_ASSIGN_OR_RETURN(Tensor guesses, decoder.FeedMtp(decoder.hidden(), Ids(shifted)));
  int64_t draft = greedy(guesses.To(DT_F32), length - 1);
  while (true) {
    // One main step over `next` and the draft: its choice after `next` checks the draft.
    int64_t before = decoder.position();
    WEIR_ASSIGN_OR_RETURN(logits, decoder.Feed(Ids({next, draft})));
    logits = logits.To(DT_F32);
    Tensor h = decoder.hidden();
    int64_t choice = greedy(logits, 0);
    ++out.main_steps;
    ++out.drafted;
    if (choice == draft) {
      ++out.accepted;
      int64_t after = greedy(logits, 1);
      if (!emit(draft) || !emit(after)) break;
      WEIR_ASSIGN_OR_RETURN(guesses, decoder.FeedMtp(h, Ids({draft, after})));
      next = after;
      draft = greedy(guesses.To(DT_F32), 1);
    } else {
      decoder.Truncate(before + 1);  // the draft's cache entries are wrong
      if (!emit(choice)) break;
      WEIR_ASSIGN_OR_RETURN(guesses, decoder.FeedMtp(h.Slice(1, 0, 1).Contiguous(), Ids({choice})));
      next = choice;
      draft = greedy(guesses.To(DT_F32), 0);
    }
  }
  out.decode_seconds = Since(start);
  return Status();
}

}  // namespace

std::pair<Tensor, std::vector<int64_t>> PadPrompts(const std::vector<std::vector<int64_t>>& prompts,
                                                   const std::vector<size_t>& rows) {
  size_t longest = 0;
  for (size_t r : rows) longest = std::max(longest, prompts[r].size());
  std::vector<double> ids;
  std::vector<int64_t> lengths;
  for (size_t r : rows) {
    const std::vector<int64_t>& p = prompts[r];
    ids.insert(ids.end(), p.begin(), p.end());
    ids.insert(ids.end(), longest - p.size(), p.empty() ? 0.0 : static_cast<double>(p.back()));
    lengths.push_back(static_cast<int64_t>(p.size()));
  }
  Tensor tokens = Tensor::FromValues(
      DT_I64, {static_cast<int64_t>(rows.size()), static_cast<int64_t>(longest)}, ids);
  return {tokens, lengths};
}

StatusOr<Generated> Generate(LatentDecoder& decoder, const Tensor& prompts,
                             const GenerateOptions& options,
                             const std::vector<int64_t>& prompt_lengths) {
  if (prompts.rank() != 2 || prompts.dim(1) < 1)
    return InvalidArgument("prompts must be [batch, length >= 1], got " + prompts.DebugString());
  const bool padded = std::any_of(prompt_lengths.begin(), prompt_lengths.end(),
                                  [&](int64_t n) { return n != prompts.dim(1); });
  if (decoder.position() != 0) return InvalidArgument("the decoder has already seen tokens");
  if (options.top_p <= 0 || options.top_p > 1)
    return InvalidArgument("top_p must be in (0, 1], got " + std::to_string(options.top_p));
  int64_t batch = prompts.dim(0);
  Generated out;
  out.tokens.resize(static_cast<size_t>(batch));
  if (options.max_new < 1) return out;
  Tensor p = prompts.Contiguous();
  if (options.speculative) {
    if (batch != 1 || options.temperature > 0 || padded)
      return InvalidArgument("speculative decoding is greedy with one unpadded prompt at a time");
    WEIR_RETURN_IF_ERROR(Speculate(decoder, p, options, out));
    return out;
  }
  std::vector<std::mt19937_64> rngs;
  for (int64_t b = 0; b < batch; ++b)
    rngs.emplace_back(options.seed ^ (0x9E3779B97F4A7C15ULL * static_cast<uint64_t>(b + 1)));
  std::vector<bool> done(static_cast<size_t>(batch), false);
  auto start = Clock::now();
  WEIR_ASSIGN_OR_RETURN(Tensor logits, decoder.Feed(p, prompt_lengths));
  out.prefill_seconds = Since(start);
  start = Clock::now();
  out.main_steps = 1;
  // Per row, the position whose logits choose the next token: its last prompt token.
  std::vector<int64_t> row(static_cast<size_t>(batch), p.dim(1) - 1);
  for (size_t b = 0; b < prompt_lengths.size(); ++b) row[b] = prompt_lengths[b] - 1;
  while (true) {
    Tensor f = logits.To(DT_F32);
    int64_t vocab = f.dim(2), steps = f.dim(1);
    std::vector<int64_t> next(static_cast<size_t>(batch));
    bool any = false;
    for (int64_t b = 0; b < batch; ++b) {
      auto& tokens = out.tokens[static_cast<size_t>(b)];
      if (done[static_cast<size_t>(b)]) {
        next[static_cast<size_t>(b)] = tokens.back();  // finished rows idle on their last token
        continue;
      }
      int64_t t = ChooseToken(f.data<float>() + (b * steps + row[static_cast<size_t>(b)]) * vocab,
                              vocab, options, rngs[static_cast<size_t>(b)]);
      tokens.push_back(t);
      next[static_cast<size_t>(b)] = t;
      done[static_cast<size_t>(b)] = Stops(options, t) ||
                                     static_cast<int64_t>(tokens.size()) >= options.max_new ||
                                     (options.stop_when && options.stop_when(b, tokens));
      any = any || !done[static_cast<size_t>(b)];
    }
    if (!any) break;
    std::vector<double> ids(next.begin(), next.end());
    WEIR_ASSIGN_OR_RETURN(logits, decoder.Feed(Tensor::FromValues(DT_I64, {batch, 1}, ids)));
    ++out.main_steps;
    std::fill(row.begin(), row.end(), 0);
  }
  out.decode_seconds = Since(start);
  return out;
}

}  // namespace weir::deepseek
