// The data plugin's quality filters: each rule on hand-made documents that pass and fail it.
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>

#include "test_util.h"
#include "weir/json.h"

namespace weir::testing {
namespace {

namespace fs = std::filesystem;

struct Outcome {
  std::vector<std::string> reasons;  // per document: the rule that fired, "" when kept
  std::vector<std::string> kept_text;
};

// Runs `op` (with `attrs`) over the documents in a graph: source -> filter -> two sinks.
Outcome RunFilter(const std::string& op, const std::string& attrs,
                  const std::vector<std::string>& texts) {
  static int counter = 0;
  fs::path dir = fs::path(::testing::TempDir()) /
                 ("filters_" + std::to_string(::getpid()) + "_" + std::to_string(counter++));
  fs::create_directories(dir);
  {
    std::ofstream docs(dir / "docs.jsonl");
    for (size_t i = 0; i < texts.size(); ++i)
      docs << "{\"id\": " << i << ", \"text\": " << JsonQuote(texts[i]) << "}\n";
    std::ofstream graph(dir / "filter.pbtxt");
    graph << "node { name: \"read\" op: \"io.JsonlSource\" attr: \"path=docs.jsonl\" }\n"
          << "node { name: \"filter\" op: \"" << op << "\" input: \"read\" attr: \"" << attrs
          << "\" }\n"
          << "node { name: \"kept\" op: \"io.JsonlSink\" input: \"filter:kept\" "
             "attr: \"path=kept.jsonl\" }\n"
          << "node { name: \"rejected\" op: \"io.JsonlSink\" input: \"filter:rejected\" "
             "attr: \"path=rejected.jsonl\" }\n";
  }
  RunResult r = RunGraphFile(dir / "filter.pbtxt", dir / "out");
  CHECK(r.status.ok()) << r.status.ToString();
  Outcome out;
  out.reasons.assign(texts.size(), "?");
  out.kept_text.assign(texts.size(), "");
  for (const char* file : {"kept.jsonl", "rejected.jsonl"}) {
    std::ifstream in(dir / "out" / file);
    for (std::string line; std::getline(in, line);) {
      auto row = ParseJsonObject(line);
      CHECK(row.ok()) << line;
      auto id = static_cast<size_t>(row->fields().at("id").number_value());
      bool rejected = row->fields().count("reason") > 0;
      out.reasons[id] = rejected ? row->fields().at("reason").string_value() : "";
      if (!rejected) out.kept_text[id] = row->fields().at("text").string_value();
    }
  }
  return out;
}

// Plain prose: n words from a list that has stop words and ordinary lengths, no repeats of
// long n-grams (a counter word keeps every 4 words distinct).
std::string Prose(int n, const std::string& sep = " ") {
  const char* base[] = {"the", "river",  "carried", "small", "boats", "to",       "a",  "harbor",
                        "and", "people", "watched", "with",  "quiet", "interest", "of", "evening"};
  std::string out;
  for (int i = 0; i < n; ++i) {
    out += (i ? sep : "") + std::string(base[i % 16]);
    if (i % 4 == 3) out += std::to_string(i) + "x";
  }
  return out;
}

std::string Repeat(const std::string& s, int n, const std::string& sep) {
  std::string out;
  for (int i = 0; i < n; ++i) out += (i ? sep : "") + s;
  return out;
}

TEST(GopherQuality, EachRule) {
  std::vector<std::pair<std::string, std::string>> cases = {
      {Prose(80), ""},
      {Prose(20), "gopher_short_doc"},
      {Repeat("ab cd ef", 30, " ") + " the and", "gopher_below_avg_threshold"},
      {Repeat("extraordinarily", 60, " ") + " the and", "gopher_above_avg_threshold"},
      {Prose(60) + " " + Repeat("#tag", 10, " "), "gopher_too_many_hashes"},
      {Prose(60) + " " + Repeat("wait...", 10, " "), "gopher_too_many_ellipsis"},
      {"- " + Prose(20) + "\n- " + Prose(20) + "\n- " + Prose(20) + "\n* " + Prose(20),
       "gopher_too_many_bullets"},
      {Prose(20) + "...\n" + Prose(20) + "...\n" + Prose(20) + ".\n" + Prose(20) + ".",
       "gopher_too_many_end_ellipsis"},
      {Prose(50) + " " + Repeat("12345", 20, " "), "gopher_below_alpha_threshold"},
      {Repeat("river boats harbor people watched quiet evening", 10, " "),
       "gopher_enough_stop_words"},
  };
  std::vector<std::string> texts;
  for (const auto& c : cases) texts.push_back(c.first);
  Outcome out = RunFilter("data.GopherQuality", "", texts);
  for (size_t i = 0; i < cases.size(); ++i)
    EXPECT_EQ(out.reasons[i], cases[i].second) << "case " << i << ": " << texts[i].substr(0, 60);
}

TEST(GopherRepetition, EachRule) {
  std::string line = "A line that appears more than once in this document.";
  std::vector<std::pair<std::string, std::string>> cases = {
      {Prose(200), ""},
      {Prose(40) + "\n\n" + line + "\n\n" + line + "\n\n" + line + "\n\n" + Prose(40),
       "dup_para_frac"},
      {Prose(40, "\n") + "\n" + Repeat(line, 3, "\n") + "\n" + Repeat(line, 3, "\n"),
       "dup_line_frac"},
      // One line in four repeats (under 0.3), but it holds most of the characters.
      {Prose(30) + "\n" + Prose(31) + "\n" + Prose(300) + "\n" + Prose(300), "dup_line_char_frac"},
      {Prose(40) + " " + Repeat("of the", 60, " w ") + " " + Prose(40), "top_2_gram"},
  };
  std::vector<std::string> texts;
  for (const auto& c : cases) texts.push_back(c.first);
  Outcome out = RunFilter("data.GopherRepetition", "", texts);
  for (size_t i = 0; i < cases.size(); ++i)
    EXPECT_EQ(out.reasons[i], cases[i].second) << "case " << i << ": " << texts[i].substr(0, 60);
  // Repeated 5-grams alone, with the top-n-gram rules relaxed.
  std::string phrase = "seven quiet harbors watched boats";
  Outcome dup = RunFilter("data.GopherRepetition", "top_n_grams=[1.0, 1.0, 1.0]",
                          {Prose(100) + " " + Repeat(phrase, 8, " and then ") + " " + Prose(20)});
  EXPECT_EQ(dup.reasons[0], "duplicated_5_n_grams");
}

TEST(C4Quality, DropsLinesAndRejectsDocuments) {
  std::string good =
      "The first sentence is here.\nA second one follows it!\nIs this the "
      "third?\nThe fourth comes next.\nAnd the fifth ends it.";
  std::vector<std::pair<std::string, std::string>> cases = {
      {good + "\nClick here to continue\nEnable JavaScript to see this page.\nRead our "
              "privacy policy today.\nToo short.",
       ""},
      {good + "\nLorem ipsum dolor sit amet.", "lorem_ipsum"},
      {good + "\nfunction f() { return 1; }", "curly_bracket"},
      {"One sentence here.\nTwo sentences here.\nThree of them now.", "too_few_sentences"},
  };
  std::vector<std::string> texts;
  for (const auto& c : cases) texts.push_back(c.first);
  Outcome out = RunFilter("data.C4Quality", "", texts);
  for (size_t i = 0; i < cases.size(); ++i)
    EXPECT_EQ(out.reasons[i], cases[i].second) << "case " << i;
  EXPECT_EQ(out.kept_text[0], good);  // the four bad lines are gone, the rest unchanged
  // FineWeb's variant keeps lines without terminal punctuation.
  Outcome relaxed = RunFilter("data.C4Quality", "filter_no_terminal_punct=false",
                              {good + "\nA line without an end"});
  EXPECT_EQ(relaxed.kept_text[0], good + "\nA line without an end");
}

TEST(FineWebQuality, EachRule) {
  std::vector<std::string> long_lines;
  for (int i = 0; i < 10; ++i) long_lines.push_back(Prose(12) + " number " + std::to_string(i));
  auto join = [](const std::vector<std::string>& lines, const std::string& end) {
    std::string out;
    for (const std::string& l : lines) out += (out.empty() ? "" : "\n") + l + end;
    return out;
  };
  std::vector<std::string> two_words;  // long lines of two words: 0.45 newlines per word
  for (int i = 0; i < 10; ++i)
    two_words.push_back("Extraordinarily supercalifragilisticexpialidocious" + std::to_string(i));
  std::vector<std::pair<std::string, std::string>> cases = {
      {join(long_lines, "."), ""},
      {join(long_lines, ""), "line_punct_ratio"},
      {join(long_lines, ".") + "\n" + Repeat("Short line.", 1, "") + "\n" +
           Repeat("Tiny one here.\nAnd another.\nOk.\nYes.\nNo.\nMaybe.\nSure.\nFine.\nDone.\n"
                  "Next.\nGo.\nStop.\nWait.\nRun.\nSit.\nEat.\nSee.\nSay.\nAsk.\nTry.\nAct.",
                  1, ""),
       "short_line_ratio"},
      {join(long_lines, ".") + "\n" + long_lines[0] + ".", "char_dup_ratio"},
      {join(two_words, "."), "list_ratio"},
  };
  std::vector<std::string> texts;
  for (const auto& c : cases) texts.push_back(c.first);
  Outcome out = RunFilter("data.FineWebQuality", "", texts);
  for (size_t i = 0; i < cases.size(); ++i)
    EXPECT_EQ(out.reasons[i], cases[i].second) << "case " << i << ": " << texts[i].substr(0, 60);
}

}  // namespace
}  // namespace weir::testing
