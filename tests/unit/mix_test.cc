// data.Mix (weighted mixtures of streams) and data.FillInTheMiddle.
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>

#include "test_util.h"
#include "weir/json.h"

namespace weir::testing {
namespace {

namespace fs = std::filesystem;

class MixTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::path(::testing::TempDir()) /
           ("mix_" + std::to_string(::getpid()) + "_" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }

  void WriteSource(const std::string& name, int rows, const std::string& text = "") {
    std::ofstream out(dir_ / (name + ".jsonl"));
    for (int i = 0; i < rows; ++i) {
      out << "{\"src\": " << JsonQuote(name)
          << ", \"text\": " << JsonQuote(text.empty() ? name + std::to_string(i) : text) << "}\n";
    }
  }

  // Runs a graph; returns the rows of out/rows.jsonl.
  std::vector<google::protobuf::Struct> Run(const std::string& graph, Status* status = nullptr) {
    std::ofstream(dir_ / "g.pbtxt") << graph;
    fs::remove_all(dir_ / "out");
    RunResult r = RunGraphFile(dir_ / "g.pbtxt", dir_ / "out");
    if (status != nullptr) *status = r.status;
    std::vector<google::protobuf::Struct> rows;
    if (!r.status.ok()) return rows;
    std::ifstream in(dir_ / "out" / "rows.jsonl");
    for (std::string line; std::getline(in, line);) rows.push_back(*ParseJsonObject(line));
    return rows;
  }

  fs::path dir_;
};

const char* kMixGraph = R"(
node { name: "web" op: "io.JsonlSource" attr: "path=web.jsonl batch_size=50" }
node { name: "code" op: "io.JsonlSource" attr: "path=code.jsonl batch_size=7" }
node { name: "math" op: "io.JsonlSource" attr: "path=math.jsonl batch_size=13" }
node { name: "mix" op: "data.Mix" input: "web" input: "code" input: "math"
       attr: "weights=[0.6, 0.3, 0.1] seed=2" }
node { name: "w" op: "io.JsonlSink" input: "mix" attr: "path=rows.jsonl" }
)";

TEST_F(MixTest, RowsFollowTheWeightsUntilAnInputRunsOut) {
  WriteSource("web", 3000);
  WriteSource("code", 3000);
  WriteSource("math", 3000);
  auto rows = Run(kMixGraph);
  ASSERT_EQ(rows.size(), 9000u);  // every row, once
  // The first 2000 rows come before any input can run out: shares near the weights.
  std::map<std::string, int> first;
  for (size_t i = 0; i < 2000; ++i) ++first[rows[i].fields().at("src").string_value()];
  EXPECT_NEAR(first["web"] / 2000.0, 0.6, 0.04);
  EXPECT_NEAR(first["code"] / 2000.0, 0.3, 0.04);
  EXPECT_NEAR(first["math"] / 2000.0, 0.1, 0.03);
  // Each input's rows keep their order.
  std::map<std::string, int> next;
  for (const auto& r : rows) {
    std::string src = r.fields().at("src").string_value();
    EXPECT_EQ(r.fields().at("text").string_value(), src + std::to_string(next[src]++));
  }
  // The same seed gives the same mixture, whatever the batch sizes.
  std::string rebatched = kMixGraph;
  rebatched.replace(rebatched.find("batch_size=50"), 13, "batch_size=3");
  auto again = Run(rebatched);
  ASSERT_EQ(again.size(), rows.size());
  for (size_t i = 0; i < rows.size(); ++i)
    ASSERT_EQ(again[i].fields().at("text").string_value(),
              rows[i].fields().at("text").string_value())
        << i;
}

TEST_F(MixTest, AWeightPerInputIsRequired) {
  WriteSource("web", 3);
  WriteSource("code", 3);
  Status s;
  Run(R"(
node { name: "web" op: "io.JsonlSource" attr: "path=web.jsonl" }
node { name: "code" op: "io.JsonlSource" attr: "path=code.jsonl" }
node { name: "mix" op: "data.Mix" input: "web" input: "code" attr: "weights=[1.0]" }
node { name: "w" op: "io.JsonlSink" input: "mix" attr: "path=rows.jsonl" }
)",
      &s);
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.ToString().find("input 1 has no weight (weights has 1)"), std::string::npos)
      << s.ToString();
}

TEST_F(MixTest, FillInTheMiddleRewritesAShareAndKeepsEveryCharacter) {
  std::string code = "def add(a, b):\n    return a + b  # ünïcödé ✓\n";
  WriteSource("code", 1000, code);
  auto rows = Run(R"(
node { name: "code" op: "io.JsonlSource" attr: "path=code.jsonl" }
node { name: "fim" op: "data.FillInTheMiddle" input: "code" attr: "rate=0.1 seed=4" }
node { name: "w" op: "io.JsonlSink" input: "fim" attr: "path=rows.jsonl" }
)");
  ASSERT_EQ(rows.size(), 1000u);
  const std::string begin = "<\uff5cfim\u2581begin\uff5c>", hole = "<\uff5cfim\u2581hole\uff5c>",
                    end = "<\uff5cfim\u2581end\uff5c>";
  int rewritten = 0;
  for (const auto& r : rows) {
    std::string text = r.fields().at("text").string_value();
    if (r.fields().at("fim").number_value() == 0) {
      EXPECT_EQ(text, code);
      continue;
    }
    ++rewritten;
    // begin prefix hole suffix end middle  ->  prefix middle suffix is the original.
    ASSERT_EQ(text.rfind(begin, 0), 0u) << text;
    size_t h = text.find(hole), e = text.find(end);
    ASSERT_NE(h, std::string::npos);
    ASSERT_NE(e, std::string::npos);
    std::string prefix = text.substr(begin.size(), h - begin.size());
    std::string suffix = text.substr(h + hole.size(), e - h - hole.size());
    std::string middle = text.substr(e + end.size());
    EXPECT_EQ(prefix + middle + suffix, code);
  }
  EXPECT_GT(rewritten, 70);  // about 100 of 1000
  EXPECT_LT(rewritten, 130);
}

}  // namespace
}  // namespace weir::testing
