// weir generate: greedy generation with a DeepSeek-V3-family model over MLA's latent cache,
// optionally drafting with its MTP module (speculative decoding).
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iostream>

#include "args.h"
#include "bpe.h"
#include "chat/chat.h"
#include "commands.h"
#include "decoder.h"
#include "model_inputs.h"
#include "weir/json.h"
#include "weir/runtime/lora.h"
#include "weir/runtime/prepare.h"
#include "weir/safetensors.h"

namespace weir::cli {

namespace {
constexpr char kHelp[] = R"(usage: weir generate --model DIR --tokens FILE [--max-new N]
                     [--temperature T] [--top-k K] [--top-p P] [--seed S] [--stop ID]...
                     [--speculative] [--adapter DIR] [--dtype f32|bf16]
       weir generate --model DIR --tokenizer FILE (--prompt TEXT... | --prompts FILE.jsonl)
                     [--template T] [--stop-text S]... [the options above]
       weir generate GRAPH --checkpoint DIR [--resource NAME] [--set key=value]... [as above]

Generates with a DeepseekV3 model (graphs/models/deepseek_v3.pbtxt) whose parameters are in
DIR/model.safetensors: a training checkpoint such as runs/.../checkpoints/step-000200, or
`weir hf import` output. With --model DIR, DIR/model.json (written with every checkpoint and by
`weir hf import`) gives the model's attrs; with GRAPH, its model resource does (--resource NAME
when it has several).
Every line of FILE is a prompt of space-separated token ids (all the same length); the prompts
run as one batch: a prefill, then one token per step over MLA's latent cache in the absorbed
form. For each prompt the new ids are printed on one line.

With --tokenizer, prompts are text: each --prompt, or the "prompt" field of every line of
--prompts FILE.jsonl. Each is written with --template (default the chat template the tiny
pipeline trains with, "<|user|>{prompt}<|assistant|>"; "{prompt}" for raw text) and encoded;
they decode as one batch, right-padded to the longest, each at its own positions. A completion
ends at a --stop-text entry (a special token such as <|eos|>, the default, or a string the text
is cut before). One JSON line per prompt is printed: {"prompt": ..., "completion": ...,
"tokens": N, "truncated": true|false}.

Greedy by default; with --temperature > 0 tokens are sampled (after --top-k and --top-p), each
prompt from its own stream of --seed, so a run repeats exactly. A prompt ends at a --stop id
(kept) or after --max-new tokens.

With --adapter DIR (a LoRA checkpoint: adapter.safetensors and adapter_config.json), the
adapters are merged into the checkpoint's weights (W + lora_alpha/r · B·A) before decoding.

--dtype decodes in f32 or bf16 (default: the model's T, f32 unless its attrs say otherwise). The
weights are read in f32 and, for bf16, converted once before the first prompt; activations and
the latent cache are bf16 too, products accumulate in f32.

With --speculative (greedy), the MTP module drafts the token after the next one and each step of
the main model verifies it (DeepSeek-V3 §5.4.3): the same tokens, fewer main steps; prompts run
one at a time and the share of drafts the main model accepted is printed.

Options:
  --tokens FILE     the prompts
  --max-new N       tokens to generate per prompt (default 32)
  --temperature T   0 (default): greedy
  --top-k K         sample among the K likeliest tokens (0, default: all)
  --top-p P         ... within the smallest set holding P of the probability (default 1)
  --seed S          sampling seed (default 0)
  --stop ID         a token id that ends a prompt's generation (repeatable)
  --tokenizer FILE  a tokenizer.json (or tiktoken file): prompts and completions are text
  --prompt TEXT     a text prompt (repeatable)
  --prompts FILE    a JSONL file of text prompts (field "prompt")
  --template T      the prompt template, {prompt} replaced (default: the chat template)
  --stop-text S     a special token or string that ends a completion (repeatable; default
                    <|eos|>)
  --speculative     draft with MTP (needs num_nextn_predict_layers >= 1)
  --adapter DIR     LoRA adapters to merge into the weights (a LoRA training checkpoint)
  --dtype D         f32 or bf16: the dtype to decode in (default: the model's T)
  --model DIR       the model folder (model.safetensors and model.json)
  --checkpoint DIR  with GRAPH: the parameters
  --resource NAME   with GRAPH: the model resource, when the graph has several
  --set key=value   override a graph param (repeatable)
)";

// --prompt TEXT..., then the "prompt" field of every line of --prompts FILE.jsonl.
StatusOr<std::vector<std::string>> TextPrompts(const Args& args) {
  std::vector<std::string> texts = args.All("prompt");
  if (auto file = args.Get("prompts")) {
    std::ifstream in(*file);
    if (!in) return NotFound("cannot read --prompts " + *file);
    std::string line;
    for (int number = 1; std::getline(in, line); ++number) {
      if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
      auto row = ParseJsonObject(line);
      auto where = [&] { return *file + ":" + std::to_string(number) + ": "; };
      if (!row.ok()) return InvalidArgument(where() + row.status().message());
      auto it = row->fields().find("prompt");
      if (it == row->fields().end() || !it->second.has_string_value())
        return InvalidArgument(where() + "expected a string field \"prompt\"");
      texts.push_back(it->second.string_value());
    }
  }
  if (texts.empty()) return InvalidArgument("no prompts: give --prompt TEXT or --prompts FILE");
  return texts;
}

Status Generate(const Args& args) {
  // The model from a graph's resource and a checkpoint, or from a model folder alone (its
  // model.json names the attrs of the shipped DeepseekV3 graph).
  std::filesystem::path dir = args.Get("checkpoint").value_or(args.Get("model").value_or(""));
  Graph graph;
  ModelSpec model;
  if (!args.positional.empty()) {
    WEIR_ASSIGN_OR_RETURN(graph, PrepareGraph(args.positional[0], args.All("set")));
    WEIR_ASSIGN_OR_RETURN(model, FindModel(graph, args.Get("resource").value_or("")));
  } else {
    WEIR_ASSIGN_OR_RETURN(model, ReadModelJson(dir));
    WEIR_ASSIGN_OR_RETURN(auto graph_file, FindModelGraph());
    WEIR_ASSIGN_OR_RETURN(graph, PrepareGraph(graph_file, {}));
  }
  if (model.function != "DeepseekV3") {
    return InvalidArgument("model '" + model.name + "' is function " + model.function +
                           "; weir generate decodes DeepseekV3 models");
  }
  WEIR_ASSIGN_OR_RETURN(auto tensors, ReadSafetensorsSharded(dir, "model"));
  if (auto adapter = args.Get("adapter")) {
    WEIR_ASSIGN_OR_RETURN(LoraConfig lora, ReadLoraConfig(*adapter));
    WEIR_ASSIGN_OR_RETURN(auto adapters, ReadSafetensorsSharded(*adapter, kAdapterStem));
    for (auto& [name, t] : adapters) tensors[name] = t;
    WEIR_ASSIGN_OR_RETURN(tensors, MergeLora(tensors, lora.alpha));
  }
  ParamStore params;
  for (auto& [name, t] : tensors) params.Set(name, t.To(DT_F32));
  if (auto dtype = args.Get("dtype")) {
    auto parsed = ParseDataType(*dtype);
    if (!parsed || (*parsed != DT_F32 && *parsed != DT_BF16))
      return InvalidArgument("--dtype takes f32 or bf16, got '" + *dtype + "'");
    model.attrs["T"].set_type(*parsed);
  }
  // The programs would convert every f32 master at every step for a model of another dtype.
  if (deepseek::ModelDtype(model.attrs) != DT_F32) {
    WEIR_ASSIGN_OR_RETURN(params, deepseek::DecodeParams(graph, model.function, model.attrs,
                                                         OpRegistry::Global(), params));
  }
  int64_t vocab = model.attrs.count("vocab_size") ? model.attrs.at("vocab_size").i() : 129280;
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
  // Token prompts from --tokens, or text prompts encoded with --tokenizer.
  std::vector<std::vector<int64_t>> prompts;
  std::vector<std::string> texts;
  std::shared_ptr<tokenizer::Tokenizer> tok;
  std::vector<std::string> stop_strings;
  if (args.Has("tokens")) {
    WEIR_ASSIGN_OR_RETURN(prompts, ReadTokenFile(*args.Get("tokens"), vocab));
  } else {
    WEIR_ASSIGN_OR_RETURN(tok, tokenizer::Tokenizer::Load(*args.Get("tokenizer")));
    WEIR_ASSIGN_OR_RETURN(texts, TextPrompts(args));
    std::string tmpl = args.Get("template").value_or(rl::kDefaultTemplate);
    for (const std::string& text : texts) {
      auto written = rl::FormatPrompt(tmpl, text);
      if (!written.ok()) return Status(written.status()).Prepend("--template");
      prompts.push_back(tok->Encode(*written, /*specials=*/true));
      if (prompts.back().empty()) return InvalidArgument("an empty prompt");
    }
    std::vector<std::string> stops = args.All("stop-text");
    if (stops.empty()) stops.push_back(rl::kDefaultEnd);
    for (const std::string& stop : stops) {
      std::vector<int64_t> ids = tok->Encode(stop, /*specials=*/true);
      if (ids.size() == 1 && tok->Encode(stop, /*specials=*/false) != ids) {
        options.stop_tokens.push_back(ids[0]);
      } else if (!stop.empty()) {
        stop_strings.push_back(stop);
      }
    }
    if (!stop_strings.empty()) {
      options.stop_when = [&](int64_t, const std::vector<int64_t>& t) {
        auto text = tok->Decode(t);
        return text.ok() && rl::FirstStop(*text, stop_strings) != std::string::npos;
      };
    }
  }
  // The prompts decode as one batch, right-padded to the longest (each row at its own
  // positions); speculative decoding takes one at a time.
  std::vector<std::vector<size_t>> batches;
  std::vector<size_t> all;
  for (size_t i = 0; i < prompts.size(); ++i) {
    if (options.speculative) {
      batches.push_back({i});
    } else {
      all.push_back(i);
    }
  }
  if (!all.empty()) batches.push_back(std::move(all));
  std::vector<std::vector<int64_t>> outputs(prompts.size());
  // The batches share compiled programs (one per block function and shape).
  auto programs = std::make_shared<deepseek::DecodePrograms>();
  deepseek::Generated total;
  int64_t prompt_tokens = 0, made = 0;
  for (const auto& batch : batches) {
    auto [tokens, used] = deepseek::PadPrompts(prompts, batch);
    deepseek::LatentDecoder decoder(graph, model.attrs, OpRegistry::Global(), params, programs);
    WEIR_ASSIGN_OR_RETURN(auto out, deepseek::Generate(decoder, tokens, options, used));
    for (size_t r = 0; r < batch.size(); ++r) {
      made += static_cast<int64_t>(out.tokens[r].size());
      outputs[batch[r]] = std::move(out.tokens[r]);
    }
    for (int64_t u : used) prompt_tokens += u;
    total.drafted += out.drafted;
    total.accepted += out.accepted;
    total.main_steps += out.main_steps;
    total.prefill_seconds += out.prefill_seconds;
    total.decode_seconds += out.decode_seconds;
  }
  for (size_t i = 0; i < outputs.size(); ++i) {
    const std::vector<int64_t>& row = outputs[i];
    if (tok == nullptr) {
      for (size_t k = 0; k < row.size(); ++k) std::cout << (k ? " " : "") << row[k];
      std::cout << "\n";
      continue;
    }
    bool stopped = !row.empty() && std::find(options.stop_tokens.begin(), options.stop_tokens.end(),
                                             row.back()) != options.stop_tokens.end();
    WEIR_ASSIGN_OR_RETURN(std::string text,
                          tok->Decode({row.begin(), stopped ? row.end() - 1 : row.end()}));
    if (size_t cut = rl::FirstStop(text, stop_strings); cut != std::string::npos) {
      text.resize(cut);
      stopped = true;
    }
    std::cout << "{\"prompt\": " << JsonQuote(texts[i]) << ", \"completion\": " << JsonQuote(text)
              << ", \"tokens\": " << row.size()
              << ", \"truncated\": " << (stopped ? "false" : "true") << "}\n";
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
                                {"adapter", true, false},
                                {"dtype", true, false},
                                {"temperature", true, false},
                                {"top-k", true, false},
                                {"top-p", true, false},
                                {"seed", true, false},
                                {"stop", true, true},
                                {"tokenizer", true, false},
                                {"prompt", true, true},
                                {"prompts", true, false},
                                {"template", true, false},
                                {"stop-text", true, true},
                                {"model", true, false},
                                {"resource", true, false},
                                {"set", true, true}},
                               kHelp, 0, 1, &args))
    return *exit;
  if (args.positional.empty() ? !args.Has("model") || args.Has("checkpoint")
                              : !args.Has("checkpoint") && !args.Has("model")) {
    std::cerr << "weir generate: give --model DIR (a checkpoint with model.json), or GRAPH and "
                 "--checkpoint DIR\n";
    return 2;
  }
  if (args.Has("tokens") == args.Has("tokenizer")) {
    std::cerr << "weir generate: give --tokens FILE (token ids) or --tokenizer FILE with "
                 "--prompt/--prompts (text), not both\n";
    return 2;
  }
  Status s = Generate(args);
  if (!s.ok()) {
    std::cerr << "weir generate: " << s.ToString() << "\n";
    return 1;
  }
  return 0;
}

}  // namespace weir::cli
