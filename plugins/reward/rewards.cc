#include "rewards.h"

#include <algorithm>
#include <array>
#include <charconv>
#include <cmath>
#include <map>
#include <numeric>

namespace weir::reward {
namespace {

constexpr std::string_view kThinkOpen = "<think>";
constexpr std::string_view kThinkClose = "</think>";
constexpr std::string_view kAnswerOpen = "<answer>";
constexpr std::string_view kAnswerClose = "</answer>";
constexpr std::array<std::string_view, 4> kTags = {kThinkOpen, kThinkClose, kAnswerOpen,
                                                   kAnswerClose};

bool IsSpace(char c) {
  return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v';
}

bool IsDigit(char c) { return c >= '0' && c <= '9'; }

std::string_view TrimLeft(std::string_view s) {
  while (!s.empty() && IsSpace(s.front())) s.remove_prefix(1);
  return s;
}

std::string_view Trim(std::string_view s) {
  s = TrimLeft(s);
  while (!s.empty() && IsSpace(s.back())) s.remove_suffix(1);
  return s;
}

bool HasTag(std::string_view s) {
  for (std::string_view tag : kTags)
    if (s.find(tag) != std::string_view::npos) return true;
  return false;
}

std::optional<std::string_view> TagAnswer(std::string_view text) {
  size_t close = text.rfind(kAnswerClose);
  if (close == std::string_view::npos) return std::nullopt;
  size_t open = text.rfind(kAnswerOpen, close);
  if (open == std::string_view::npos) return std::nullopt;
  size_t begin = open + kAnswerOpen.size();
  std::string_view inside = text.substr(begin, close - begin);
  if (HasTag(inside)) return std::nullopt;
  return inside;
}

std::optional<std::string_view> BoxedAnswer(std::string_view text) {
  constexpr std::string_view kBoxed = "\\boxed{";
  size_t at = text.rfind(kBoxed);
  if (at == std::string_view::npos) return std::nullopt;
  size_t begin = at + kBoxed.size();
  int depth = 1;
  for (size_t i = begin; i < text.size(); ++i) {
    if (text[i] == '{') {
      ++depth;
    } else if (text[i] == '}' && --depth == 0) {
      return text.substr(begin, i - begin);
    }
  }
  return std::nullopt;
}

// A plain decimal: [sign] digits [. digits] [e [sign] digits], the integer digits optionally in
// comma groups of three. Validated here because std::from_chars also takes "inf" and "nan".
std::optional<double> ParseDecimal(std::string_view s) {
  std::string plain;
  size_t i = 0;
  if (i < s.size() && (s[i] == '+' || s[i] == '-')) {
    if (s[i] == '-') plain += '-';
    ++i;
  }
  size_t int_digits = 0, group = 0;
  bool grouped = false;
  for (; i < s.size() && (IsDigit(s[i]) || s[i] == ','); ++i) {
    if (s[i] == ',') {
      if (group == 0 || group > 3 || (grouped && group != 3)) return std::nullopt;
      grouped = true;
      group = 0;
      continue;
    }
    plain += s[i];
    ++int_digits;
    ++group;
  }
  if (grouped && group != 3) return std::nullopt;
  size_t frac_digits = 0;
  if (i < s.size() && s[i] == '.') {
    plain += s[i++];
    for (; i < s.size() && IsDigit(s[i]); ++i, ++frac_digits) plain += s[i];
  }
  if (int_digits + frac_digits == 0) return std::nullopt;
  if (i < s.size() && (s[i] == 'e' || s[i] == 'E')) {
    plain += s[i++];
    if (i < s.size() && (s[i] == '+' || s[i] == '-')) plain += s[i++];
    size_t exp_digits = 0;
    for (; i < s.size() && IsDigit(s[i]); ++i, ++exp_digits) plain += s[i];
    if (exp_digits == 0) return std::nullopt;
  }
  if (i != s.size()) return std::nullopt;
  double value = 0;
  auto [end, error] = std::from_chars(plain.data(), plain.data() + plain.size(), value);
  if (error != std::errc() || end != plain.data() + plain.size() || !std::isfinite(value))
    return std::nullopt;
  return value;
}

std::optional<double> Divide(std::optional<double> num, std::optional<double> den) {
  if (!num || !den || *den == 0) return std::nullopt;
  return *num / *den;
}

// \frac{A}{B}, \dfrac{A}{B} or \tfrac{A}{B} after an optional sign.
std::optional<double> ParseLatexFraction(std::string_view s) {
  double sign = 1;
  if (!s.empty() && (s.front() == '+' || s.front() == '-')) {
    sign = s.front() == '-' ? -1 : 1;
    s = TrimLeft(s.substr(1));
  }
  bool prefixed = false;
  for (std::string_view command : {"\\frac{", "\\dfrac{", "\\tfrac{"}) {
    if (s.starts_with(command)) {
      s.remove_prefix(command.size());
      prefixed = true;
      break;
    }
  }
  size_t mid = s.find("}{");
  if (!prefixed || mid == std::string_view::npos || !s.ends_with('}')) return std::nullopt;
  std::optional<double> value = Divide(ParseDecimal(Trim(s.substr(0, mid))),
                                       ParseDecimal(Trim(s.substr(mid + 2, s.size() - mid - 3))));
  if (!value) return std::nullopt;
  return sign * *value;
}

// A UTF-8 code point at text[i], advancing i past it; U+FFFD for a byte that starts no valid
// sequence (advancing one byte, so bad input never stalls or overruns).
char32_t NextCodePoint(std::string_view text, size_t& i) {
  auto byte = [&](size_t k) { return static_cast<unsigned char>(text[k]); };
  unsigned char lead = byte(i);
  size_t length = lead < 0x80           ? 1
                  : (lead >> 5) == 0x6  ? 2
                  : (lead >> 4) == 0xE  ? 3
                  : (lead >> 3) == 0x1E ? 4
                                        : 0;
  if (length == 0 || i + length > text.size()) {
    ++i;
    return 0xFFFD;
  }
  char32_t c = length == 1 ? lead : lead & (0x7F >> length);
  for (size_t k = 1; k < length; ++k) {
    if ((byte(i + k) & 0xC0) != 0x80) {
      ++i;
      return 0xFFFD;
    }
    c = (c << 6) | (byte(i + k) & 0x3F);
  }
  i += length;
  return c;
}

bool In(char32_t c, char32_t first, char32_t last) { return c >= first && c <= last; }

// Combining marks continue the word they follow (a decomposed "é").
bool IsCombiningMark(char32_t c) { return In(c, 0x0300, 0x036F); }

std::optional<Script> ScriptOf(char32_t c) {
  if (In(c, 'a', 'z') || In(c, 'A', 'Z') || (In(c, 0x00C0, 0x024F) && c != 0xD7 && c != 0xF7) ||
      In(c, 0x1E00, 0x1EFF))
    return Script::kLatin;
  if (In(c, 0x0370, 0x03FF) || In(c, 0x1F00, 0x1FFF)) return Script::kGreek;
  if (In(c, 0x0400, 0x052F)) return Script::kCyrillic;
  if (In(c, 0x05D0, 0x05EA) || In(c, 0x0591, 0x05C7)) return Script::kHebrew;
  if (In(c, 0x0620, 0x065F) || In(c, 0x066E, 0x06D5) || In(c, 0x0750, 0x077F))
    return Script::kArabic;
  if (In(c, 0x0900, 0x0963) || In(c, 0x0971, 0x097F)) return Script::kDevanagari;
  if (In(c, 0x1100, 0x11FF) || In(c, 0x3040, 0x30FF) || In(c, 0x3130, 0x318F) ||
      In(c, 0x3400, 0x4DBF) || In(c, 0x4E00, 0x9FFF) || In(c, 0xAC00, 0xD7AF) ||
      In(c, 0xF900, 0xFAFF) || In(c, 0x20000, 0x2FA1F))
    return Script::kCjk;
  return std::nullopt;
}

// Exact arithmetic for Countdown, so (8 / 3) * 3 is 8 and 1 / 3 + 1 / 3 + 1 / 3 is 1.
struct Rational {
  int64_t num = 0;
  int64_t den = 1;  // > 0, coprime with num
};

std::optional<Rational> MakeRational(int64_t num, int64_t den) {
  if (den == 0 || num == INT64_MIN || den == INT64_MIN) return std::nullopt;
  if (den < 0) {
    num = -num;
    den = -den;
  }
  int64_t g = std::gcd(num, den);
  return Rational{num / g, den / g};
}

std::optional<Rational> Combine(const Rational& a, char op, const Rational& b) {
  int64_t x = 0, y = 0, num = 0, den = 0;
  switch (op) {
    case '+':
    case '-':
      if (__builtin_mul_overflow(a.num, b.den, &x) || __builtin_mul_overflow(b.num, a.den, &y) ||
          (op == '+' ? __builtin_add_overflow(x, y, &num) : __builtin_sub_overflow(x, y, &num)) ||
          __builtin_mul_overflow(a.den, b.den, &den))
        return std::nullopt;
      break;
    case '*':
      if (__builtin_mul_overflow(a.num, b.num, &num) || __builtin_mul_overflow(a.den, b.den, &den))
        return std::nullopt;
      break;
    default:  // '/': a zero divisor makes a zero denominator, which MakeRational refuses
      if (__builtin_mul_overflow(a.num, b.den, &num) || __builtin_mul_overflow(a.den, b.num, &den))
        return std::nullopt;
  }
  return MakeRational(num, den);
}

// expression := term (('+' | '-') term)*;  term := factor (('*' | '/') factor)*;
// factor := integer | '(' expression ')'. Spaces anywhere between tokens. Recursion is bounded
// by kMaxDepth parentheses, so hostile input cannot exhaust the stack.
class CountdownParser {
 public:
  static constexpr int kMaxDepth = 64;

