// Quality filters with the thresholds datatrove publishes as defaults (the ones FineWeb used):
// data.GopherQuality, data.GopherRepetition, data.C4Quality, data.FineWebQuality. Each sends
// documents that pass to `kept` and the others to `rejected` with the rule that fired in
// `reason`, named as datatrove names it.
#include <algorithm>
#include <functional>
#include <map>
#include <optional>
#include <set>
#include <unordered_map>
#include <unordered_set>

#include "data_ops.h"
#include "filters/text_stats.h"

namespace weir::data {
namespace {

// A rule set: the reason a document is rejected, or nullopt; may rewrite the text it keeps
// (C4 drops lines).
using Rule = std::function<std::optional<std::string>(std::string& text)>;

class Filter : public StreamKernel {
 public:
  Filter(const NodeContext& ctx, Rule rule)
      : ctx_(ctx), column_(ctx.String("text_column")), rule_(std::move(rule)) {}

  Status Process(int, const Batch& batch, Emitter& out) override {
    WEIR_ASSIGN_OR_RETURN(const StringColumn* texts, batch.Get<StringColumn>(column_));
    std::vector<size_t> kept, rejected;
    StringColumn kept_texts, reasons;
    bool rewritten = false;
    for (size_t row = 0; row < batch.num_rows(); ++row) {
      std::string text = (*texts)[row];
      std::optional<std::string> reason = rule_(text);
      if (reason) {
        rejected.push_back(row);
        reasons.push_back(*reason);
        ++counts_[*reason];
        continue;
      }
      rewritten = rewritten || text != (*texts)[row];
      kept.push_back(row);
      kept_texts.push_back(std::move(text));
    }
    kept_ += kept.size();
    if (!kept.empty()) {
      Batch pass = batch.Select(kept);
      if (rewritten) WEIR_RETURN_IF_ERROR(pass.Set(column_, std::move(kept_texts)));
      out.Emit(0, std::move(pass));
    }
    if (!rejected.empty()) {
      Batch fail = batch.Select(rejected);
      WEIR_RETURN_IF_ERROR(fail.Set("reason", std::move(reasons)));
      out.Emit(1, std::move(fail));
    }
    return Status();
  }

  Status Finish(Emitter&) override {
    std::vector<std::pair<std::string, double>> values = {{"kept", static_cast<double>(kept_)}};
    for (const auto& [reason, n] : counts_) values.push_back({reason, static_cast<double>(n)});
    ctx_.Metric(0, values);
    return Status();
  }

