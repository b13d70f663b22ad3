// Every file in tests/graphs/bad/ must fail to load with exactly the errors its "# expect:" lines
// state (file:line:col, node, op and message), in order.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "test_util.h"

namespace weir::testing {
namespace {

std::vector<std::string> Expected(const std::filesystem::path& file) {
  std::ifstream in(file);
  std::vector<std::string> out;
  const std::string marker = "# expect: ";
  for (std::string line; std::getline(in, line);)
    if (line.rfind(marker, 0) == 0) out.push_back(line.substr(marker.size()));
  return out;
}

std::vector<std::filesystem::path> BadGraphs() {
  std::vector<std::filesystem::path> files;
  for (const auto& e : std::filesystem::directory_iterator(TestGraph("bad")))
    if (e.path().extension() == ".pbtxt") files.push_back(e.path());
  std::sort(files.begin(), files.end());
  return files;
}

class BadGraphTest : public ::testing::TestWithParam<std::filesystem::path> {};

TEST_P(BadGraphTest, FailsWithTheExpectedErrors) {
  const std::filesystem::path& file = GetParam();
  std::vector<std::string> expected = Expected(file);
  ASSERT_FALSE(expected.empty()) << file << " has no '# expect:' line";
  auto graph = LoadTestGraph(file.string());
  ASSERT_FALSE(graph.ok()) << file << " loaded without error";
  std::string text = StripGraphDir(graph.status().ToString());
  std::string want;
  for (const std::string& line : expected) want += (want.empty() ? "" : "\n") + line;
  EXPECT_EQ(text, want);
}

INSTANTIATE_TEST_SUITE_P(Corpus, BadGraphTest, ::testing::ValuesIn(BadGraphs()),
                         [](const auto& info) {
                           std::string name = info.param.stem().string();
                           for (char& c : name)
                             if (!std::isalnum(static_cast<unsigned char>(c))) c = '_';
                           return name;
                         });

TEST(BadGraphCorpus, HasAtLeastTwentyCases) { EXPECT_GE(BadGraphs().size(), 20u); }

}  // namespace
}  // namespace weir::testing
