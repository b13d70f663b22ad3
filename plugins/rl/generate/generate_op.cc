// rl.Generate: completions of text prompts by a model resource (a DeepseekV3-family model,
// decoded over MLA's latent cache). Each prompt is written with the chat template, encoded with
// the tokenizer, and continued `num_generations` times; GRPO scores the copies of one prompt as a
// group. The policy it reads is the one a trainer in the same run updates.
#include <glog/logging.h>

#include <chrono>

#include "bpe.h"
#include "chat/chat.h"
#include "decoder.h"
#include "weir/runtime/model.h"
#include "weir/stream_kernel.h"

namespace weir::rl {
namespace {

using Clock = std::chrono::steady_clock;
using tokenizer::Tokenizer;

class GenerateKernel : public StreamKernel {
 public:
  GenerateKernel(const NodeContext& ctx, Model* model, std::shared_ptr<Tokenizer> tokenizer)
      : ctx_(ctx), model_(model), tokenizer_(std::move(tokenizer)) {
    options_.max_new = ctx.Int("max_new_tokens");
    options_.temperature = ctx.Float("temperature");
    options_.top_k = ctx.Int("top_k");
    options_.top_p = ctx.Float("top_p");
    options_.speculative = ctx.Bool("speculative");
    seed_ = static_cast<uint64_t>(ctx.Int("seed"));
    group_size_ = ctx.Int("num_generations");
  }

  // A stop entry that encodes to one special token stops on that token (and is kept in the
  // completion's ids, so a trainer learns to end); any other entry is a string the decoded
  // completion is cut before.
  Status Init() {
    if (options_.speculative && options_.temperature > 0)
      return ctx_.Error("speculative decoding is greedy: set temperature=0");
    for (const std::string& stop : ctx_.StringList("stop")) {
      if (stop.empty()) return ctx_.Error("stop: an empty stop string");
      std::vector<int64_t> ids = tokenizer_->Encode(stop, /*specials=*/true);
      std::vector<int64_t> plain = tokenizer_->Encode(stop, /*specials=*/false);
      if (ids.size() == 1 && plain != ids) {
        options_.stop_tokens.push_back(ids[0]);
      } else {
        stop_strings_.push_back(stop);
      }
    }
    // A model no one has run yet has no parameters: building its program creates them from
    // the initializers (or init_from).
    std::vector<TensorType> types(2, TensorType{DT_I64, {1, 2}});
    auto program = model_->GetProgram(types, "");
    if (!program.ok()) return ctx_.Error("model: " + program.status().message());
    if (!stop_strings_.empty()) {
      options_.stop_when = [this](int64_t, const std::vector<int64_t>& tokens) {
        auto text = tokenizer_->Decode(tokens);
        return text.ok() && FirstStop(*text, stop_strings_) != std::string::npos;
      };
    }
    return Status();
  }

