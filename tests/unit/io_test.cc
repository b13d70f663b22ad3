// The io plugin's ops, run in small graphs over files made here.
#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>

#include "test_util.h"
#include "weir/line_reader.h"
#include "weir/runtime/executor.h"

namespace weir::testing {
namespace {

namespace fs = std::filesystem;

class IoTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::path(::testing::TempDir()) /
           ("io_" + std::string(::testing::UnitTest::GetInstance()->current_test_info()->name()));
    fs::remove_all(dir_);
    fs::create_directories(dir_ / "out");
  }

  void Write(const std::string& name, const std::string& content) {
    fs::create_directories((dir_ / name).parent_path());
    std::ofstream(dir_ / name) << content;
  }

  std::string Read(const std::string& name) {
    std::ifstream in(dir_ / "out" / name);
    std::stringstream s;
    s << in.rdbuf();
    return s.str();
  }

  // Runs a graph written here; returns the run's status.
  Status Run(const std::string& graph_text) {
    Write("graph.pbtxt", graph_text);
    auto g = LoadTestGraph((dir_ / "graph.pbtxt").string());
    if (!g.ok()) return g.status();
    RunOptions options;
    options.out_dir = dir_ / "out";
    options.metrics = &metrics_;
    return RunGraph(*g, options).status;
  }

  fs::path dir_;
  CapturedMetrics metrics_;
};

// Lines are read in chunks up to a bound: long lines come back whole, a line past the bound is an
// error instead of an allocation as large as the file.
TEST(ReadLine, LongLinesAreWholeAndOverlongOnesAreRefused) {
  std::string longer_than_a_chunk(200000, 'x');
  std::istringstream in("a\n\n" + longer_than_a_chunk + "\nlast");
  std::string line;
  std::vector<std::string> lines;
  for (auto more = ReadLine(in, &line); more.ok() && *more; more = ReadLine(in, &line))
    lines.push_back(line);
  EXPECT_EQ(lines, (std::vector<std::string>{"a", "", longer_than_a_chunk, "last"}));

  std::istringstream bounded("short\n" + std::string(100, 'y') + "\n");
  ASSERT_TRUE(*ReadLine(bounded, &line, 50));
  EXPECT_EQ(line, "short");
  auto too_long = ReadLine(bounded, &line, 50);
  ASSERT_FALSE(too_long.ok());
  EXPECT_EQ(too_long.status().message(), "a line is longer than 50 bytes");
}

TEST_F(IoTest, JsonlRoundTripKeepsValuesAndTypes) {
  Write("in.jsonl",
        "{\"id\": 1, \"text\": \"a \\\"quoted\\\" line\", \"ok\": true, \"tags\": [1, 2]}\n"
        "\n"
        "{\"id\": 2.5, \"text\": \"\\u00e9t\\u00e9\", \"ok\": false, \"tags\": {\"k\": \"v\"}}\n");
  Status s =
      Run("node { name: \"r\" op: \"io.JsonlSource\" attr: \"path=in.jsonl batch_size=1\" }\n"
          "node { name: \"w\" op: \"io.JsonlSink\" input: \"r\" attr: \"path=sub/out.jsonl\" }\n");
  ASSERT_TRUE(s.ok()) << s.ToString();
  EXPECT_EQ(
      Read("sub/out.jsonl"),
      "{\"id\":1,\"ok\":1,\"tags\":\"[1,2]\",\"text\":\"a \\\"quoted\\\" line\"}\n"
      "{\"id\":2.5,\"ok\":0,\"tags\":\"{\\\"k\\\":\\\"v\\\"}\",\"text\":\"\xc3\xa9t\xc3\xa9\"}\n");
  EXPECT_EQ(metrics_.Values("w", "rows_written"), (std::vector<double>{2}));
}

