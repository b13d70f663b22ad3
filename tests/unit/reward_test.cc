// The reward plugin: each rule on its edge cases, then the ops in a graph over a JSONL file.
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>

#include "rewards.h"
#include "test_util.h"
#include "weir/json.h"

namespace weir::testing {
namespace {

namespace fs = std::filesystem;
using reward::AnswerSource;
using reward::CountdownOptions;
using reward::Script;

std::optional<std::string> Extract(const std::string& text, AnswerSource source) {
  return reward::ExtractAnswer(text, source);
}

TEST(RewardExtract, AnswerTag) {
  EXPECT_EQ(Extract("<think>x</think><answer> 42 </answer>", AnswerSource::kTag), "42");
  EXPECT_EQ(Extract("<answer>1</answer> then <answer>2</answer>", AnswerSource::kTag), "2");
  EXPECT_EQ(Extract("<answer>\n  \n</answer>", AnswerSource::kTag), "");
  EXPECT_EQ(Extract("the answer is 42", AnswerSource::kTag), std::nullopt);
  EXPECT_EQ(Extract("<answer>42", AnswerSource::kTag), std::nullopt);
  EXPECT_EQ(Extract("42</answer>", AnswerSource::kTag), std::nullopt);
  EXPECT_EQ(Extract("</answer>42<answer>", AnswerSource::kTag), std::nullopt);
  // Nested or stray tags inside the last block make it no answer at all.
  EXPECT_EQ(Extract("<answer>a<answer>b</answer>c</answer>", AnswerSource::kTag), std::nullopt);
  EXPECT_EQ(Extract("<answer>a</think>b</answer>", AnswerSource::kTag), std::nullopt);
  EXPECT_EQ(Extract("\\boxed{7}", AnswerSource::kTag), std::nullopt);
}

TEST(RewardExtract, Boxed) {
  EXPECT_EQ(Extract("so \\boxed{7}.", AnswerSource::kBoxed), "7");
  EXPECT_EQ(Extract("\\boxed{3} no wait, \\boxed{ 4 }", AnswerSource::kBoxed), "4");
  EXPECT_EQ(Extract("\\boxed{\\frac{1}{2}}", AnswerSource::kBoxed), "\\frac{1}{2}");
  EXPECT_EQ(Extract("\\boxed{{a}{b{c}}}", AnswerSource::kBoxed), "{a}{b{c}}");
  EXPECT_EQ(Extract("\\boxed{}", AnswerSource::kBoxed), "");
  EXPECT_EQ(Extract("\\boxed{3", AnswerSource::kBoxed), std::nullopt);
  // The last \boxed counts even when it is cut off.
  EXPECT_EQ(Extract("\\boxed{3} and \\boxed{4", AnswerSource::kBoxed), std::nullopt);
  // Nested \boxed: the last opening is the inner one.
  EXPECT_EQ(Extract("\\boxed{a \\boxed{b} c}", AnswerSource::kBoxed), "b");
  EXPECT_EQ(Extract("<answer>7</answer>", AnswerSource::kBoxed), std::nullopt);
}

TEST(RewardExtract, Either) {
  EXPECT_EQ(Extract("<answer>so \\boxed{7} it is</answer>", AnswerSource::kEither), "7");
  EXPECT_EQ(Extract("<answer>7</answer>", AnswerSource::kEither), "7");
  EXPECT_EQ(Extract("\\boxed{5} <answer>7</answer>", AnswerSource::kEither), "7");
  EXPECT_EQ(Extract("<answer>7 \\boxed{8</answer>", AnswerSource::kEither), "7 \\boxed{8");
  EXPECT_EQ(Extract("<answer>7 and \\boxed{5}", AnswerSource::kEither), "5");
  EXPECT_EQ(Extract("nothing here", AnswerSource::kEither), std::nullopt);
}

TEST(RewardNumbers, Formats) {
  struct Case {
    const char* text;
    double value;
  };
  for (const Case& c : std::vector<Case>{{"3", 3},
                                         {"3.0", 3},
                                         {" 3 ", 3},
                                         {"\n3.50\t", 3.5},
                                         {"-2", -2},
                                         {"+2", 2},
                                         {".5", 0.5},
                                         {"5.", 5},
                                         {"1e3", 1000},
                                         {"-2.5E-1", -0.25},
                                         {"1,000", 1000},
                                         {"-1,234,567.5", -1234567.5},
                                         {"3/4", 0.75},
                                         {"-3 / 4", -0.75},
                                         {"\\frac{3}{4}", 0.75},
                                         {"\\dfrac{ 1 }{8}", 0.125},
                                         {"-\\frac{3}{4}", -0.75},
                                         {"$5$", 5},
                                         {"$\\tfrac{1}{2}$", 0.5}}) {
    std::optional<double> v = reward::ParseNumber(c.text);
    ASSERT_TRUE(v.has_value()) << c.text;
    EXPECT_EQ(*v, c.value) << c.text;
  }
  for (const char* text : {"",
                           " ",
                           "-",
                           "+",
                           ".",
                           "e5",
                           "1e",
                           "1,00",
                           "12,3456",
                           "1000,000",
                           ",100",
                           "1,,000",
                           "1.2.3",
                           "3 4",
                           "0x10",
                           "inf",
                           "nan",
                           "abc",
                           "3/0",
                           "1/2/3",
                           "\\frac{1}{0}",
                           "\\frac{1}{x}",
                           "\\frac{1}",
                           "\\sqrt{4}",
                           "1e400",
                           "3%"}) {
    EXPECT_EQ(reward::ParseNumber(text), std::nullopt) << text;
  }
}

TEST(RewardAccuracy, NumbersCompareByValueTextExactly) {
  EXPECT_TRUE(reward::AnswersMatch("3.0", "3", 1e-6));
  EXPECT_TRUE(reward::AnswersMatch(" 3 ", "3", 1e-6));
  EXPECT_TRUE(reward::AnswersMatch("1,000", "1000", 1e-6));
  EXPECT_TRUE(reward::AnswersMatch("3/4", "0.75", 1e-6));
  EXPECT_TRUE(reward::AnswersMatch("\\frac{3}{4}", "3/4", 1e-6));
  EXPECT_TRUE(reward::AnswersMatch("-2", "-2.000", 1e-6));
  EXPECT_TRUE(reward::AnswersMatch("0.333333", "1/3", 1e-6));
  EXPECT_FALSE(reward::AnswersMatch("0.33", "1/3", 1e-6));
  EXPECT_TRUE(reward::AnswersMatch("0.33", "1/3", 0.01));
  // Relative to the truth's size beyond 1.
  EXPECT_TRUE(reward::AnswersMatch("1000000.5", "1000000", 1e-6));
  EXPECT_FALSE(reward::AnswersMatch("1000001.5", "1000000", 1e-6));
  EXPECT_FALSE(reward::AnswersMatch("2", "3", 1e-6));
  EXPECT_FALSE(reward::AnswersMatch("-2", "2", 1e-6));
  EXPECT_TRUE(reward::AnswersMatch(" x+1\n", "x+1", 1e-6));
  EXPECT_FALSE(reward::AnswersMatch("x + 1", "x+1", 1e-6));
  EXPECT_FALSE(reward::AnswersMatch("1,00", "100", 1e-6));
  EXPECT_FALSE(reward::AnswersMatch("", "", 1e-6));
  EXPECT_FALSE(reward::AnswersMatch("  ", "", 1e-6));
}

TEST(RewardAccuracy, ScoresTheFinalAnswer) {
  auto score = [](const std::string& completion, const std::string& truth) {
    return reward::AccuracyReward(completion, truth, AnswerSource::kEither, 1e-6);
  };
  EXPECT_EQ(score("<think>10 * 100</think><answer>\\boxed{1,000}</answer>", "1000"), 1.0);
  EXPECT_EQ(score("\\boxed{3} no wait, it is \\boxed{4}", "4"), 1.0);
  EXPECT_EQ(score("\\boxed{3} no wait, it is \\boxed{4}", "3"), 0.0);
  EXPECT_EQ(score("<answer>\\frac{3}{4}</answer>", "0.75"), 1.0);
  EXPECT_EQ(score("The answer is 4.", "4"), 0.0);
  EXPECT_EQ(score("<answer>4", "4"), 0.0);
  EXPECT_EQ(score("<answer><answer>4</answer></answer>", "4"), 0.0);
  EXPECT_EQ(score("<answer>Paris</answer>", " Paris "), 1.0);
  EXPECT_EQ(score("<answer>paris</answer>", "Paris"), 0.0);
  EXPECT_EQ(score("<answer></answer>", ""), 0.0);
  EXPECT_EQ(
      reward::AccuracyReward("<answer>4</answer> \\boxed{5}", "5", AnswerSource::kBoxed, 1e-6),
      1.0);
  EXPECT_EQ(reward::AccuracyReward("<answer>4</answer> \\boxed{5}", "5", AnswerSource::kTag, 1e-6),
            0.0);
}

TEST(RewardFormat, Strict) {
  auto strict = [](const std::string& text) { return reward::FormatReward(text, true, false); };
  EXPECT_EQ(strict("<think>a</think><answer>b</answer>"), 1.0);
  EXPECT_EQ(strict("  <think>\na\n</think>\n<answer>\nb\n</answer>\n"), 1.0);
  EXPECT_EQ(strict("<think></think><answer></answer>"), 1.0);
  EXPECT_EQ(strict("<think>a</think>so<answer>b</answer>"), 0.0);
  EXPECT_EQ(strict("hi <think>a</think><answer>b</answer>"), 0.0);
  EXPECT_EQ(strict("<think>a</think><answer>b</answer> bye"), 0.0);
  EXPECT_EQ(strict("<think>a</think>"), 0.0);
  EXPECT_EQ(strict("<answer>b</answer>"), 0.0);
  EXPECT_EQ(strict("<answer>b</answer><think>a</think>"), 0.0);
  EXPECT_EQ(strict("<think>a<answer>b</answer>"), 0.0);
  EXPECT_EQ(strict("<think>a</think><answer>b"), 0.0);
  EXPECT_EQ(strict("<think><think>a</think></think><answer>b</answer>"), 0.0);
  EXPECT_EQ(strict("<think>a</think><answer>b<answer>c</answer></answer>"), 0.0);
  EXPECT_EQ(strict("<think>a</think><answer>b</answer><answer>c</answer>"), 0.0);
  EXPECT_EQ(strict(""), 0.0);
}

TEST(RewardFormat, LenientAndThinkInPrompt) {
  EXPECT_EQ(reward::FormatReward("x <think>a</think> y <answer>b</answer> z", false, false), 1.0);
  EXPECT_EQ(reward::FormatReward("<answer>b</answer><think>a</think>", false, false), 0.0);
  EXPECT_EQ(reward::FormatReward("<think>a</think> y", false, false), 0.0);
  EXPECT_EQ(reward::FormatReward("a</think><answer>b</answer>", true, true), 1.0);
  EXPECT_EQ(reward::FormatReward("a</think><answer>b</answer>", true, false), 0.0);
  EXPECT_EQ(reward::FormatReward("<think>a</think><answer>b</answer>", true, true), 0.0);
  EXPECT_EQ(reward::FormatReward("a</think> y <answer>b</answer>", false, true), 1.0);
}

TEST(RewardLanguage, ShareOfWordsInTheTargetScript) {
  using reward::LanguageConsistency;
  EXPECT_EQ(LanguageConsistency("hello world", Script::kLatin), 1.0);
  EXPECT_EQ(LanguageConsistency("hello мир", Script::kLatin), 0.5);
  EXPECT_EQ(LanguageConsistency("hello мир", Script::kCyrillic), 0.5);
  // Each CJK character is a word; CJK punctuation is none.
  EXPECT_EQ(LanguageConsistency("我爱你。 ok", Script::kLatin), 0.25);
  EXPECT_EQ(LanguageConsistency("我爱你。 ok", Script::kCjk), 0.75);
  EXPECT_EQ(LanguageConsistency("한국어 text", Script::kCjk), 0.75);
  EXPECT_EQ(LanguageConsistency("Καλημέρα world", Script::kGreek), 0.5);
  EXPECT_EQ(LanguageConsistency("helloмир", Script::kLatin), 0.5);
  EXPECT_EQ(LanguageConsistency("café naïve Ärger", Script::kLatin), 1.0);
  EXPECT_EQ(LanguageConsistency("cafe\u0301 ok", Script::kLatin), 1.0);
  EXPECT_EQ(LanguageConsistency("x = 2 × 3", Script::kLatin), 1.0);
  EXPECT_EQ(LanguageConsistency("2 + 3 = 5", Script::kLatin), 0.0);
  EXPECT_EQ(LanguageConsistency("", Script::kLatin), 0.0);
  EXPECT_EQ(LanguageConsistency("<think>мир</think><answer>5</answer>", Script::kCyrillic), 1.0);
  // Bytes that are not UTF-8 are no letters, and never read past the end.
  EXPECT_EQ(LanguageConsistency("abc\xff\xfe def", Script::kLatin), 1.0);
  EXPECT_EQ(LanguageConsistency("\xe4\xb8", Script::kCjk), 0.0);
  EXPECT_EQ(LanguageConsistency("ab\xe4\xb8", Script::kLatin), 1.0);
}

TEST(RewardLanguage, ThinkText) {
  EXPECT_EQ(reward::ThinkText("<think>abc</think><answer>d</answer>"), "abc");
  EXPECT_EQ(reward::ThinkText("abc</think>rest"), "abc");
  EXPECT_EQ(reward::ThinkText("<think>abc"), "abc");
  EXPECT_EQ(reward::ThinkText("plain"), "plain");
}

double Countdown(const std::string& answer, const std::vector<int64_t>& numbers, int64_t target,
                 const CountdownOptions& options = {}) {
  return reward::CountdownReward("<think>...</think><answer>" + answer + "</answer>", numbers,
                                 target, options);
}

TEST(RewardCountdown, CorrectExpressions) {
  EXPECT_EQ(Countdown("3 * 5 + 7", {3, 5, 7}, 22), 1.0);
  EXPECT_EQ(Countdown("(3+5)*7", {3, 5, 7}, 56), 1.0);
  EXPECT_EQ(Countdown(" 3 + 5 * 7 ", {3, 5, 7}, 38), 1.0);
  EXPECT_EQ(Countdown("3 + 5 * 7", {3, 5, 7}, 56), 0.0);
  EXPECT_EQ(Countdown("7 - 5 - 3", {3, 5, 7}, -1), 1.0);
  EXPECT_EQ(Countdown("3 * 5", {3, 5, 7}, 15), 1.0);  // unused numbers are fine
  EXPECT_EQ(Countdown("3 * 3 + 7", {3, 3, 7}, 16), 1.0);
  // Exact rationals: no integer truncation, no rounding.
  EXPECT_EQ(Countdown("7 / 2", {7, 2}, 3), 0.0);
  EXPECT_EQ(Countdown("(7 / 2) * 2", {7, 2, 2}, 7), 1.0);
  EXPECT_EQ(Countdown("1 / 3 + 1 / 3 + 1 / 3", {1, 1, 1, 3, 3, 3}, 1), 1.0);
  EXPECT_EQ(Countdown("100 / (7 - 5 / 2)", {100, 7, 5, 2}, 22), 0.0);  // 200/9
  // The answer tag decides: text outside it does not count.
  EXPECT_EQ(reward::CountdownReward("3 * 5 + 7", {3, 5, 7}, 22), 0.0);
  EXPECT_EQ(reward::CountdownReward("<answer>1</answer> <answer>3 * 5 + 7</answer>", {3, 5, 7}, 22),
            1.0);
}

TEST(RewardCountdown, WrongNumbers) {
  EXPECT_EQ(Countdown("3 * 3 + 7", {3, 5, 7}, 16), 0.0);
  EXPECT_EQ(Countdown("3 * 5 + 8", {3, 5, 7}, 23), 0.0);
  EXPECT_EQ(Countdown("35 - 13", {3, 5, 7}, 22), 0.0);
  EXPECT_EQ(Countdown("03 * 5 + 7", {3, 5, 7}, 22), 1.0);  // 03 is the literal 3
  CountdownOptions all;
  all.use_all = true;
  EXPECT_EQ(Countdown("3 * 5", {3, 5, 7}, 15, all), 0.0);
  EXPECT_EQ(Countdown("3 * 5 + 7", {3, 5, 7}, 22, all), 1.0);
}

TEST(RewardCountdown, MalformedAndDivisionByZero) {
  CountdownOptions tiny_zero;
  tiny_zero.format_score = 0.1;
  for (const char* bad : {"",
                          "3 +",
                          "(3 + 5",
                          "3 + 5)",
                          "3 5",
                          "()",
                          "-3 + 5",
                          "+3",
                          "3 ** 5",
                          "3.5 + 1",
                          "3 = 3",
                          "3 + x",
                          "import os",
                          "2^3",
                          "3 // 5",
                          "5 / (3 - 3)",
                          "5 / 0",
                          "(5 - 5) / (3 - 3)",
                          "\\boxed{5}",
                          "99999999999999999999 - 5",
                          "1000000000 * 1000000000 * 1000000000"}) {
    std::vector<int64_t> numbers = {3, 5, 3, 0, 2, 1000000000, 1000000000, 1000000000, 99999999999};
    EXPECT_EQ(Countdown(bad, numbers, 8), 0.0) << bad;
    EXPECT_EQ(Countdown(bad, numbers, 8, tiny_zero), 0.1) << bad;
  }
  // Without an answer there is no format score.
  EXPECT_EQ(reward::CountdownReward("5 / 0", {5, 0}, 1, tiny_zero), 0.0);
  EXPECT_EQ(reward::CountdownReward("<answer>3 * 5", {3, 5}, 15, tiny_zero), 0.0);
  EXPECT_EQ(Countdown("3 * 5 + 7", {3, 5, 7}, 21, tiny_zero), 0.1);
}

TEST(RewardCountdown, NestingAndLengthAreBounded) {
  auto nested = [](int depth) {
    return std::string(static_cast<size_t>(depth), '(') + "5" +
           std::string(static_cast<size_t>(depth), ')');
  };
  CountdownOptions tiny_zero;
  tiny_zero.format_score = 0.1;
  EXPECT_EQ(Countdown(nested(64), {5}, 5, tiny_zero), 1.0);
  EXPECT_EQ(Countdown(nested(65), {5}, 5, tiny_zero), 0.1);
  EXPECT_EQ(Countdown(nested(100000), {5}, 5, tiny_zero), 0.1);
  // 1024 bytes after trimming are the most read.
  EXPECT_EQ(Countdown("5" + std::string(1021, ' ') + "*1", {5, 1}, 5, tiny_zero), 1.0);
  EXPECT_EQ(Countdown("5" + std::string(1022, ' ') + "*1", {5, 1}, 5, tiny_zero), 0.1);
}

class RewardOps : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::path(::testing::TempDir()) /
           ("reward_" + std::to_string(::getpid()) + "_" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }

