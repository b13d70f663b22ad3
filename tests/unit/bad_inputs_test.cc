// The bad-input corpus (tests/bad_inputs/README.md): every broken graph, safetensors file,
// checkpoint, token shard, tokenizer and JSONL file must fail with exactly the error it expects:
// a graph's "# expect:" lines, anything else's NAME.expect beside it. Paths in the messages are
// written relative to tests/bad_inputs/ (and tests/graphs/ for the graphs that read the files).
// WEIR_UPDATE_BAD_INPUTS=1 writes the .expect files from the errors seen, for review.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>

#include "bpe.h"
#include "test_util.h"
#include "weir/safetensors.h"

namespace weir::testing {
namespace {

namespace fs = std::filesystem;

const fs::path kCorpus = fs::path(WEIR_SOURCE_DIR) / "tests" / "bad_inputs";

std::string Relative(std::string text) {
  text = StripGraphDir(text);
  for (const std::string& prefix : {kCorpus.string() + "/", std::string(WEIR_SOURCE_DIR) + "/"}) {
    for (size_t at = text.find(prefix); at != std::string::npos; at = text.find(prefix))
      text.erase(at, prefix.size());
  }
  return text;
}

// The error loading or reading `input` gives, by the kind its folder names; OK if none.
Status Load(const fs::path& input) {
  std::string kind = input.parent_path().filename().string();
  fs::path out = fs::path(::testing::TempDir()) / ("bad_input_" + input.stem().string());
  if (kind == "graphs") return LoadTestGraph(input.string()).status();
  if (kind == "safetensors") {
    WEIR_ASSIGN_OR_RETURN(auto file, SafetensorsFile::Open(input));
    for (const std::string& name : file->names()) WEIR_RETURN_IF_ERROR(file->Get(name).status());
    return Status();
  }
  if (kind == "checkpoints") {
    return RunGraphFile(TestGraph("good/train_tiny.pbtxt"), out, {"steps=4"}, input).status;
  }
  if (kind == "tokenizers") return tokenizer::Tokenizer::Load(input).status();
  if (kind == "shards") {
    return RunGraphFile(TestGraph("good/read_shards.pbtxt"), out, {"path=" + input.string()})
        .status;
  }
  if (kind == "jsonl") {
    return RunGraphFile(TestGraph("good/read_jsonl.pbtxt"), out, {"path=" + input.string()}).status;
  }
  return InvalidArgument("no loader for the folder " + kind);
}

std::string Expected(const fs::path& input) {
  std::string want;
  if (input.extension() == ".pbtxt") {
    std::ifstream in(input);
    const std::string marker = "# expect: ";
    for (std::string line; std::getline(in, line);)
      if (line.rfind(marker, 0) == 0)
        want += (want.empty() ? "" : "\n") + line.substr(marker.size());
    return want;
  }
  std::ifstream in(fs::path(input).replace_extension(".expect"));
  std::stringstream text;
  text << in.rdbuf();
  want = text.str();
  while (!want.empty() && want.back() == '\n') want.pop_back();
  return want;
}

std::vector<fs::path> Inputs() {
  std::vector<fs::path> inputs;
  for (const auto& kind : fs::directory_iterator(kCorpus)) {
    if (!kind.is_directory()) continue;
    for (const auto& e : fs::directory_iterator(kind.path()))
      if (e.path().extension() != ".expect") inputs.push_back(e.path());
  }
  std::sort(inputs.begin(), inputs.end());
  return inputs;
}

class BadInputTest : public ::testing::TestWithParam<fs::path> {};

TEST_P(BadInputTest, FailsWithTheExpectedError) {
  const fs::path& input = GetParam();
  Status status = Load(input);
  ASSERT_FALSE(status.ok()) << input << " loaded without error";
  std::string got = Relative(status.ToString());
  if (std::getenv("WEIR_UPDATE_BAD_INPUTS") != nullptr && input.extension() != ".pbtxt") {
    std::ofstream(fs::path(input).replace_extension(".expect")) << got << "\n";
    return;
  }
  std::string want = Expected(input);
  ASSERT_FALSE(want.empty()) << input << " has no expected error";
  EXPECT_EQ(got, want);
}

INSTANTIATE_TEST_SUITE_P(Corpus, BadInputTest, ::testing::ValuesIn(Inputs()), [](const auto& info) {
  std::string name =
      info.param.parent_path().filename().string() + "_" + info.param.stem().string();
  for (char& c : name)
    if (!std::isalnum(static_cast<unsigned char>(c))) c = '_';
  return name;
});

TEST(BadInputCorpus, HasAtLeastFiftyCasesOfEveryKind) {
  std::map<std::string, int> kinds;
  for (const fs::path& input : Inputs()) ++kinds[input.parent_path().filename().string()];
  int total = 0;
  for (const char* kind :
       {"graphs", "safetensors", "checkpoints", "tokenizers", "shards", "jsonl"}) {
    EXPECT_GE(kinds[kind], 3) << kind;
    total += kinds[kind];
  }
  EXPECT_GE(total, 50);
}

}  // namespace
}  // namespace weir::testing