TEST_F(IoTest, JsonlErrorsNameTheFileAndLine) {
  Write("in.jsonl", "{\"a\": \"x\"}\n{\"a\": \"y\"}\n{\"a\": \n");
  Status s =
      Run("node { name: \"r\" op: \"io.JsonlSource\" attr: \"path=in.jsonl\" }\n"
          "node { name: \"w\" op: \"io.JsonlSink\" input: \"r\" attr: \"path=out.jsonl\" }\n");
  ASSERT_FALSE(s.ok());
  std::string file = (dir_ / "in.jsonl").string();
  EXPECT_EQ(s.ToString(), file +
                              ":3: node 'r' (op 'io.JsonlSource'): not a JSON object: Unexpected "
                              "end of string. Expected a value.");
  // The failed run wrote no output file.
  EXPECT_FALSE(fs::exists(dir_ / "out" / "out.jsonl"));

  Write("in.jsonl", "{\"a\": \"x\"}\n{\"a\": 3}\n");
  s =
      Run("node { name: \"r\" op: \"io.JsonlSource\" attr: \"path=in.jsonl\" }\n"
          "node { name: \"w\" op: \"io.JsonlSink\" input: \"r\" attr: \"path=out.jsonl\" }\n");
  EXPECT_EQ(s.ToString(),
            file + ":2: node 'r' (op 'io.JsonlSource'): field 'a' changes type (was strings)");

  Write("in.jsonl", "{\"a\": \"x\", \"b\": 1}\n{\"a\": \"y\"}\n");
  s =
      Run("node { name: \"r\" op: \"io.JsonlSource\" attr: \"path=in.jsonl\" }\n"
          "node { name: \"w\" op: \"io.JsonlSink\" input: \"r\" attr: \"path=out.jsonl\" }\n");
  EXPECT_EQ(s.ToString(), file + ":2: node 'r' (op 'io.JsonlSource'): record has no field 'b'");
}

TEST_F(IoTest, JsonlFolderFieldsAndLimit) {
  Write("data/b.jsonl", "{\"n\": 3, \"s\": \"c\"}\n{\"n\": 4, \"s\": \"d\"}\n");
  Write("data/a.jsonl", "{\"n\": 1, \"s\": \"a\"}\n{\"n\": 2, \"s\": \"b\"}\n");
  Write("data/skip.txt", "not read\n");
  Status s =
      Run("node { name: \"r\" op: \"io.JsonlSource\" attr: \"path=data fields=[s] limit=3\" }\n"
          "node { name: \"w\" op: \"io.JsonlSink\" input: \"r\" attr: \"path=out.jsonl\" }\n");
  ASSERT_TRUE(s.ok()) << s.ToString();
  EXPECT_EQ(Read("out.jsonl"), "{\"s\":\"a\"}\n{\"s\":\"b\"}\n{\"s\":\"c\"}\n");
}

TEST_F(IoTest, TextSourceLinesAndFiles) {
  Write("t/one.txt", "first\n\n  \nsecond\n");
  Write("t/two.md", "third");
  Status s = Run(
      "node { name: \"lines\" op: \"io.TextSource\" attr: \"path=t suffix=.txt\" }\n"
      "node { name: \"w1\" op: \"io.JsonlSink\" input: \"lines\" attr: \"path=lines.jsonl "
      "columns=[text]\" }\n"
      "node { name: \"files\" op: \"io.TextSource\" attr: \"path=t mode=files column=doc "
      "skip_empty=false\" }\n"
      "node { name: \"w2\" op: \"io.JsonlSink\" input: \"files\" attr: \"path=files.jsonl\" }\n");
  ASSERT_TRUE(s.ok()) << s.ToString();
  EXPECT_EQ(Read("lines.jsonl"), "{\"text\":\"first\"}\n{\"text\":\"second\"}\n");
  std::string t = (dir_ / "t").string();
  EXPECT_EQ(Read("files.jsonl"), "{\"doc\":\"first\\n\\n  \\nsecond\\n\",\"source\":\"" + t +
                                     "/one.txt\"}\n{\"doc\":\"third\",\"source\":\"" + t +
                                     "/two.md\"}\n");
}

