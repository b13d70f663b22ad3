// The reward plugin: rule-based rewards as stream ops. Each op passes every input column through
// and adds one float column of rewards, named after the reward as TRL names its metrics
// (rewards/<name>), so a trainer logs rewards/<name>/mean from it; reward.Combine sums them.
// model/ adds a learned reward: a Bradley-Terry loss, preference-pair batches and reward.Model,
// which scores rows with a trained model in the same slot as the rules.
#include "weir/plugin.h"

#include <cctype>
#include <charconv>
#include <cmath>

#include "model/reward_model.h"
#include "reward_column.h"
#include "rewards.h"
#include "weir/registrar.h"
#include "weir/stream_kernel.h"
#ifdef WEIR_HAVE_CUDA
#include "cuda/register.h"
#endif

namespace weir::reward {
namespace {

Status WrongType(const std::string& column, const Column& c, const std::string& expected) {
  return InvalidArgument("column '" + column + "' holds " + ColumnTypeName(c) + ", expected " +
                         expected);
}

// The column `name`, whatever it holds.
StatusOr<const Column*> FindColumn(const Batch& batch, const std::string& name) {
  if (const Column* c = batch.Find(name)) return c;
  return batch.Get<StringColumn>(name).status();  // its message lists the batch's columns
}

// The shortest text that reads back as `value`: 151.0 is "151".
template <typename T>
std::string ShortestText(T value) {
  char buffer[64];
  return std::string(buffer, std::to_chars(buffer, buffer + sizeof(buffer), value).ptr);
}

// A column of answers as text: strings as they are, numbers (JSON numbers arrive as floats) in
// their shortest exact form, so 151.0 reads "151".
StatusOr<StringColumn> TextColumn(const Batch& batch, const std::string& name) {
  WEIR_ASSIGN_OR_RETURN(const Column* c, FindColumn(batch, name));
  if (const auto* strings = std::get_if<StringColumn>(c)) return *strings;
  StringColumn texts;
  if (const auto* floats = std::get_if<FloatColumn>(c)) {
    for (double v : *floats) texts.push_back(ShortestText(v));
    return texts;
  }
  if (const auto* ints = std::get_if<IntColumn>(c)) {
    for (int64_t v : *ints) texts.push_back(ShortestText(v));
    return texts;
  }
  return WrongType(name, *c, "string, float or int");
}

std::optional<int64_t> ParseInt(std::string_view s) {
  while (!s.empty() && s.front() == ' ') s.remove_prefix(1);
  while (!s.empty() && s.back() == ' ') s.remove_suffix(1);
  int64_t value = 0;
  auto [end, error] = std::from_chars(s.data(), s.data() + s.size(), value);
  if (s.empty() || error != std::errc() || end != s.data() + s.size()) return std::nullopt;
  return value;
}

// "[3, 5, 7]": how io.JsonlSource hands over a JSON array.
std::optional<std::vector<int64_t>> ParseIntList(std::string_view s) {
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.front()))) s.remove_prefix(1);
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.back()))) s.remove_suffix(1);
  if (s.size() < 2 || s.front() != '[' || s.back() != ']') return std::nullopt;
  s = s.substr(1, s.size() - 2);
  std::vector<int64_t> values;
  if (s.find_first_not_of(" \t\r\n") == std::string_view::npos) return values;
  for (size_t comma = 0; comma != std::string_view::npos; s.remove_prefix(comma + 1)) {
    comma = s.find(',');
    std::optional<int64_t> v = ParseInt(s.substr(0, comma));
    if (!v) return std::nullopt;
    values.push_back(*v);
    if (comma == std::string_view::npos) break;
  }
  return values;
}

StatusOr<IntListColumn> NumbersColumn(const Batch& batch, const std::string& name) {
  WEIR_ASSIGN_OR_RETURN(const Column* c, FindColumn(batch, name));
  if (const auto* lists = std::get_if<IntListColumn>(c)) return *lists;
  const auto* strings = std::get_if<StringColumn>(c);
  if (strings == nullptr) return WrongType(name, *c, "int list or string");
  IntListColumn lists;
  for (size_t row = 0; row < strings->size(); ++row) {
    std::optional<std::vector<int64_t>> list = ParseIntList((*strings)[row]);
    if (!list) {
      return InvalidArgument("column '" + name + "' row " + std::to_string(row) +
                             ": expected a JSON list of integers like [3, 5, 7], got '" +
                             (*strings)[row] + "'");
    }
    lists.push_back(std::move(*list));
  }
  return lists;
}

