// Incremental decoding of a DeepseekV3 model (graphs/models/deepseek_v3.pbtxt) over MLA's latent
// cache: per layer only the normalized latent c_KV and the rotated RoPE key are kept, in blocks
// of 64 tokens that a block table maps to each sequence (FlashMLA's paged layout), and
// attention runs in the absorbed form (spec §2.2) with nn.PagedLatentAttention. Each block is a
// program of the graph's DenseBlockDecode / MoEBlockDecode built with the block's name as prefix,
// so it reads the parameters the training function created (or the HF converter imported). The MTP
// module decodes the same way (MTPDecode, prefix mtp.0) and drafts a token for speculative decoding
// (spec §4).
#pragma once

#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <random>
#include <string>
#include <vector>

#include "weir/graph.h"
#include "weir/op_registry.h"
#include "weir/runtime/program.h"

namespace weir::deepseek {

// Decoding programs by (function, attrs, input types), built with the prefix kBlockPrefix when
// they are blocks (so every layer of a kind shares one program, run over that layer's parameters
// under the shared name). A block program depends on the number of new tokens and the size of
// the paged cache, not on the position (RoPE reads the sequences' lengths), so one serves every
// decoding step until the cache grows; a cache shared by decoders of one graph serves every
// generation. Thread-safe.
class DecodePrograms {
 public:
  static constexpr const char* kBlockPrefix = "block";
  // At most `capacity` programs are kept (0: none, every program is built when asked for).
  explicit DecodePrograms(size_t capacity = 4096) : capacity_(capacity) {}
  StatusOr<std::shared_ptr<const Program>> Get(const Graph& graph, const std::string& function,
                                               const std::map<std::string, AttrValue>& attrs,
                                               const std::vector<TensorType>& types,
                                               const OpRegistry& ops,
                                               const ProgramOptions& options);
  int64_t builds() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return builds_;
  }
  int64_t hits() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return hits_;
  }

 private:
  size_t capacity_;
  mutable std::mutex mutex_;
  std::map<std::string, std::shared_ptr<const Program>> programs_;
  int64_t builds_ = 0, hits_ = 0;
};

// What a decoder runs its graph functions with: the model graph, the model's attrs, the ops, its
// parameters and the program cache.
struct DecodeModel {
  const Graph& graph;
  const std::map<std::string, AttrValue>& attrs;
  const OpRegistry& ops;
  const ParamStore& params;
  DecodePrograms& programs;
};

// Runs `function` of the model graph over tokens at `position` (the model's attrs it declares,
// `position` set), as a cached program. With a `prefix` (a block's name: "layers.3") the
// program is built under DecodePrograms::kBlockPrefix and runs on that block's parameters,
// renamed into `block_params` (sharing storage), so one program serves every layer.
StatusOr<std::vector<Tensor>> RunDecodeFunction(const DecodeModel& model,
                                                std::map<std::string, ParamStore>& block_params,
                                                const std::string& function,
                                                const std::string& prefix, int64_t position,
                                                const std::vector<Tensor>& inputs,
                                                const std::vector<std::string>& outputs = {});

// The parameters in the dtypes a model built with `infos` computes with (bf16 weights for a model
// built with T=bf16), for decoders: a program's parameter node converts a master whose dtype
// differs from its own at every run, which for a bf16 decoder meant converting every weight at
// every step. Convert once per weight version instead and decode over the copy. Parameters
// already in their type, and those `infos` does not name, share the masters' storage.
ParamStore ComputeParams(const ParamStore& masters, const std::vector<ParamInfo>& infos);

// ComputeParams for decoders of the model `function` (DeepseekV3, Gpt: its inputs are token ids)
// with `attrs`: the function is built once, for one short sequence, for its parameters' types.
StatusOr<ParamStore> DecodeParams(const Graph& graph, const std::string& function,
                                  const std::map<std::string, AttrValue>& attrs,
                                  const OpRegistry& ops, const ParamStore& masters);

// The dtype a model with `attrs` computes in: its T, which may be written as a word ("bf16" in a
// resource's attrs string) or be absent (f32).
DataType ModelDtype(const std::map<std::string, AttrValue>& attrs);

class LatentDecoder {
 public:
  // `attrs` are the DeepseekV3 function's (HfConfig::Attrs); `params` must outlive the decoder
  // and keep its values while it decodes. `programs` may be shared by decoders of the same
  // `graph` and `ops` (null: the decoder's own).
  LatentDecoder(const Graph& graph, std::map<std::string, AttrValue> attrs, const OpRegistry& ops,
                const ParamStore& params, std::shared_ptr<DecodePrograms> programs = nullptr);

  // Feeds tokens [batch, t] that follow the ones fed so far (the first call is the prefill);
  // returns their logits [batch, t, vocab] and appends them to the cache. hidden() then holds
  // their final normed states [batch, t, d]. With `used`, row b's first used[b] tokens (1 to t)
  // are its own and the rest padding: only those are cached, so rows grow by different counts
  // (prompts of different lengths, right-padded, prefilled as one batch). Each row's tokens sit
  // at its own positions: its logits at padded positions mean nothing.
  StatusOr<Tensor> Feed(const Tensor& tokens, const std::vector<int64_t>& used = {});
  const Tensor& hidden() const { return hidden_; }
  // Forgets every cached token from `position` on (a draft the model rejected).
  void Truncate(int64_t position);
  // The most tokens a row has cached.
  int64_t position() const;