  explicit CountdownParser(std::string_view text) : text_(text) {}

  // The value of the whole text, or nullopt when it is not one valid expression.
  std::optional<Rational> Parse() {
    std::optional<Rational> value = Expression(0);
    SkipSpace();
    if (!value || at_ != text_.size()) return std::nullopt;
    return value;
  }

  // The integer literals read, in order.
  const std::vector<int64_t>& literals() const { return literals_; }

 private:
  void SkipSpace() {
    while (at_ < text_.size() && IsSpace(text_[at_])) ++at_;
  }

  // The operator at the cursor when it is one of `ops`, consumed; 0 otherwise.
  char Operator(std::string_view ops) {
    SkipSpace();
    if (at_ < text_.size() && ops.find(text_[at_]) != std::string_view::npos) return text_[at_++];
    return 0;
  }

  std::optional<Rational> Expression(int depth) {
    std::optional<Rational> value = Term(depth);
    while (value) {
      char op = Operator("+-");
      if (op == 0) break;
      std::optional<Rational> right = Term(depth);
      value = right ? Combine(*value, op, *right) : std::nullopt;
    }
    return value;
  }

  std::optional<Rational> Term(int depth) {
    std::optional<Rational> value = Factor(depth);
    while (value) {
      char op = Operator("*/");
      if (op == 0) break;
      std::optional<Rational> right = Factor(depth);
      value = right ? Combine(*value, op, *right) : std::nullopt;
    }
    return value;
  }