StatusOr<IntColumn> TargetColumn(const Batch& batch, const std::string& name) {
  WEIR_ASSIGN_OR_RETURN(const Column* c, FindColumn(batch, name));
  if (const auto* ints = std::get_if<IntColumn>(c)) return *ints;
  IntColumn targets;
  auto bad = [&](size_t row, const std::string& got) {
    return InvalidArgument("column '" + name + "' row " + std::to_string(row) +
                           ": expected an integer target, got " + got);
  };
  if (const auto* floats = std::get_if<FloatColumn>(c)) {
    for (size_t row = 0; row < floats->size(); ++row) {
      double v = (*floats)[row];
      if (v != std::trunc(v) || std::abs(v) > 9.007199254740992e15)
        return bad(row, ShortestText(v));
      targets.push_back(static_cast<int64_t>(v));
    }
    return targets;
  }
  if (const auto* strings = std::get_if<StringColumn>(c)) {
    for (size_t row = 0; row < strings->size(); ++row) {
      std::optional<int64_t> v = ParseInt((*strings)[row]);
      if (!v) return bad(row, "'" + (*strings)[row] + "'");
      targets.push_back(*v);
    }
    return targets;
  }
  return WrongType(name, *c, "int, float or string");
}

StatusOr<FloatColumn> ScoreColumn(const Batch& batch, const std::string& name) {
  WEIR_ASSIGN_OR_RETURN(const Column* c, FindColumn(batch, name));
  if (const auto* floats = std::get_if<FloatColumn>(c)) return *floats;
  if (const auto* ints = std::get_if<IntColumn>(c)) return FloatColumn(ints->begin(), ints->end());
  return WrongType(name, *c, "float or int");
}

AnswerSource SourceFromName(const std::string& name) {
  if (name == "tag") return AnswerSource::kTag;
  if (name == "boxed") return AnswerSource::kBoxed;
  return AnswerSource::kEither;
}

const OneOf kSources = {"either", "tag", "boxed"};
constexpr char kSourceDoc[] =
    "where the final answer is: `tag` the last `<answer>...</answer>`, `boxed` the last "
    "`\\boxed{...}`, `either` a `\\boxed{...}` inside the tag, else the tag, else the last "
    "`\\boxed{...}`";

void RegisterAccuracy(Registrar& r) {
  RewardOp(r, "reward.Accuracy",
           "R1's accuracy reward: 1 when the completion's final answer equals the ground truth, "
           "else 0 (also when it has no answer). Numbers (3, 3.0, 1,000, -2, 3/4, `\\frac{3}{4}`) "
           "compare by value, anything else as text after trimming whitespace.",
           "rewards/accuracy")
      .Attr<std::string>("truth_column", "answer",
                         "the ground truth (string, or a number as JSON numbers arrive)")
      .Attr<std::string>("source", "either", kSourceDoc, kSources)
      .Attr<double>(
          "tolerance", 1e-6,
          "numbers match when they differ by at most tolerance * max(1, magnitude of the truth)",
          Min(0.0))
      .Factory([](const NodeContext& ctx) {
        std::string completions = ctx.String("completion_column"),
                    truths = ctx.String("truth_column");
        AnswerSource source = SourceFromName(ctx.String("source"));
        double tolerance = ctx.Float("tolerance");
        return MakeKernel(ctx, [=](const Batch& batch) -> StatusOr<FloatColumn> {
          WEIR_ASSIGN_OR_RETURN(const StringColumn* text, batch.Get<StringColumn>(completions));
          WEIR_ASSIGN_OR_RETURN(StringColumn truth, TextColumn(batch, truths));
          FloatColumn rewards;
          for (size_t row = 0; row < text->size(); ++row)
            rewards.push_back(AccuracyReward((*text)[row], truth[row], source, tolerance));
          return rewards;
        });
      });
}

void RegisterFormat(Registrar& r) {
  RewardOp(r, "reward.Format",
           "R1's format reward: 1 when the completion is `<think>reasoning</think> "
           "<answer>answer</answer>`, else 0.",
           "rewards/format")
      .Attr("strict", true,
            "true: the whole completion is the two blocks, only whitespace around and between "
            "them, each tag once; false: the four tags appear in order anywhere")
      .Attr("think_in_prompt", false,
            "the prompt ended with `<think>` (R1's template), so the completion starts inside the "
            "reasoning")
      .Factory([](const NodeContext& ctx) {
        std::string completions = ctx.String("completion_column");
        bool strict = ctx.Bool("strict"), think_in_prompt = ctx.Bool("think_in_prompt");
        return MakeKernel(ctx, [=](const Batch& batch) -> StatusOr<FloatColumn> {
          WEIR_ASSIGN_OR_RETURN(const StringColumn* text, batch.Get<StringColumn>(completions));
          FloatColumn rewards;
          for (const std::string& completion : *text)
            rewards.push_back(FormatReward(completion, strict, think_in_prompt));
          return rewards;
        });
      });
}