  // The MTP module (num_nextn_predict_layers >= 1) at the positions after the ones it has seen:
  // h [batch, t, d] the main model's normed states there, next_tokens [batch, t] the tokens
  // after them; returns logits [batch, t, vocab] guessing the token two ahead of each position.
  StatusOr<Tensor> FeedMtp(const Tensor& h, const Tensor& next_tokens);

 private:
  // Sequence b's j-th block is blocks[l][table[b, j]] in every layer l; a block holds
  // kBlockSize rows of c_KV ‖ k_pe. Blocks are never moved while the table grows, except when
  // the pool itself grows (doubling, so each row is copied O(1) times on average).
  struct Cache {
    std::vector<Tensor> blocks;  // per layer: [pool blocks, kBlockSize, kv_lora + rope dims]
    Tensor table;                // i64 [batch, max_blocks]
    int64_t batch = 0;
    std::vector<int64_t> lengths;  // per sequence: tokens cached
    std::vector<int64_t> used;     // per sequence: tokens the step in progress adds
  };
  static constexpr int64_t kBlockSize = 64;
  // Makes room for `tokens` tokens per sequence.
  void Reserve(Cache& cache, int64_t tokens) const;
  // Checks a step's batch and used counts (empty: every token), notes them and makes room.
  Status Prepare(Cache& cache, const Tensor& tokens, const std::vector<int64_t>& used) const;
  // Ends a step: every sequence has cached its used tokens.
  static void Advance(Cache& cache);
  StatusOr<std::vector<Tensor>> Run(const std::string& function, const std::string& prefix,
                                    int64_t position, const std::vector<Tensor>& inputs,
                                    const std::vector<std::string>& outputs);
  // Runs one block over layer `layer` of the cache, storing the new tokens' rows there; returns
  // the block's output.
  StatusOr<Tensor> Block(const std::string& function, const std::string& prefix, Cache& cache,
                         size_t layer, std::vector<Tensor> inputs);
  void Open(Cache& cache, int64_t batch, int64_t layers) const;
  int64_t Int(const std::string& name) const;

  const Graph& graph_;
  std::map<std::string, AttrValue> attrs_;
  const OpRegistry& ops_;
  const ParamStore& params_;
  std::shared_ptr<DecodePrograms> programs_;
  // Per block prefix ("moe_layers.1"): its parameters, named under DecodePrograms::kBlockPrefix.
  std::map<std::string, ParamStore> block_params_;
  Cache main_, mtp_;
  Tensor hidden_;
};

struct GenerateOptions {
  int64_t max_new = 32;              // new tokens per prompt at most
  double temperature = 0;            // 0: greedy
  int64_t top_k = 0;                 // sample among the k likeliest (0: all)
  double top_p = 1;                  // ... and within the smallest set holding p of the mass
  uint64_t seed = 0;                 // prompt b of a batch draws from stream (seed, b)
  std::vector<int64_t> stop_tokens;  // a prompt ends with the first of these it generates
  bool speculative = false;          // MTP drafts (greedy, one prompt)
  // Called after each token a prompt gets (its index in the batch and its new tokens so far):
  // true ends that prompt there (a stop string completed).
  std::function<bool(int64_t, const std::vector<int64_t>&)> stop_when;
};

struct Generated {
  std::vector<std::vector<int64_t>> tokens;  // per prompt: the new tokens, a stop token last
  int64_t drafted = 0;                       // MTP drafts checked by the main model
  int64_t accepted = 0;                      // of those, the ones it agreed with
  int64_t main_steps = 0;                    // passes of the main model, the prefill included
  double prefill_seconds = 0, decode_seconds = 0;
};

// Generates after `prompts` [batch, length] on a fresh decoder: greedy or sampled (temperature,
// top-k, top-p; reproducible from the seed), every prompt until a stop token or
// max_new. With `speculative` (greedy, one prompt), MTP drafts the token after the next one and
// each main step verifies the pair (spec §4: a second token for free when the draft is
// accepted); the tokens are the same as without it. Prompts of different lengths decode as one
// batch when right-padded to the longest, with `prompt_lengths` giving each one's own length
// (empty: all of them full). A row's tokens do not depend on the others': greedy rows get what
// they get alone.
StatusOr<Generated> Generate(LatentDecoder& decoder, const Tensor& prompts,
                             const GenerateOptions& options,
                             const std::vector<int64_t>& prompt_lengths = {});

// The prompts `rows` of `prompts` as one batch [rows, longest], right-padded with their last
// token, and each one's length: Generate's prompts and prompt_lengths.
std::pair<Tensor, std::vector<int64_t>> PadPrompts(const std::vector<std::vector<int64_t>>& prompts,
                                                   const std::vector<size_t>& rows);

// The token chosen from `logits` [vocab] (greedy when options.temperature is 0).
int64_t ChooseToken(const float* logits, int64_t vocab, const GenerateOptions& options,
                    std::mt19937_64& rng);

}  // namespace weir::deepseek
