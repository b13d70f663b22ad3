// Rule-based rewards for RL on reasoning tasks (DeepSeek-R1 §2.2.2, TinyZero's Countdown): pure
// functions of a completion's text, so the stream ops stay thin and the rules are tested alone.
// Every function is thread-safe and never fails: text a rule cannot read scores 0.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace weir::reward {

// Where a completion's final answer is written.
enum class AnswerSource {
  kTag,     // the last complete <answer>...</answer>
  kBoxed,   // the last \boxed{...}
  kEither,  // the last \boxed{...} inside the answer tag, else the tag, else the last \boxed{...}
};

// The final answer of a completion, trimmed, or nullopt when it has none in `source`'s form.
// A tag block is the text between the last </answer> and the <answer> before it; a block that
// holds another tag (nested or stray tags) is no answer. \boxed{...} takes the last "\boxed{" in
// the text (the rule of the MATH benchmark's last_boxed_only_string) up to its matching brace,
// so nested braces stay inside; braces that never close mean no answer.
std::optional<std::string> ExtractAnswer(std::string_view completion, AnswerSource source);

// The value of a number written the ways math answers are: "3", "-2", "+2", "3.50", "1e-3",
// "1,000" (comma groups of three digits), "3/4", "\frac{3}{4}" (also \dfrac, \tfrac, with a
// sign before), any of them inside $...$ and surrounding whitespace. nullopt for anything else
// (and for a zero denominator).
std::optional<double> ParseNumber(std::string_view text);

// Whether `answer` equals `truth`: numerically when both parse as numbers
// (|a - t| <= tolerance * max(1, |t|)), otherwise as text after trimming whitespace. An empty
// answer matches nothing.
bool AnswersMatch(std::string_view answer, std::string_view truth, double tolerance);

// 1 when the completion's final answer matches `truth`, else 0 (R1's accuracy reward).
double AccuracyReward(std::string_view completion, std::string_view truth, AnswerSource source,
                      double tolerance);

// 1 when the completion has R1's form, else 0. Strict: after trimming whitespace it is exactly
// <think>T</think> <answer>A</answer> (only whitespace between the blocks, each tag once, none
// inside T or A). Lenient: <think>, </think>, <answer>, </answer> appear in that order, with
// anything around them. With think_in_prompt the prompt ended with <think> (R1's inference
// template), so the completion starts inside the reasoning and must not repeat the tag.
double FormatReward(std::string_view completion, bool strict, bool think_in_prompt);

// Writing systems told apart by Unicode blocks.
enum class Script { kLatin, kCyrillic, kGreek, kCjk, kArabic, kHebrew, kDevanagari };
std::optional<Script> ScriptFromName(std::string_view name);

// The share of words written in `target` (R1's language-consistency reward). A word is a
// maximal run of letters of one script; each CJK character (Han, kana, Hangul) is a word of its
// own, since those scripts do not separate words by spaces. Digits, punctuation, symbols and
// bytes that are not UTF-8 belong to no word. The four format tags are not words. A text
// without words scores 0, so an empty chain of thought earns nothing.
double LanguageConsistency(std::string_view text, Script target);

// The text R1 measures language on: the reasoning between <think> (or the start, when the
// prompt opened it) and </think> (or the end, when the completion was cut off).
std::string_view ThinkText(std::string_view completion);

struct CountdownOptions {
  AnswerSource source = AnswerSource::kTag;
  bool use_all = false;       // every given number must be used (TinyZero), not just at most once
  double format_score = 0.0;  // for an answer that is there but wrong or unreadable (TinyZero 0.1)
};

// Countdown: the answer is an expression over the given numbers with + - * / and parentheses
// (integer literals only, no unary signs) that equals `target` exactly, in rational arithmetic.
// 1 when it does and uses each given number at most once (exactly once with use_all); 0 when
// there is no answer; format_score otherwise: a malformed expression, a number not given or
// used too often, a division by zero, an overflow, nesting deeper than 64 or an answer longer
// than 1024 bytes.
double CountdownReward(std::string_view completion, const std::vector<int64_t>& numbers,
                       int64_t target, const CountdownOptions& options = {});

}  // namespace weir::reward