  // The rows io.JsonlSink wrote to `file` under the run's folder.
  std::vector<google::protobuf::Struct> Rows(const std::string& file) {
    return ReadJsonlRows(dir_ / "out" / file);
  }

  Status RunInline(const std::string& rows, const std::string& nodes) {
    std::ofstream(dir_ / "rows.jsonl") << rows;
    std::ofstream(dir_ / "graph.pbtxt")
        << "node { name: \"rows\" op: \"io.JsonlSource\" attr: \"path=rows.jsonl\" }\n"
        << nodes;
    return RunGraphFile(dir_ / "graph.pbtxt", dir_ / "out").status;
  }

  fs::path dir_;
};

TEST_F(RewardOps, GraphAddsEveryRewardColumn) {
  RunResult r = RunGraphFile(TestGraph("good/rewards.pbtxt"), dir_ / "out");
  ASSERT_TRUE(r.status.ok()) << r.status.ToString();
  std::vector<google::protobuf::Struct> rows = Rows("scored.jsonl");
  ASSERT_EQ(rows.size(), 4u);
  struct Expected {
    double accuracy, format, language, countdown, total;
  };
  std::vector<Expected> expected = {
      {0, 1, 1, 1, 1.5},                  // a right Countdown answer, not the number itself
      {1, 1, 1.0 / 3, 0.1, 2 + 0.5 / 3},  // \boxed{56} in the tag; Russian reasoning
      {1, 0, 1, 0, 1.5},                  // \boxed{1,000} without tags
      {0, 1, 1, 0.1, 1.5}};               // divides by zero
  for (size_t i = 0; i < rows.size(); ++i) {
    const auto& f = rows[i].fields();
    EXPECT_EQ(f.at("id").number_value(), static_cast<double>(i));
    EXPECT_EQ(f.at("rewards/accuracy").number_value(), expected[i].accuracy) << i;
    EXPECT_EQ(f.at("rewards/format").number_value(), expected[i].format) << i;
    EXPECT_NEAR(f.at("rewards/language").number_value(), expected[i].language, 1e-15) << i;
    EXPECT_EQ(f.at("rewards/countdown").number_value(), expected[i].countdown) << i;
    EXPECT_NEAR(f.at("reward").number_value(), expected[i].total, 1e-15) << i;
    EXPECT_TRUE(f.count("completion")) << "input columns pass through";
  }
}

TEST_F(RewardOps, ColumnsOfTextAndNumbers) {
  Status s = RunInline(
      "{\"completion\": \"<answer>3 * 5 + 7 \\\\boxed{0.5}</answer>\", \"answer\": \"1/2\", "
      "\"nums\": \"[3, 5, 7]\", \"target\": \"22\"}\n"
      "{\"completion\": \"<answer>3</answer>\", \"answer\": \"3.0\", \"nums\": \"[ ]\", "
      "\"target\": \" 3 \"}\n",
      "node { name: \"a\" op: \"reward.Accuracy\" input: \"rows\" }\n"
      "node { name: \"c\" op: \"reward.Countdown\" input: \"a\" attr: \"source=either\" }\n"
      "node { name: \"w\" op: \"io.JsonlSink\" input: \"c\" attr: \"path=scored.jsonl\" }\n");
  ASSERT_TRUE(s.ok()) << s.ToString();
  std::vector<google::protobuf::Struct> rows = Rows("scored.jsonl");
  ASSERT_EQ(rows.size(), 2u);
  EXPECT_EQ(rows[0].fields().at("rewards/accuracy").number_value(), 1.0);
  EXPECT_EQ(rows[0].fields().at("rewards/countdown").number_value(), 0.0);  // \boxed{0.5} wins
  EXPECT_EQ(rows[1].fields().at("rewards/accuracy").number_value(), 1.0);
  EXPECT_EQ(rows[1].fields().at("rewards/countdown").number_value(), 0.0);  // 3 is not given
}

TEST_F(RewardOps, ErrorsNameTheColumn) {
  const std::string row = "{\"completion\": \"<answer>3</answer>\", \"nums\": \"3, 5\"}\n";
  Status s = RunInline(row, "node { name: \"a\" op: \"reward.Accuracy\" input: \"rows\" }\n");
  EXPECT_NE(s.ToString().find("batch has no column 'answer'"), std::string::npos) << s.ToString();
  s = RunInline(row, "node { name: \"c\" op: \"reward.Countdown\" input: \"rows\" }\n");
  EXPECT_NE(s.ToString().find("column 'nums' row 0: expected a JSON list of integers like "
                              "[3, 5, 7], got '3, 5'"),
            std::string::npos)
      << s.ToString();
  s = RunInline("{\"completion\": \"<answer>3</answer>\", \"nums\": \"[3]\", \"target\": 2.5}\n",
                "node { name: \"c\" op: \"reward.Countdown\" input: \"rows\" }\n");
  EXPECT_NE(s.ToString().find("column 'target' row 0: expected an integer target, got 2.5"),
            std::string::npos)
      << s.ToString();
  s = RunInline(row,
                "node { name: \"t\" op: \"reward.Combine\" input: \"rows\" "
                "attr: \"columns=[completion]\" }\n");
  EXPECT_NE(s.ToString().find("column 'completion' holds strings, expected float or int"),
            std::string::npos)
      << s.ToString();
  s = RunInline(row,
                "node { name: \"t\" op: \"reward.Combine\" input: \"rows\" "
                "attr: \"columns=[a, b] weights=[1]\" }\n");
  EXPECT_NE(s.ToString().find("attr 'weights' has 1 values for 2 columns"), std::string::npos)
      << s.ToString();
}

}  // namespace
}  // namespace weir::testing