 private:
  const NodeContext& ctx_;
  std::string column_;
  Rule rule_;
  uint64_t kept_ = 0;
  std::map<std::string, uint64_t> counts_;
};

// Elements that repeat an earlier one: how many, and how many characters they hold.
std::pair<size_t, size_t> Duplicates(const std::vector<std::string_view>& items) {
  std::unordered_set<std::string_view> seen;
  size_t count = 0, chars = 0;
  for (std::string_view s : items) {
    if (!seen.insert(s).second) {
      ++count;
      chars += s.size();
    }
  }
  return {count, chars};
}

std::string Join(const std::vector<std::string_view>& words, size_t begin, size_t n,
                 const char* sep) {
  std::string out;
  for (size_t i = begin; i < begin + n; ++i) {
    if (i > begin) out += sep;
    out += words[i];
  }
  return out;
}

Rule GopherQuality(const NodeContext& ctx) {
  int64_t min_words = ctx.Int("min_doc_words"), max_words = ctx.Int("max_doc_words");
  double min_len = ctx.Float("min_avg_word_length"), max_len = ctx.Float("max_avg_word_length");
  double symbols = ctx.Float("max_symbol_word_ratio"),
         bullets = ctx.Float("max_bullet_lines_ratio");
  double ellipsis = ctx.Float("max_ellipsis_lines_ratio");
  double alpha = ctx.Float("max_non_alpha_words_ratio");
  int64_t min_stop = ctx.Int("min_stop_words");
  std::vector<std::string> stop = ctx.StringList("stop_words");
  std::set<std::string> stop_words(stop.begin(), stop.end());
  return [=](std::string& text) -> std::optional<std::string> {
    std::vector<std::string_view> tokens = Tokens(text);
    std::vector<std::string_view> words;  // tokens that are not only punctuation
    for (std::string_view t : tokens)
      if (std::any_of(t.begin(), t.end(), [](char c) { return !IsPunctuation(c); }))
        words.push_back(t);
    auto n = static_cast<int64_t>(words.size());
    if (n < min_words) return "gopher_short_doc";
    if (n > max_words) return "gopher_long_doc";
    double total = 0;
    for (std::string_view w : words) total += static_cast<double>(w.size());
    double mean = total / static_cast<double>(n);
    if (mean < min_len) return "gopher_below_avg_threshold";
    if (mean > max_len) return "gopher_above_avg_threshold";
    double all = static_cast<double>(tokens.size());
    auto count = [&](std::string_view needle) {
      size_t c = 0;
      for (size_t at = text.find(needle); at != std::string::npos;
           at = text.find(needle, at + needle.size()))
        ++c;
      return static_cast<double>(c);
    };
    if (count("#") / all > symbols) return "gopher_too_many_hashes";
    if ((count("...") + count("\u2026")) / all > symbols) return "gopher_too_many_ellipsis";
    std::vector<std::string_view> lines = Lines(text);
    if (!lines.empty()) {
      double bullet = 0, ends = 0;
      for (std::string_view line : lines) {
        std::string_view t = Trim(line);
        if (t.starts_with("\u2022") || t.starts_with("-") || t.starts_with("*")) ++bullet;
        if (t.ends_with("...") || t.ends_with("\u2026")) ++ends;
      }
      auto lc = static_cast<double>(lines.size());
      if (bullet / lc > bullets) return "gopher_too_many_bullets";
      if (ends / lc > ellipsis) return "gopher_too_many_end_ellipsis";
    }
    double with_letter = 0;
    for (std::string_view t : tokens) with_letter += HasLetter(t) ? 1 : 0;
    if (with_letter / all < alpha) return "gopher_below_alpha_threshold";
    int64_t stops = 0;
    for (const std::string& w : Words(text, /*lower=*/true)) stops += stop_words.count(w) ? 1 : 0;
    if (stops < min_stop) return "gopher_enough_stop_words";
    return std::nullopt;
  };
}

Rule GopherRepetition(const NodeContext& ctx) {
  double dup_line = ctx.Float("dup_line_frac"), dup_para = ctx.Float("dup_para_frac");
  double dup_line_char = ctx.Float("dup_line_char_frac");
  double dup_para_char = ctx.Float("dup_para_char_frac");
  std::vector<double> top = ctx.attrs().FloatList("top_n_grams");  // for n = 2, 3, 4
  std::vector<double> dup = ctx.attrs().FloatList("dup_n_grams");  // for n = 5 ... 10
  return [=](std::string& text) -> std::optional<std::string> {
    double chars = static_cast<double>(text.size());
    if (chars == 0) return std::nullopt;
    std::vector<std::string_view> paragraphs = Paragraphs(Trim(text));
    auto [para_dups, para_chars] = Duplicates(paragraphs);
    if (!paragraphs.empty() &&
        static_cast<double>(para_dups) / static_cast<double>(paragraphs.size()) > dup_para)
      return "dup_para_frac";
    if (static_cast<double>(para_chars) / chars > dup_para_char) return "dup_para_char_frac";
    std::vector<std::string_view> lines;
    for (std::string_view l : Lines(text))
      if (!l.empty()) lines.push_back(l);
    auto [line_dups, line_chars] = Duplicates(lines);
    if (!lines.empty() &&
        static_cast<double>(line_dups) / static_cast<double>(lines.size()) > dup_line)
      return "dup_line_frac";
    if (static_cast<double>(line_chars) / chars > dup_line_char) return "dup_line_char_frac";
    std::vector<std::string_view> words = Tokens(text);
    for (size_t k = 0; k < top.size(); ++k) {
      size_t n = k + 2;
      if (words.size() < n) break;
      std::unordered_map<std::string, size_t> counts;
      for (size_t i = 0; i + n <= words.size(); ++i) ++counts[Join(words, i, n, " ")];
      size_t best = 0;
      for (const auto& [gram, c] : counts)
        if (c > 1) best = std::max(best, gram.size() * c);
      if (static_cast<double>(best) / chars > top[k]) return "top_" + std::to_string(n) + "_gram";
    }
    for (size_t k = 0; k < dup.size(); ++k) {
      size_t n = k + 5;
      if (words.size() < n) break;
      std::unordered_set<std::string> unique;
      size_t repeated = 0;
      for (size_t i = 0; i + n <= words.size();) {
        std::string gram = Join(words, i, n, "");
        if (unique.count(gram)) {
          repeated += gram.size();
          i += n;
        } else {
          unique.insert(std::move(gram));
          ++i;
        }
      }
      if (static_cast<double>(repeated) / chars > dup[k])
        return "duplicated_" + std::to_string(n) + "_n_grams";
    }
    return std::nullopt;
  };
}

Rule C4Quality(const NodeContext& ctx) {
  bool terminal = ctx.Bool("filter_no_terminal_punct");
  int64_t min_words = ctx.Int("min_words_per_line"), max_word = ctx.Int("max_word_length");
  int64_t min_sentences = ctx.Int("min_num_sentences");
  std::vector<std::string> policy = ctx.StringList("policy_substrings");
  return [=](std::string& text) -> std::optional<std::string> {
    std::vector<std::string> kept;
    for (std::string_view raw : Lines(text)) {
      std::string_view line = Trim(raw);
      std::string lower = Lower(line);
      if (lower.find("lorem ipsum") != std::string::npos) return "lorem_ipsum";
      if (line.find('{') != std::string_view::npos) return "curly_bracket";
      if (terminal && (!EndsInTerminalPunctuation(line) || line.ends_with("..."))) continue;
      std::vector<std::string_view> words = Tokens(line);
      if (static_cast<int64_t>(words.size()) < min_words) continue;
      if (std::any_of(words.begin(), words.end(), [&](std::string_view w) {
            return static_cast<int64_t>(w.size()) > max_word;
          }))
        continue;
      if (lower.find("javascript") != std::string::npos) continue;
      if (std::any_of(policy.begin(), policy.end(),
                      [&](const std::string& p) { return lower.find(p) != std::string::npos; }))
        continue;
      kept.emplace_back(line);
    }
    std::string joined;
    for (const std::string& line : kept) joined += (joined.empty() ? "" : "\n") + line;
    int64_t sentences = 0;
    for (size_t i = 0; i < joined.size(); ++i) {
      char c = joined[i];
      bool end = i + 1 == joined.size() || std::isspace(static_cast<unsigned char>(joined[i + 1]));
      if ((c == '.' || c == '!' || c == '?') && end) ++sentences;
    }
    if (sentences < min_sentences) return "too_few_sentences";
    text = std::move(joined);
    return std::nullopt;
  };
}

Rule FineWebQuality(const NodeContext& ctx) {
  double punct = ctx.Float("line_punct_thr"), short_thr = ctx.Float("short_line_thr");
  int64_t short_len = ctx.Int("short_line_length");
  double dup_chars = ctx.Float("char_duplicates_ratio"), newline = ctx.Float("new_line_ratio");
  return [=](std::string& text) -> std::optional<std::string> {
    std::vector<std::string_view> lines;
    for (std::string_view l : Lines(text))
      if (!Trim(l).empty()) lines.push_back(l);
    if (lines.empty()) return "empty";
    auto lc = static_cast<double>(lines.size());
    double ending = 0, short_lines = 0;
    for (std::string_view l : lines) {
      std::string_view t = Trim(l);
      char last = t.back();
      bool stop = std::string_view(".'\"!?:;)]}").find(last) != std::string_view::npos ||
                  t.ends_with("\u2026");
      ending += stop ? 1 : 0;
      short_lines += static_cast<int64_t>(l.size()) <= short_len ? 1 : 0;
    }
    if (ending / lc < punct) return "line_punct_ratio";
    if (short_lines / lc > short_thr) return "short_line_ratio";
    size_t non_newline = 0;
    for (char c : text) non_newline += c != '\n' ? 1 : 0;
    auto [count, chars] = Duplicates(lines);
    (void)count;
    if (non_newline > 0 &&
        static_cast<double>(chars) / static_cast<double>(non_newline) > dup_chars)
      return "char_dup_ratio";
    double words = static_cast<double>(Tokens(text).size());
    double newlines = static_cast<double>(std::count(text.begin(), text.end(), '\n'));
    if (words > 0 && newlines / words > newline) return "list_ratio";
    return std::nullopt;
  };
}

// Registers a filter op: ports, the text column, and its rule set's attrs.
OpBuilder& FilterOp(Registrar& r, const std::string& name, const std::string& doc,
                    std::function<Rule(const NodeContext&)> make) {
  return r.StreamOp(name)
      .Doc(doc)
      .Input("in", "batch", "documents")
      .Output("kept", "batch", "documents that pass, unchanged (C4: without the dropped lines)")
      .Output("rejected", "batch", "documents that fail, with `reason`: the rule that fired")
      .Attr<std::string>("text_column", "text", "the column filtered")
      .Factory([make](const NodeContext& ctx) -> StatusOr<std::unique_ptr<StreamKernel>> {
        return std::unique_ptr<StreamKernel>(new Filter(ctx, make(ctx)));
      });
}

}  // namespace

void RegisterFilters(Registrar& r) {
  FilterOp(r, "data.GopherQuality",
           "Gopher's quality rules (Rae et al. 2021, datatrove's defaults): word count, mean "
           "word length, '#' and ellipsis per word, bullet and ellipsis-ending lines, words "
           "with a letter, stop words.",
           GopherQuality)
      .Attr<int64_t>("min_doc_words", 50, "fewest words (tokens that are not only punctuation)")
      .Attr<int64_t>("max_doc_words", 100000, "most words")
      .Attr<double>("min_avg_word_length", 3, "shortest mean word length")
      .Attr<double>("max_avg_word_length", 10, "longest mean word length")
      .Attr<double>("max_symbol_word_ratio", 0.1, "most '#' (and, separately, ellipses) per token")
      .Attr<double>("max_bullet_lines_ratio", 0.9, "most lines starting with a bullet")
      .Attr<double>("max_ellipsis_lines_ratio", 0.3, "most lines ending in an ellipsis")
      .Attr<double>("max_non_alpha_words_ratio", 0.8,
                    "at least this share of tokens must contain a letter (datatrove's name)")
      .Attr<int64_t>("min_stop_words", 2, "fewest stop words")
      .Attr("stop_words",
            std::vector<std::string>{"the", "be", "to", "of", "and", "that", "have", "with"},
            "the stop words counted");
  FilterOp(r, "data.GopherRepetition",
           "Gopher's repetition rules (datatrove's defaults): duplicated lines and paragraphs "
           "(by count and by characters), the most frequent 2/3/4-gram's share of characters, "
           "the characters in repeated 5..10-grams.",
           GopherRepetition)
      .Attr<double>("dup_line_frac", 0.3, "most duplicated lines, by count")
      .Attr<double>("dup_para_frac", 0.3, "most duplicated paragraphs, by count")
      .Attr<double>("dup_line_char_frac", 0.2, "most characters in duplicated lines")
      .Attr<double>("dup_para_char_frac", 0.2, "most characters in duplicated paragraphs")
      .Attr("top_n_grams", std::vector<double>{0.20, 0.18, 0.16},
            "for n = 2, 3, 4: the largest share of characters the most frequent n-gram may cover")
      .Attr("dup_n_grams", std::vector<double>{0.15, 0.14, 0.13, 0.12, 0.11, 0.10},
            "for n = 5 ... 10: the largest share of characters in repeated n-grams");
  FilterOp(r, "data.C4Quality",
           "C4's rules (Raffel et al. 2020, datatrove's defaults): drops lines without terminal "
           "punctuation, with fewer than 3 words, a word over 1000 characters, 'javascript' or "
           "policy text; rejects documents with 'lorem ipsum', a '{', or fewer than 5 sentences "
           "left. Kept documents lose the dropped lines.",
           C4Quality)
      .Attr("filter_no_terminal_punct", true,
            "drop lines that do not end in terminal punctuation (FineWeb turned this off)")
      .Attr<int64_t>("min_words_per_line", 3, "lines with fewer words are dropped")
      .Attr<int64_t>("max_word_length", 1000, "lines with a longer word are dropped")
      .Attr<int64_t>("min_num_sentences", 5, "documents with fewer sentences left are rejected")
      .Attr("policy_substrings",
            std::vector<std::string>{"terms of use", "privacy policy", "cookie policy",
                                     "uses cookies", "use of cookies", "use cookies"},
            "lines mentioning these (lower case) are dropped");
  FilterOp(r, "data.FineWebQuality",
           "FineWeb's own rules (datatrove's defaults): share of lines ending in punctuation, "
           "share of short lines, characters in duplicated lines, newlines per word.",
           FineWebQuality)
      .Attr<double>("line_punct_thr", 0.12, "fewest lines ending in punctuation")
      .Attr<double>("short_line_thr", 0.67, "most short lines")
      .Attr<int64_t>("short_line_length", 30, "a line this long or shorter is short")
      .Attr<double>("char_duplicates_ratio", 0.01, "most characters in duplicated lines")
      .Attr<double>("new_line_ratio", 0.3, "most newlines per word");
}

}  // namespace weir::data
