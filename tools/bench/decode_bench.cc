// Batch-1 prefill and greedy decoding speed of weir's cached decoders on random (seeded) weights:
// the GPT of graphs/models/gpt.pbtxt (GptDecoder, a K/V cache) or the DeepSeek-V3 model
// (deepseek::LatentDecoder, MLA's latent cache). tools/bench/decode runs it beside PyTorch.
//   weir_decode_bench gpt|deepseek GRAPH 'ATTRS' PROMPT NEW REPEATS [f32|bf16]
// prints "prefill uncached_decode cold_decode warm_decode uncached_prefill" in tokens/s:
// uncached builds every block's program for every token (no DecodePrograms reuse); cold is a
// decoder with its own program cache (weir generate: every position's block program is built once
// and shared by the layers); warm is the best later generation over one cache shared by the
// generations (every program already built, as for repeated generations of equal prompt length).
// Every generation must choose the same greedy tokens as the first (an error otherwise).
// The weights are the same f32 masters for either dtype; bf16 decodes a model built with T=bf16
// over a bf16 copy of them (deepseek::DecodeParams, made once) and appends two counts that say
// how far its tokens follow f32's: "same_prefix forced_same", the greedy steps before its first
// token that differs from f32 decoding's, and the steps at which it picks f32's token when fed
// f32's tokens (teacher-forced: one early difference does not change every later context).
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <string>
#include <vector>

#include "decoder.h"
#include "gpt_decoder.h"
#include "weir/attr.h"
#include "weir/graph.h"
#include "weir/plugin_loader.h"