  std::optional<Rational> Factor(int depth) {
    SkipSpace();
    if (at_ >= text_.size()) return std::nullopt;
    if (text_[at_] == '(') {
      if (depth >= kMaxDepth) return std::nullopt;
      ++at_;
      std::optional<Rational> value = Expression(depth + 1);
      if (Operator(")") == 0) return std::nullopt;
      return value;
    }
    int64_t n = 0;
    size_t begin = at_;
    for (; at_ < text_.size() && IsDigit(text_[at_]); ++at_) {
      if (__builtin_mul_overflow(n, 10, &n) || __builtin_add_overflow(n, text_[at_] - '0', &n))
        return std::nullopt;
    }
    if (at_ == begin) return std::nullopt;
    literals_.push_back(n);
    return Rational{n, 1};
  }

  std::string_view text_;
  size_t at_ = 0;
  std::vector<int64_t> literals_;
};

constexpr size_t kMaxCountdownAnswer = 1024;

}  // namespace

std::optional<std::string> ExtractAnswer(std::string_view completion, AnswerSource source) {
  std::optional<std::string_view> answer;
  switch (source) {
    case AnswerSource::kTag:
      answer = TagAnswer(completion);
      break;
    case AnswerSource::kBoxed:
      answer = BoxedAnswer(completion);
      break;
    case AnswerSource::kEither:
      answer = TagAnswer(completion);
      if (answer) {
        if (std::optional<std::string_view> boxed = BoxedAnswer(*answer)) answer = boxed;
      } else {
        answer = BoxedAnswer(completion);
      }
      break;
  }
  if (!answer) return std::nullopt;
  return std::string(Trim(*answer));
}

std::optional<double> ParseNumber(std::string_view text) {
  text = Trim(text);
  if (text.size() >= 2 && text.front() == '$' && text.back() == '$')
    text = Trim(text.substr(1, text.size() - 2));
  if (text.find('\\') != std::string_view::npos) return ParseLatexFraction(text);
  size_t slash = text.find('/');
  if (slash != std::string_view::npos)
    return Divide(ParseDecimal(Trim(text.substr(0, slash))),
                  ParseDecimal(Trim(text.substr(slash + 1))));
  return ParseDecimal(text);
}

bool AnswersMatch(std::string_view answer, std::string_view truth, double tolerance) {
  answer = Trim(answer);
  truth = Trim(truth);
  if (answer.empty()) return false;
  std::optional<double> a = ParseNumber(answer), t = ParseNumber(truth);
  if (a && t) return std::abs(*a - *t) <= tolerance * std::max(1.0, std::abs(*t));
  return answer == truth;
}

double AccuracyReward(std::string_view completion, std::string_view truth, AnswerSource source,
                      double tolerance) {
  std::optional<std::string> answer = ExtractAnswer(completion, source);
  return answer && AnswersMatch(*answer, truth, tolerance) ? 1.0 : 0.0;
}

double FormatReward(std::string_view completion, bool strict, bool think_in_prompt) {
  if (!strict) {
    size_t at = 0;
    for (std::string_view tag : kTags) {
      if (think_in_prompt && tag == kThinkOpen) continue;
      at = completion.find(tag, at);
      if (at == std::string_view::npos) return 0.0;
      at += tag.size();
    }
    return 1.0;
  }
  std::string_view s = Trim(completion);
  if (!think_in_prompt) {
    if (!s.starts_with(kThinkOpen)) return 0.0;
    s.remove_prefix(kThinkOpen.size());
  }
  size_t close = s.find(kThinkClose);
  if (close == std::string_view::npos) return 0.0;
  std::string_view think = s.substr(0, close);
  std::string_view rest = TrimLeft(s.substr(close + kThinkClose.size()));
  if (!rest.starts_with(kAnswerOpen) || !rest.ends_with(kAnswerClose)) return 0.0;
  std::string_view answer =
      rest.substr(kAnswerOpen.size(), rest.size() - kAnswerOpen.size() - kAnswerClose.size());
  if (rest.size() < kAnswerOpen.size() + kAnswerClose.size() || HasTag(think) || HasTag(answer))
    return 0.0;
  return 1.0;
}

std::optional<Script> ScriptFromName(std::string_view name) {
  static const std::map<std::string_view, Script> kNames = {
      {"latin", Script::kLatin},          {"cyrillic", Script::kCyrillic},
      {"greek", Script::kGreek},          {"cjk", Script::kCjk},
      {"arabic", Script::kArabic},        {"hebrew", Script::kHebrew},
      {"devanagari", Script::kDevanagari}};
  auto it = kNames.find(name);
  if (it == kNames.end()) return std::nullopt;
  return it->second;
}

double LanguageConsistency(std::string_view text, Script target) {
  size_t words = 0, in_target = 0;
  bool in_word = false;  // a letter of word_script continues the current word
  Script word_script = Script::kLatin;
  for (size_t i = 0; i < text.size();) {
    auto tag = std::find_if(kTags.begin(), kTags.end(),
                            [&](std::string_view t) { return text.substr(i).starts_with(t); });
    if (tag != kTags.end()) {
      i += tag->size();
      in_word = false;
      continue;
    }
    char32_t c = NextCodePoint(text, i);
    if (IsCombiningMark(c)) continue;
    std::optional<Script> script = ScriptOf(c);
    if (!script) {
      in_word = false;
      continue;
    }
    if (!in_word || *script != word_script) {
      ++words;
      in_target += *script == target ? 1 : 0;
    }
    in_word = *script != Script::kCjk;
    word_script = *script;
  }
  return words == 0 ? 0.0 : static_cast<double>(in_target) / static_cast<double>(words);
}

std::string_view ThinkText(std::string_view completion) {
  size_t begin = completion.find(kThinkOpen);
  begin = begin == std::string_view::npos ? 0 : begin + kThinkOpen.size();
  size_t end = completion.find(kThinkClose, begin);
  if (end == std::string_view::npos) end = completion.size();
  return completion.substr(begin, end - begin);
}

double CountdownReward(std::string_view completion, const std::vector<int64_t>& numbers,
                       int64_t target, const CountdownOptions& options) {
  std::optional<std::string> answer = ExtractAnswer(completion, options.source);
  if (!answer) return 0.0;
  if (answer->size() > kMaxCountdownAnswer) return options.format_score;
  CountdownParser parser(*answer);
  std::optional<Rational> value = parser.Parse();
  if (!value) return options.format_score;
  std::map<int64_t, int64_t> left;
  for (int64_t n : numbers) ++left[n];
  for (int64_t n : parser.literals())
    if (--left[n] < 0) return options.format_score;
  if (options.use_all) {
    for (const auto& [n, count] : left)
      if (count != 0) return options.format_score;
  }
  return value->num == target && value->den == 1 ? 1.0 : options.format_score;
}

}  // namespace weir::reward
