// Batch-1 prefill and greedy decoding speed of weir's cached decoders on random (seeded) weights:
// the GPT of graphs/models/gpt.pbtxt (GptDecoder, a K/V cache) or the DeepSeek-V3 model
// (deepseek::LatentDecoder, MLA's latent cache). tools/bench/decode runs it beside PyTorch.
//   weir_decode_bench gpt|deepseek GRAPH 'ATTRS' PROMPT NEW REPEATS
// prints "prefill uncached_decode cold_decode warm_decode uncached_prefill" in tokens/s:
// uncached builds every block's program for every token (no DecodePrograms reuse); cold is a
// decoder with its own program cache (weir generate: every position's block program is built once
// and shared by the layers); warm is the best later generation over one cache shared by the
// generations (every program already built, as for repeated generations of equal prompt length).
// Every generation must choose the same greedy tokens as the first (an error otherwise).
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <string>

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

// One generation: the prompt, then `new_tokens` greedy steps, each fed back.
using FeedFn = std::function<StatusOr<Tensor>(const Tensor&)>;
StatusOr<Rates> Generate(const FeedFn& feed, const Tensor& prompt, int64_t new_tokens) {
  Rates rates;
  auto start = Clock::now();
  WEIR_ASSIGN_OR_RETURN(Tensor logits, feed(prompt));
  rates.prefill = static_cast<double>(prompt.dim(1)) / Since(start);
  start = Clock::now();
  uint64_t hash = 0;
  for (int64_t i = 0; i < new_tokens; ++i) {
    int64_t token = LastArgmax(logits);
    hash = hash * 1000003 + static_cast<uint64_t>(token);
    Tensor next = Tensor::FromValues(DT_I64, {1, 1}, {static_cast<double>(token)});
    WEIR_ASSIGN_OR_RETURN(logits, feed(next));
  }
  rates.decode = static_cast<double>(new_tokens) / Since(start);
  rates.tokens = hash;
  return rates;
}

Status Main(int argc, char** argv) {
  if (argc != 7) {
    return InvalidArgument(
        "usage: weir_decode_bench gpt|deepseek GRAPH 'ATTRS' PROMPT NEW REPEATS");
  }
  std::string kind = argv[1];
  if (kind != "gpt" && kind != "deepseek") return InvalidArgument("model: gpt or deepseek");
  int64_t prompt_length = std::atoll(argv[4]), new_tokens = std::atoll(argv[5]);
  int repeats = std::atoi(argv[6]);
  OpRegistry ops;
  PluginLoader loader(&ops);
  WEIR_RETURN_IF_ERROR(loader.LoadDefaults());
  WEIR_ASSIGN_OR_RETURN(Graph graph, LoadGraph(argv[2]));
  WEIR_RETURN_IF_ERROR(ResolveGraph(graph, ops));
  WEIR_ASSIGN_OR_RETURN(auto attrs, ParseAttrValues(argv[3], SourceLoc{}));
  std::string model = kind == "gpt" ? "Gpt" : "DeepseekV3";
  int64_t vocab = attrs.at(kind == "gpt" ? "vocab" : "vocab_size").i();

  // The parameters, as the training function declares them.
  std::vector<TensorType> types = {{DT_I64, {1, prompt_length}}, {DT_I64, {1, prompt_length}}};
  WEIR_ASSIGN_OR_RETURN(auto full, Program::Build(graph, model, attrs, types, ops, {}));
  ParamStore params;
  params.Initialize(full->params(), 1);

  std::vector<double> ids;
  uint64_t state = 7;
  for (int64_t i = 0; i < prompt_length; ++i) {
    state = state * 6364136223846793005ULL + 1442695040888963407ULL;
    ids.push_back(static_cast<double>((state >> 33) % static_cast<uint64_t>(vocab)));
  }
  Tensor prompt = Tensor::FromValues(DT_I64, {1, prompt_length}, ids);

  auto shared = std::make_shared<deepseek::DecodePrograms>();
  Rates uncached, cold, warm;
  for (int r = -1; r <= repeats; ++r) {
    // Generation -1 keeps no program (every block built for every token); generation 0 has a
    // cache of its own (cold); the others share one, filled by generation 1.
    auto programs = r == -1  ? std::make_shared<deepseek::DecodePrograms>(0)
                    : r == 0 ? std::make_shared<deepseek::DecodePrograms>()
                             : shared;
    StatusOr<Rates> rates = Rates{};
    if (kind == "gpt") {
      bench::GptDecoder decoder(graph, attrs, ops, params, programs);
      rates = Generate([&](const Tensor& t) { return decoder.Feed(t); }, prompt, new_tokens);
    } else {
      deepseek::LatentDecoder decoder(graph, attrs, ops, params, programs);
      rates = Generate([&](const Tensor& t) { return decoder.Feed(t); }, prompt, new_tokens);
    }
    if (!rates.ok()) return rates.status();
    // Every way of decoding must choose the same tokens (programs shared or not).
    if (r > -1 && rates->tokens != uncached.tokens)
      return Internal("generation " + std::to_string(r) + " chose other tokens than the first");
    if (r == -1) {
      uncached = *rates;
    } else if (r == 0) {
      cold = *rates;
    } else if (r > 1 || repeats == 1) {
      warm.prefill = std::max(warm.prefill, rates->prefill);
      warm.decode = std::max(warm.decode, rates->decode);
    }
  }
  std::printf("%.1f %.1f %.1f %.1f %.1f\n", warm.prefill, uncached.decode, cold.decode, warm.decode,
              uncached.prefill);
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
