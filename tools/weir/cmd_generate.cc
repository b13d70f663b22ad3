// weir generate: greedy generation with a DeepSeek-V3-family model over MLA's latent cache,
// optionally drafting with its MTP module (speculative decoding).
#include <chrono>
#include <cstdio>
#include <iostream>

#include "args.h"
#include "commands.h"
#include "decoder.h"
#include "model_inputs.h"
#include "weir/runtime/prepare.h"
#include "weir/safetensors.h"

namespace weir::cli {

namespace {
constexpr char kHelp[] =
    R"(usage: weir generate GRAPH --checkpoint DIR --tokens FILE [--max-new N] [--speculative]
                     [--model NAME] [--set key=value]...

Greedy generation with the model resource of GRAPH (function DeepseekV3 of
graphs/models/deepseek_v3.pbtxt and its attrs), its parameters read from DIR/model.safetensors
(a training checkpoint such as runs/.../checkpoints/step-000200, or `weir hf import` output).
Every line of FILE is a prompt of space-separated token ids (all the same length); for each, the
new ids are printed on one line. Decoding runs over MLA's latent cache in the absorbed form.

With --speculative, the MTP module drafts the token after the next one and each step of the main
model verifies it (DeepSeek-V3 §5.4.3): the tokens are the same, and the share of drafts the
main model accepted is printed.

Options:
  --checkpoint DIR  the parameters
  --tokens FILE     the prompts
  --max-new N       tokens to generate per prompt (default 32)
  --speculative     draft with MTP (the model needs num_nextn_predict_layers >= 1)
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
  WEIR_ASSIGN_OR_RETURN(int max_new, args.GetInt("max-new", 32));
  if (max_new < 1) return InvalidArgument("--max-new must be at least 1");
  bool speculative = args.Has("speculative");
  int64_t drafted = 0, accepted = 0, steps = 0, made = 0;
  auto start = std::chrono::steady_clock::now();
  for (const auto& prompt : prompts) {
    std::vector<double> ids(prompt.begin(), prompt.end());
    Tensor tokens = Tensor::FromValues(DT_I64, {1, static_cast<int64_t>(ids.size())}, ids);
    deepseek::LatentDecoder decoder(graph, model.attrs, OpRegistry::Global(), params);
    WEIR_ASSIGN_OR_RETURN(auto out,
                          deepseek::GenerateGreedy(decoder, tokens, max_new, speculative));
    for (size_t i = 0; i < out.tokens.size(); ++i) std::cout << (i ? " " : "") << out.tokens[i];
    std::cout << "\n";
    drafted += out.drafted;
    accepted += out.accepted;
    steps += out.main_steps;
    made += static_cast<int64_t>(out.tokens.size());
  }
  double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  std::fprintf(stderr, "weir generate: %lld tokens for %zu prompts in %.2f s, %lld main steps\n",
               static_cast<long long>(made), prompts.size(), seconds,
               static_cast<long long>(steps));
  if (speculative) {
    std::fprintf(
        stderr, "speculative decoding: %lld of %lld MTP drafts accepted (%.1f %%)\n",
        static_cast<long long>(accepted), static_cast<long long>(drafted),
        drafted > 0 ? 100.0 * static_cast<double>(accepted) / static_cast<double>(drafted) : 0.0);
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