  Status Process(int, const Batch& batch, Emitter& out) override {
    WEIR_ASSIGN_OR_RETURN(const StringColumn* prompts,
                          batch.Get<StringColumn>(ctx_.String("prompt_column")));
    std::vector<size_t> copies;
    for (size_t r = 0; r < prompts->size(); ++r)
      for (int64_t g = 0; g < group_size_; ++g) copies.push_back(r);
    Batch rows = batch.Select(copies);
    size_t n = copies.size();
    IntListColumn prompt_ids(n), completion_ids(n);
    IntColumn groups(n), truncated(n), lengths(n);
    StringColumn completions(n);
    // Every row decodes in one batch, the prompts right-padded to the longest (each row at its
    // own positions); speculative decoding takes one row at a time.
    std::vector<size_t> all_rows;
    for (size_t i = 0; i < n; ++i) {
      WEIR_ASSIGN_OR_RETURN(std::string text,
                            FormatPrompt(ctx_.String("template"), (*prompts)[copies[i]]));
      prompt_ids[i] = tokenizer_->Encode(text, /*specials=*/true);
      if (prompt_ids[i].empty()) return ctx_.Error("row " + std::to_string(i) + ": empty prompt");
      groups[i] = groups_seen_ + static_cast<int64_t>(copies[i]);
      all_rows.push_back(i);
    }
    std::vector<std::vector<size_t>> batches;
    for (size_t i = 0; options_.speculative && i < n; ++i) batches.push_back({i});
    if (!options_.speculative && n > 0) batches.push_back(std::move(all_rows));
    int64_t prompt_tokens = 0, new_tokens = 0;
    double prefill_s = 0, decode_s = 0;
    int64_t drafted = 0, accepted = 0;
    for (const std::vector<size_t>& members : batches) {
      auto [tokens, used] = deepseek::PadPrompts(prompt_ids, members);
      deepseek::GenerateOptions options = options_;
      // Every call draws from its own streams, the same on every run of the graph.
      options.seed = seed_ + 0x9E3779B97F4A7C15ULL * (calls_++ + 1);
      deepseek::Generated generated;
      {
        // The parameters may not change under a generation.
        std::lock_guard<std::mutex> lock(model_->mutex());
        // A fresh decoder per call (the weights change between calls); its programs, which do
        // not hold weights, are kept across calls: GRPO's prompts repeat the same lengths.
        // LoRA adapters decode merged into their weights (MLA's absorbed decode folds wkv_b).
        auto params = model_->InferenceParams();
        if (!params.ok()) return ctx_.Error(params.status().message());
        deepseek::LatentDecoder decoder(model_->graph(), model_->attrs(), model_->ops(), **params,
                                        programs_);
        auto run = deepseek::Generate(decoder, tokens, options, used);
        if (!run.ok()) return ctx_.Error(run.status().message());
        generated = std::move(*run);
      }
      drafted += generated.drafted;
      accepted += generated.accepted;
      prefill_s += generated.prefill_seconds;
      decode_s += generated.decode_seconds;
      for (int64_t u : used) prompt_tokens += u;
      for (size_t m = 0; m < members.size(); ++m) {
        size_t i = members[m];
        std::vector<int64_t>& got = generated.tokens[m];
        new_tokens += static_cast<int64_t>(got.size());
        bool stopped =
            !got.empty() && std::find(options_.stop_tokens.begin(), options_.stop_tokens.end(),
                                      got.back()) != options_.stop_tokens.end();
        std::vector<int64_t> text_ids(got.begin(), stopped ? got.end() - 1 : got.end());
        auto text = tokenizer_->Decode(text_ids);
        if (!text.ok()) return ctx_.Error(text.status().message());
        size_t cut = FirstStop(*text, stop_strings_);
        if (cut != std::string::npos) {
          text->resize(cut);
          stopped = true;
        }
        completions[i] = std::move(*text);
        completion_ids[i] = std::move(got);
        truncated[i] = stopped ? 0 : 1;
        lengths[i] = static_cast<int64_t>(completion_ids[i].size());
      }
    }
    groups_seen_ += static_cast<int64_t>(prompts->size());
    total_new_ += new_tokens;
    total_prompt_ += prompt_tokens;
    total_prefill_s_ += prefill_s;
    total_decode_s_ += decode_s;
    double mean_length = n ? static_cast<double>(new_tokens) / static_cast<double>(n) : 0;
    std::vector<std::pair<std::string, double>> metrics = {
        {"prefill_tokens_per_s", prefill_s > 0 ? prompt_tokens / prefill_s : 0},
        {"decode_tokens_per_s", decode_s > 0 ? new_tokens / decode_s : 0},
        {"completions/mean_length", mean_length}};
    if (options_.speculative) {
      // The share of MTP drafts the main model agreed with (DeepSeek-V3 reports 85-90 %).
      metrics.emplace_back("mtp_acceptance", drafted ? static_cast<double>(accepted) / drafted : 0);
      total_drafted_ += drafted;
      total_accepted_ += accepted;
    }
    ctx_.Metric(calls_, metrics);
    WEIR_RETURN_IF_ERROR(rows.Set(ctx_.String("output"), std::move(completions)));
    WEIR_RETURN_IF_ERROR(rows.Set("prompt_ids", std::move(prompt_ids)));
    WEIR_RETURN_IF_ERROR(rows.Set("completion_ids", std::move(completion_ids)));
    WEIR_RETURN_IF_ERROR(rows.Set("completion_length", std::move(lengths)));
    WEIR_RETURN_IF_ERROR(rows.Set("truncated", std::move(truncated)));
    WEIR_RETURN_IF_ERROR(rows.Set("group", std::move(groups)));
    out.Emit(std::move(rows));
    return Status();
  }

  Status Finish(Emitter&) override {
    if (calls_ == 0) return Status();
    LOG(INFO) << ctx_.node() << ": " << total_new_ << " tokens generated after " << total_prompt_
              << " prompt tokens; prefill " << Rate(total_prompt_, total_prefill_s_)
              << " tokens/s, decode " << Rate(total_new_, total_decode_s_) << " tokens/s";
    if (options_.speculative)
      LOG(INFO) << ctx_.node() << ": " << total_accepted_ << " of " << total_drafted_
                << " MTP drafts accepted";
    return Status();
  }

