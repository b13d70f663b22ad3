// weir generate: greedy generation with a DeepSeek-V3-family model over MLA's latent cache,
// optionally drafting with its MTP module (speculative decoding).
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <iostream>

#include "args.h"
#include "commands.h"
#include "decoder.h"
#include "model_inputs.h"
#include "weir/runtime/prepare.h"
#include "weir/safetensors.h"

namespace weir::cli {

namespace {
constexpr char kHelp[] = R"(usage: weir generate GRAPH --checkpoint DIR --tokens FILE [--max-new N]
                     [--temperature T] [--top-k K] [--top-p P] [--seed S] [--stop ID]...
                     [--speculative] [--model NAME] [--set key=value]...

Generates with the model resource of GRAPH (function DeepseekV3 of
graphs/models/deepseek_v3.pbtxt and its attrs), its parameters read from DIR/model.safetensors
(a training checkpoint such as runs/.../checkpoints/step-000200, or `weir hf import` output).
Every line of FILE is a prompt of space-separated token ids (all the same length); the prompts
run as one batch: a prefill, then one token per step over MLA's latent cache in the absorbed
form. For each prompt the new ids are printed on one line.

Greedy by default; with --temperature > 0 tokens are sampled (after --top-k and --top-p), each
prompt from its own stream of --seed, so a run repeats exactly. A prompt ends at a --stop id
(kept) or after --max-new tokens.

With --speculative (greedy), the MTP module drafts the token after the next one and each step of
the main model verifies it (DeepSeek-V3 §5.4.3): the same tokens, fewer main steps; prompts run
one at a time and the share of drafts the main model accepted is printed.

Options:
  --checkpoint DIR  the parameters
  --tokens FILE     the prompts
  --max-new N       tokens to generate per prompt (default 32)
  --temperature T   0 (default): greedy
  --top-k K         sample among the K likeliest tokens (0, default: all)
  --top-p P         ... within the smallest set holding P of the probability (default 1)
  --seed S          sampling seed (default 0)
  --stop ID         a token id that ends a prompt's generation (repeatable)
  --speculative     draft with MTP (needs num_nextn_predict_layers >= 1)
  --model NAME      the model resource, when the graph has several
  --set key=value   override a graph param (repeatable)
)";

Status Generate(const Args& args) {
  WEIR_ASSIGN_OR_RETURN(Graph graph, PrepareGraph(args.positional[0], args.All("set")));
  WEIR_ASSIGN_OR_RETURN(ModelSpec model, FindModel(graph, args.Get("model").value_or("")));
  if (model.function != "DeepseekV3") {
    return InvalidArgument("model '" + model.name + "' is function " + model.function +
                           "; weir generate decodes DeepseekV3 models");
  }
  std::filesystem::path dir = *args.Get("checkpoint");
  WEIR_ASSIGN_OR_RETURN(auto tensors, ReadSafetensorsSharded(dir, "model"));
  ParamStore params;
  for (auto& [name, t] : tensors) params.Set(name, t.To(DT_F32));
  int64_t vocab = model.attrs.count("vocab_size") ? model.attrs.at("vocab_size").i() : 129280;
  WEIR_ASSIGN_OR_RETURN(auto prompts, ReadTokenFile(*args.Get("tokens"), vocab));
  deepseek::GenerateOptions options;
  WEIR_ASSIGN_OR_RETURN(int max_new, args.GetInt("max-new", 32));
  WEIR_ASSIGN_OR_RETURN(int top_k, args.GetInt("top-k", 0));
  WEIR_ASSIGN_OR_RETURN(int seed, args.GetInt("seed", 0));
  WEIR_ASSIGN_OR_RETURN(options.temperature, args.GetFloat("temperature", 0));
  WEIR_ASSIGN_OR_RETURN(options.top_p, args.GetFloat("top-p", 1));
  if (max_new < 1) return InvalidArgument("--max-new must be at least 1");
  if (top_k < 0 || options.temperature < 0)
    return InvalidArgument("--top-k and --temperature cannot be negative");
  options.max_new = max_new;
  options.top_k = top_k;
  options.seed = static_cast<uint64_t>(seed);
  options.speculative = args.Has("speculative");
  for (const std::string& id : args.All("stop")) {
    char* end = nullptr;
    long long v = std::strtoll(id.c_str(), &end, 10);
    if (end == id.c_str() || *end != '\0' || v < 0 || v >= vocab)
      return InvalidArgument("--stop takes a token id in [0, " + std::to_string(vocab) +
                             "), got '" + id + "'");
    options.stop_tokens.push_back(v);
  }
  // One batch of every prompt, or one prompt at a time for speculative decoding.
  std::vector<std::vector<std::vector<int64_t>>> batches;
  if (options.speculative) {
    for (const auto& p : prompts) batches.push_back({p});
  } else {
    batches.push_back(prompts);
  }
  deepseek::Generated total;
  int64_t prompt_tokens = 0, made = 0;
  for (const auto& batch : batches) {
    std::vector<double> ids;
    for (const auto& p : batch) ids.insert(ids.end(), p.begin(), p.end());
    Tensor tokens = Tensor::FromValues(
        DT_I64, {static_cast<int64_t>(batch.size()), static_cast<int64_t>(batch[0].size())}, ids);
    deepseek::LatentDecoder decoder(graph, model.attrs, OpRegistry::Global(), params);
    WEIR_ASSIGN_OR_RETURN(auto out, deepseek::Generate(decoder, tokens, options));
    for (const auto& row : out.tokens) {
      for (size_t i = 0; i < row.size(); ++i) std::cout << (i ? " " : "") << row[i];
      std::cout << "\n";
      made += static_cast<int64_t>(row.size());
    }
    prompt_tokens += tokens.numel();
    total.drafted += out.drafted;
    total.accepted += out.accepted;
    total.main_steps += out.main_steps;
    total.prefill_seconds += out.prefill_seconds;
    total.decode_seconds += out.decode_seconds;
  }
  std::fprintf(stderr,
               "weir generate: %zu prompts; prefill %lld tokens in %.2f s (%.0f tokens/s), "
               "decode %lld tokens in %.2f s (%.0f tokens/s), %lld main steps\n",
               prompts.size(), static_cast<long long>(prompt_tokens), total.prefill_seconds,
               prompt_tokens / std::max(total.prefill_seconds, 1e-9), static_cast<long long>(made),
               total.decode_seconds, made / std::max(total.decode_seconds, 1e-9),
               static_cast<long long>(total.main_steps));
  if (options.speculative) {
    std::fprintf(stderr, "speculative decoding: %lld of %lld MTP drafts accepted (%.1f %%)\n",
                 static_cast<long long>(total.accepted), static_cast<long long>(total.drafted),
                 total.drafted > 0 ? 100.0 * static_cast<double>(total.accepted) /
                                         static_cast<double>(total.drafted)
                                   : 0.0);
  }
  return Status();
}

}  // namespace

int GenerateCommand(const std::vector<std::string>& argv) {
  Args args;
  if (auto exit = ParseCommand("generate", argv,
                               {{"checkpoint", true, false},
                                {"tokens", true, false},
                                {"max-new", true, false},
                                {"speculative", false, false},
                                {"temperature", true, false},
                                {"top-k", true, false},
                                {"top-p", true, false},
                                {"seed", true, false},
                                {"stop", true, true},
                                {"model", true, false},
                                {"set", true, true}},
                               kHelp, 1, 1, &args))
    return *exit;
  for (const char* flag : {"checkpoint", "tokens"}) {
    if (!args.Has(flag)) {
      std::cerr << "weir generate: --" << flag << " is required\n";
      return 2;
    }
  }
  Status s = Generate(args);
  if (!s.ok()) {
    std::cerr << "weir generate: " << s.ToString() << "\n";
    return 1;
  }
  return 0;
}

}  // namespace weir::cli