// Shards are disjoint and together hold every row, by file and by row, for both sources.
TEST_F(IoTest, ShardsSplitTheInputExactly) {
  std::string all_lines;
  for (int f = 0; f < 5; ++f) {
    std::string content;
    for (int r = 0; r < 3; ++r) content += "{\"n\": " + std::to_string(f * 3 + r) + "}\n";
    Write("data/f" + std::to_string(f) + ".jsonl", content);
    all_lines += content;
  }
  Write("one.jsonl", all_lines);
  std::string graph;
  struct Case {
    std::string op, path, by;
    int shards;
  };
  std::vector<Case> cases = {{"io.JsonlSource", "data", "file", 2},
                             {"io.JsonlSource", "one.jsonl", "row", 3},
                             {"io.TextSource", "one.jsonl", "row", 4}};
  for (size_t c = 0; c < cases.size(); ++c) {
    for (int k = 0; k < cases[c].shards; ++k) {
      std::string name = "c" + std::to_string(c) + "s" + std::to_string(k);
      graph += "node { name: \"" + name + "\" op: \"" + cases[c].op +
               "\" attr: \"path=" + cases[c].path + " shards=" + std::to_string(cases[c].shards) +
               " shard=" + std::to_string(k) + " shard_by=" + cases[c].by + "\" }\n";
      graph += "node { name: \"w" + name + "\" op: \"io.JsonlSink\" input: \"" + name +
               "\" attr: \"path=" + name + ".jsonl\" }\n";
    }
  }
  Status s = Run(graph);
  ASSERT_TRUE(s.ok()) << s.ToString();
  for (size_t c = 0; c < cases.size(); ++c) {
    std::multiset<std::string> rows;
    std::vector<size_t> sizes;
    for (int k = 0; k < cases[c].shards; ++k) {
      std::istringstream in(Read("c" + std::to_string(c) + "s" + std::to_string(k) + ".jsonl"));
      size_t n = 0;
      for (std::string line; std::getline(in, line); ++n) {
        // TextSource rows carry their text (the JSON line) and source; keep the text.
        rows.insert(line.substr(0, line.find(",\"source\"")));
      }
      sizes.push_back(n);
    }
    EXPECT_EQ(rows.size(), 15u) << cases[c].op << " by " << cases[c].by;
    EXPECT_EQ(std::set<std::string>(rows.begin(), rows.end()).size(), 15u)
        << "a row went to two shards";
    if (cases[c].by == "file") {
      EXPECT_EQ(sizes, (std::vector<size_t>{9, 6}));  // files 0, 2, 4 and 1, 3
    }
    if (cases[c].shards == 3) {
      EXPECT_EQ(sizes, (std::vector<size_t>{5, 5, 5}));
    }
  }
  Status bad =
      Run("node { name: \"r\" op: \"io.JsonlSource\" attr: \"path=one.jsonl shards=2 "
          "shard=2\" }\n");
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.ToString().find("node 'r' (op 'io.JsonlSource'): shard 2 does not exist: shards "
                                "are 0..1"),
            std::string::npos)
      << bad.ToString();
}

TEST_F(IoTest, SampleDependsOnlyOnSeedAndPosition) {
  std::string rows;
  for (int i = 0; i < 1000; ++i) rows += "{\"i\": " + std::to_string(i) + "}\n";
  Write("in.jsonl", rows);
  auto run = [&](int batch, int seed, double rate) {
    Status s = Run(
        "node { name: \"r\" op: \"io.JsonlSource\" attr: \"path=in.jsonl batch_size=" +
        std::to_string(batch) + "\" }\n" +
        "node { name: \"s\" op: \"io.Sample\" input: \"r\" attr: \"rate=" + std::to_string(rate) +
        " seed=" + std::to_string(seed) + "\" }\n" +
        "node { name: \"w\" op: \"io.JsonlSink\" input: \"s\" attr: \"path=out.jsonl\" }\n");
    CHECK(s.ok()) << s.ToString();
    return Read("out.jsonl");
  };
  std::string a = run(7, 1, 0.3);
  EXPECT_EQ(run(100, 1, 0.3), a);  // batch size does not matter
  EXPECT_NE(run(7, 2, 0.3), a);    // the seed does
  size_t kept = std::count(a.begin(), a.end(), '\n');
  EXPECT_GT(kept, 240u);  // 300 expected; binomial sd ~14.5
  EXPECT_LT(kept, 360u);
  EXPECT_EQ(run(10, 1, 0.0), "");
  std::string all;
  for (int i = 0; i < 1000; ++i) all += "{\"i\":" + std::to_string(i) + "}\n";
  EXPECT_EQ(run(10, 1, 1.0), all);
}

TEST_F(IoTest, HeadKeepsExactlyTheFirstRows) {
  std::string rows;
  for (int i = 0; i < 50; ++i) rows += "{\"i\": " + std::to_string(i) + "}\n";
  Write("in.jsonl", rows);
  Status s =
      Run("node { name: \"r\" op: \"io.JsonlSource\" attr: \"path=in.jsonl batch_size=8\" }\n"
          "node { name: \"h\" op: \"io.Head\" input: \"r\" attr: \"n=13\" }\n"
          "node { name: \"w\" op: \"io.JsonlSink\" input: \"h\" attr: \"path=out.jsonl\" }\n");
  ASSERT_TRUE(s.ok()) << s.ToString();
  std::string expected;
  for (int i = 0; i < 13; ++i) expected += "{\"i\":" + std::to_string(i) + "}\n";
  EXPECT_EQ(Read("out.jsonl"), expected);
}

}  // namespace
}  // namespace weir::testing