 private:
  static double Rate(int64_t tokens, double seconds) {
    return seconds > 0 ? static_cast<double>(tokens) / seconds : 0;
  }

  const NodeContext& ctx_;
  Model* model_;
  std::shared_ptr<Tokenizer> tokenizer_;
  deepseek::GenerateOptions options_;
  std::shared_ptr<deepseek::DecodePrograms> programs_ =
      std::make_shared<deepseek::DecodePrograms>();
  std::vector<std::string> stop_strings_;
  uint64_t seed_ = 0;
  int64_t group_size_ = 1;
  int64_t calls_ = 0, groups_seen_ = 0;
  int64_t total_new_ = 0, total_prompt_ = 0, total_drafted_ = 0, total_accepted_ = 0;
  double total_prefill_s_ = 0, total_decode_s_ = 0;
};

}  // namespace

void RegisterGenerate(Registrar& r) {
  r.StreamOp("rl.Generate")
      .Doc(
          "Continues each row's prompt with `model` (a DeepseekV3-family model resource, decoded "
          "over MLA's latent cache): the prompt is written with `template` and encoded with "
          "`tokenizer`; each row is emitted `num_generations` times, consecutively (a GRPO "
          "group), with its completion. Greedy at temperature 0, else sampled after top-k and "
          "top-p, reproducibly from `seed`. A completion ends at a `stop` entry or after "
          "`max_new_tokens` (then `truncated` is 1). Adds the completion text, prompt_ids and "
          "completion_ids (int lists; a stop token ends completion_ids), completion_length, "
          "truncated and group (the prompt's index in the run). Logs prefill and decode "
          "tokens/s (and mtp_acceptance with speculative=true).")
      .Input("prompts", "batch", "rows with a string column of prompts")
      .Output("out", "batch", "each row num_generations times, with its completion")
      .AttrOfType("model", ATTR_RESOURCE, std::nullopt, "the model resource to generate with")
      .RequiredAttr<std::string>("tokenizer", "a tokenizer.json (or tiktoken) file")
      .Attr<std::string>("prompt_column", "prompt", "the string column of prompts")
      .Attr<std::string>("output", "completion", "the string column of completions added")
      .Attr<std::string>("template", kDefaultTemplate,
                         "the chat template: {prompt} is replaced by the row's prompt")
      .Attr("stop", std::vector<std::string>{kDefaultEnd},
            "a completion ends at the first of these: a special token (kept in completion_ids, "
            "left out of the text) or a string (the text is cut before it)")
      .Attr<int64_t>("num_generations", 1, "completions per prompt (GRPO's G)", Min(1))
      .Attr<int64_t>("max_new_tokens", 64, "tokens per completion at most", Min(1))
      .Attr<double>("temperature", 0.0, "0: greedy; else the sampling temperature", Min(0.0))
      .Attr<int64_t>("top_k", 0, "sample among the k likeliest tokens (0: all)", Min(0))
      .Attr<double>("top_p", 1.0, "... within the smallest set holding top_p of the mass", Min(0.0),
                    Max(1.0))
      .Attr<int64_t>("seed", 0, "sampling seed")
      .Attr("speculative", false,
            "greedy only: the model's MTP module drafts the token after the next one and each "
            "main step verifies it (the same tokens in fewer main steps; rows decode one at a "
            "time); logs mtp_acceptance, the share of drafts accepted")
      .Stateful()
      .Factory([](const NodeContext& ctx) -> StatusOr<std::unique_ptr<StreamKernel>> {
        WEIR_ASSIGN_OR_RETURN(Model * model, ctx.Resource<Model>("model"));
        auto tokenizer = Tokenizer::Load(ctx.InputPath(ctx.String("tokenizer")));
        if (!tokenizer.ok()) return ctx.Error("tokenizer: " + tokenizer.status().message());
        WEIR_RETURN_IF_ERROR(FormatPrompt(ctx.String("template"), "").status());
        auto kernel = std::make_unique<GenerateKernel>(ctx, model, std::move(*tokenizer));
        WEIR_RETURN_IF_ERROR(kernel->Init());
        return std::unique_ptr<StreamKernel>(std::move(kernel));
      });
}

}  // namespace weir::rl