void RegisterLanguage(Registrar& r) {
  RewardOp(r, "reward.Language",
           "R1's language-consistency reward: the share of words written in the target script "
           "(a word is a run of letters of one script; each CJK character is a word). 0 for a "
           "text without words.",
           "rewards/language")
      .Attr<std::string>(
          "script", "latin", "the target script",
          OneOf{"latin", "cyrillic", "greek", "cjk", "arabic", "hebrew", "devanagari"})
      .Attr<std::string>(
          "scope", "think",
          "`think`: the reasoning between `<think>` (or the start) and `</think>` (or "
          "the end), as R1 measures the chain of thought; `completion`: all of it",
          OneOf{"think", "completion"})
      .Factory([](const NodeContext& ctx) {
        std::string completions = ctx.String("completion_column");
        Script script = *ScriptFromName(ctx.String("script"));
        bool think_only = ctx.String("scope") == "think";
        return MakeKernel(ctx, [=](const Batch& batch) -> StatusOr<FloatColumn> {
          WEIR_ASSIGN_OR_RETURN(const StringColumn* text, batch.Get<StringColumn>(completions));
          FloatColumn rewards;
          for (const std::string& completion : *text) {
            rewards.push_back(
                LanguageConsistency(think_only ? ThinkText(completion) : completion, script));
          }
          return rewards;
        });
      });
}

void RegisterCountdown(Registrar& r) {
  RewardOp(r, "reward.Countdown",
           "The Countdown task's reward (TinyZero): 1 when the answer is an expression with + - "
           "* / and parentheses over the given numbers, each used at most once, whose exact "
           "rational value is the target; format_score when an answer is there but is wrong, "
           "malformed, uses other numbers or divides by zero; 0 without an answer.",
           "rewards/countdown")
      .Attr<std::string>("numbers_column", "nums",
                         "the numbers given (int list, or a JSON list such as \"[3, 5, 7]\")")
      .Attr<std::string>("target_column", "target", "the target (int, integral float or string)")
      .Attr<std::string>("source", "tag", kSourceDoc, kSources)
      .Attr("use_all", false, "every given number must be used, as TinyZero requires")
      .Attr<double>("format_score", 0.0,
                    "reward for an answer that is there but wrong (TinyZero: 0.1)", Min(0.0),
                    Max(1.0))
      .Factory([](const NodeContext& ctx) {
        std::string completions = ctx.String("completion_column"),
                    numbers_column = ctx.String("numbers_column"),
                    target_column = ctx.String("target_column");
        CountdownOptions options{SourceFromName(ctx.String("source")), ctx.Bool("use_all"),
                                 ctx.Float("format_score")};
        return MakeKernel(ctx, [=](const Batch& batch) -> StatusOr<FloatColumn> {
          WEIR_ASSIGN_OR_RETURN(const StringColumn* text, batch.Get<StringColumn>(completions));
          WEIR_ASSIGN_OR_RETURN(IntListColumn numbers, NumbersColumn(batch, numbers_column));
          WEIR_ASSIGN_OR_RETURN(IntColumn targets, TargetColumn(batch, target_column));
          FloatColumn rewards;
          for (size_t row = 0; row < text->size(); ++row)
            rewards.push_back(CountdownReward((*text)[row], numbers[row], targets[row], options));
          return rewards;
        });
      });
}

void RegisterCombine(Registrar& r) {
  r.StreamOp("reward.Combine")
      .Doc(
          "The weighted sum of reward columns (TRL's reward_weights), as the reward a GRPO "
          "trainer normalizes per group.")
      .Input("in", "batch", "rows with the reward columns")
      .Output("out", "batch", "the same rows with the sum added")
      .RequiredAttr<std::vector<std::string>>("columns", "the reward columns (float or int)")
      .Attr("weights", std::vector<double>{}, "one weight per column; empty: every weight is 1")
      .Attr<std::string>("output", "reward", "the float column added")
      .Factory([](const NodeContext& ctx) -> StatusOr<std::unique_ptr<StreamKernel>> {
        std::vector<std::string> columns = ctx.StringList("columns");
        std::vector<double> weights = ctx.attrs().FloatList("weights");
        if (columns.empty()) return ctx.Error("attr 'columns' names no reward column");
        if (weights.empty()) weights.assign(columns.size(), 1.0);
        if (weights.size() != columns.size()) {
          return ctx.Error("attr 'weights' has " + std::to_string(weights.size()) + " values for " +
                           std::to_string(columns.size()) + " columns");
        }
        return MakeKernel(ctx, [=](const Batch& batch) -> StatusOr<FloatColumn> {
          FloatColumn total(batch.num_rows(), 0.0);
          for (size_t k = 0; k < columns.size(); ++k) {
            WEIR_ASSIGN_OR_RETURN(FloatColumn scores, ScoreColumn(batch, columns[k]));
            for (size_t row = 0; row < total.size(); ++row) total[row] += weights[k] * scores[row];
          }
          return total;
        });
      });
}

void RegisterReward(Registrar& r) {
  RegisterAccuracy(r);
  RegisterFormat(r);
  RegisterLanguage(r);
  RegisterCountdown(r);
  RegisterCombine(r);
  RegisterBradleyTerryLoss(r);
  RegisterPreferencePairs(r);
  RegisterRewardModel(r);
#ifdef WEIR_HAVE_CUDA
  RegisterRewardCuda(r);
#endif
}

}  // namespace
}  // namespace weir::reward

WEIR_PLUGIN("reward", "0.1.0", weir::reward::RegisterReward)