namespace weir {
namespace {

using Clock = std::chrono::steady_clock;
double Since(Clock::time_point t) {
  return std::chrono::duration<double>(Clock::now() - t).count();
}

int64_t LastArgmax(const Tensor& logits) {
  Tensor f = logits.To(DT_F32);
  int64_t vocab = f.dim(2);
  const float* row = f.data<float>() + (f.dim(1) - 1) * vocab;
  return std::max_element(row, row + vocab) - row;
}

struct Rates {
  double prefill = 0, decode = 0;
  uint64_t tokens = 0;  // a hash of the greedy tokens
};

// One generation: the prompt, then `new_tokens` greedy steps, each fed back, or with `forced`
// fed those tokens instead. `chosen` gets the greedy choices.
using FeedFn = std::function<StatusOr<Tensor>(const Tensor&)>;
StatusOr<Rates> Generate(const FeedFn& feed, const Tensor& prompt, int64_t new_tokens,
                         std::vector<int64_t>* chosen = nullptr,
                         const std::vector<int64_t>* forced = nullptr) {
  Rates rates;
  auto start = Clock::now();
  WEIR_ASSIGN_OR_RETURN(Tensor logits, feed(prompt));
  rates.prefill = static_cast<double>(prompt.dim(1)) / Since(start);
  start = Clock::now();
  uint64_t hash = 0;
  for (int64_t i = 0; i < new_tokens; ++i) {
    int64_t token = LastArgmax(logits);
    hash = hash * 1000003 + static_cast<uint64_t>(token);
    if (chosen != nullptr) chosen->push_back(token);
    if (forced != nullptr) token = (*forced)[static_cast<size_t>(i)];
    Tensor next = Tensor::FromValues(DT_I64, {1, 1}, {static_cast<double>(token)});
    WEIR_ASSIGN_OR_RETURN(logits, feed(next));
  }
  rates.decode = static_cast<double>(new_tokens) / Since(start);
  rates.tokens = hash;
  return rates;
}

Status Main(int argc, char** argv) {
  if (argc != 7 && argc != 8) {
    return InvalidArgument(
        "usage: weir_decode_bench gpt|deepseek GRAPH 'ATTRS' PROMPT NEW REPEATS [f32|bf16]");
  }
  std::string kind = argv[1];
  if (kind != "gpt" && kind != "deepseek") return InvalidArgument("model: gpt or deepseek");
  int64_t prompt_length = std::atoll(argv[4]), new_tokens = std::atoll(argv[5]);
  int repeats = std::atoi(argv[6]);
  std::string dtype_name = argc == 8 ? argv[7] : "f32";
  if (dtype_name != "f32" && dtype_name != "bf16") return InvalidArgument("dtype: f32 or bf16");
  OpRegistry ops;
  PluginLoader loader(&ops);
  WEIR_RETURN_IF_ERROR(loader.LoadDefaults());
  WEIR_ASSIGN_OR_RETURN(Graph graph, LoadGraph(argv[2]));
  WEIR_RETURN_IF_ERROR(ResolveGraph(graph, ops));
  WEIR_ASSIGN_OR_RETURN(auto f32_attrs, ParseAttrValues(argv[3], SourceLoc{}));
  f32_attrs["T"].set_type(DT_F32);
  auto attrs = f32_attrs;
  if (dtype_name == "bf16") attrs["T"].set_type(DT_BF16);
  std::string model = kind == "gpt" ? "Gpt" : "DeepseekV3";
  int64_t vocab = attrs.at(kind == "gpt" ? "vocab" : "vocab_size").i();

  // The f32 masters, as the training function declares them, and what the decoders read: the
  // masters themselves or their copy in the decoding dtype.
  std::vector<TensorType> types = {{DT_I64, {1, prompt_length}}, {DT_I64, {1, prompt_length}}};
  WEIR_ASSIGN_OR_RETURN(auto full, Program::Build(graph, model, f32_attrs, types, ops, {}));
  ParamStore masters;
  masters.Initialize(full->params(), 1);
  ParamStore params = masters;
  if (dtype_name != "f32") {
    WEIR_ASSIGN_OR_RETURN(params, deepseek::DecodeParams(graph, model, attrs, ops, masters));
  }

  std::vector<double> ids;
  uint64_t state = 7;
  for (int64_t i = 0; i < prompt_length; ++i) {
    state = state * 6364136223846793005ULL + 1442695040888963407ULL;
    ids.push_back(static_cast<double>((state >> 33) % static_cast<uint64_t>(vocab)));
  }
  Tensor prompt = Tensor::FromValues(DT_I64, {1, prompt_length}, ids);

  // A generation by a fresh decoder of `attrs` over `values` and `programs`.
  auto generate = [&](const std::map<std::string, AttrValue>& a, const ParamStore& values,
                      std::shared_ptr<deepseek::DecodePrograms> programs,
                      std::vector<int64_t>* chosen = nullptr,
                      const std::vector<int64_t>* forced = nullptr) -> StatusOr<Rates> {
    if (kind == "gpt") {
      bench::GptDecoder decoder(graph, a, ops, values, std::move(programs));
      return Generate([&](const Tensor& t) { return decoder.Feed(t); }, prompt, new_tokens, chosen,
                      forced);
    }
    deepseek::LatentDecoder decoder(graph, a, ops, values, std::move(programs));
    return Generate([&](const Tensor& t) { return decoder.Feed(t); }, prompt, new_tokens, chosen,
                    forced);
  };

  auto shared = std::make_shared<deepseek::DecodePrograms>();
  Rates uncached, cold, warm;
  std::vector<int64_t> tokens;
  for (int r = -1; r <= repeats; ++r) {
    // Generation -1 keeps no program (every block built for every token); generation 0 has a
    // cache of its own (cold); the others share one, filled by generation 1.
    auto programs = r == -1  ? std::make_shared<deepseek::DecodePrograms>(0)
                    : r == 0 ? std::make_shared<deepseek::DecodePrograms>()
                             : shared;
    WEIR_ASSIGN_OR_RETURN(Rates rates,
                          generate(attrs, params, programs, r == -1 ? &tokens : nullptr));
    // Every way of decoding must choose the same tokens (programs shared or not).
    if (r > -1 && rates.tokens != uncached.tokens)
      return Internal("generation " + std::to_string(r) + " chose other tokens than the first");
    if (r == -1) {
      uncached = rates;
    } else if (r == 0) {
      cold = rates;
    } else if (r > 1 || repeats == 1) {
      warm.prefill = std::max(warm.prefill, rates.prefill);
      warm.decode = std::max(warm.decode, rates.decode);
    }
  }
  std::printf("%.1f %.1f %.1f %.1f %.1f", warm.prefill, uncached.decode, cold.decode, warm.decode,
              uncached.prefill);
  if (dtype_name != "f32") {
    std::vector<int64_t> reference, forced_choices;
    WEIR_RETURN_IF_ERROR(generate(f32_attrs, masters, nullptr, &reference).status());
    WEIR_RETURN_IF_ERROR(generate(attrs, params, shared, &forced_choices, &reference).status());
    size_t prefix = 0;
    while (prefix < tokens.size() && tokens[prefix] == reference[prefix]) ++prefix;
    int64_t same = 0;
    for (size_t i = 0; i < reference.size(); ++i) same += forced_choices[i] == reference[i];
    std::printf(" %zu %lld", prefix, static_cast<long long>(same));
  }
  std::printf("\n");
  return Status();
}

}  // namespace
}  // namespace weir

int main(int argc, char** argv) {
  weir::Status s = weir::Main(argc, argv);
  if (!s.ok()) {
    std::fprintf(stderr, "%s\n", s.ToString().c_str());
    return 1;
  }
  return 0;
}
