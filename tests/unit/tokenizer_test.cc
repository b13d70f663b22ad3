// The tokenizer plugin through graphs: a hand-written tokenizer.json in both merge formats
// encodes to known ids, special tokens, and decode(encode(x)) == x on random bytes and mixed
// Unicode.
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>

#include "bpe.h"  // plugins/tokenizer, compiled into this test for byte-level checks
#include "test_util.h"
#include "weir/json.h"

namespace weir::testing {
namespace {

namespace fs = std::filesystem;

// Bytes are ids 0..255; merges: h e -> 256, l l -> 257, he ll -> 258, hell o -> 259,
// Ġ w -> 260 (Ġ is the space); <|end|> is special token 300.
std::string TinyTokenizerJson(bool pair_merges) {
  std::string vocab;
  for (int b = 0; b < 256; ++b) vocab += JsonQuote(ByteChar(b)) + ": " + std::to_string(b) + ", ";
  std::string sp = ByteChar(' ');
  vocab +=
      "\"he\": 256, \"ll\": 257, \"hell\": 258, \"hello\": 259, " + JsonQuote(sp + "w") + ": 260";
  std::vector<std::pair<std::string, std::string>> merges = {
      {"h", "e"}, {"l", "l"}, {"he", "ll"}, {"hell", "o"}, {sp, "w"}};
  std::string list;
  for (const auto& [a, b] : merges) {
    list += list.empty() ? "" : ", ";
    list += pair_merges ? "[" + JsonQuote(a) + ", " + JsonQuote(b) + "]" : JsonQuote(a + " " + b);
  }
  return "{\"version\": \"1.0\", \"added_tokens\": [{\"id\": 300, \"content\": \"<|end|>\", "
         "\"special\": true}], \"pre_tokenizer\": {\"type\": \"ByteLevel\", \"add_prefix_space\": "
         "false, \"use_regex\": true}, \"model\": {\"type\": \"BPE\", \"vocab\": {" +
         vocab + "}, \"merges\": [" + list + "]}}";
}

struct Encoded {
  std::vector<std::vector<int64_t>> ids;
  std::vector<std::string> decoded;
};

// Runs texts -> tokenizer.Encode -> tokenizer.Decode -> JSONL with the given tokenizer file.
Encoded RunTokenizer(const std::string& tokenizer_json, const std::vector<std::string>& texts) {
  static int counter = 0;
  fs::path dir = fs::path(::testing::TempDir()) /
                 ("tok_" + std::to_string(::getpid()) + "_" + std::to_string(counter++));
  fs::create_directories(dir);
  std::ofstream(dir / "tokenizer.json") << tokenizer_json;
  {
    std::ofstream docs(dir / "docs.jsonl");
    for (const std::string& t : texts) docs << "{\"text\": " << JsonQuote(t) << "}\n";
    std::ofstream(dir / "g.pbtxt")
        << "resource { name: \"tok\" kind: \"tokenizer\" attr: \"file=tokenizer.json\" }\n"
           "node { name: \"read\" op: \"io.JsonlSource\" attr: \"path=docs.jsonl\" }\n"
           "node { name: \"enc\" op: \"tokenizer.Encode\" input: \"read\" attr: \"tokenizer=tok\" "
           "}\n"
           "node { name: \"dec\" op: \"tokenizer.Decode\" input: \"enc\" attr: \"tokenizer=tok "
           "text_column=decoded\" }\n"
           "node { name: \"write\" op: \"io.JsonlSink\" input: \"dec\" attr: \"path=out.jsonl "
           "columns=[ids, decoded]\" }\n";
  }
  RunResult r = RunGraphFile(dir / "g.pbtxt", dir / "out");
  CHECK(r.status.ok()) << r.status.ToString();
  Encoded out;
  std::ifstream in(dir / "out" / "out.jsonl");
  for (std::string line; std::getline(in, line);) {
    auto row = ParseJsonObject(line);
    CHECK(row.ok()) << line;
    std::vector<int64_t> ids;
    for (const auto& v : row->fields().at("ids").list_value().values())
      ids.push_back(static_cast<int64_t>(v.number_value()));
    out.ids.push_back(ids);
    out.decoded.push_back(row->fields().at("decoded").string_value());
  }
  return out;
}

TEST(Tokenizer, HandWrittenTokenizerJsonEncodesToKnownIds) {
  for (bool pairs : {false, true}) {
    SCOPED_TRACE(pairs ? "merges as pairs" : "merges as strings");
    Encoded e = RunTokenizer(TinyTokenizerJson(pairs), {"hello hello world", "hello<|end|>hi"});
    ASSERT_EQ(e.ids.size(), 2u);
    // "hello" | " hello" | " world": the space does not merge with h; " w" does.
    EXPECT_EQ(e.ids[0], (std::vector<int64_t>{259, 32, 259, 260, 111, 114, 108, 100}));
    EXPECT_EQ(e.ids[1], (std::vector<int64_t>{259, 300, 104, 105}));
    EXPECT_EQ(e.decoded[0], "hello hello world");
    EXPECT_EQ(e.decoded[1], "hello<|end|>hi");
  }
}

TEST(Tokenizer, DecodeOfEncodeIsTheIdentity) {
  std::mt19937_64 rng(5);
  std::vector<std::string> texts = {
      "Mixed Unicode: naïve café, Ελληνικά, русский, 中文字符, 日本語のテキスト, 한국어, "
      "emoji 🤖🚀, numbers 1234567 and 3.14159!",
      "  leading spaces,\ttabs\nand\r\nnewlines  \n\n",
  };
  for (int n = 0; n < 20; ++n) {  // printable ASCII and 2-byte UTF-8, which JSON carries
    std::string s;
    for (int k = 0; k < 200; ++k) {
      if (rng() % 4 == 0) {
        s += ByteChar(161 + static_cast<int>(rng() % 90));
      } else {
        s.push_back(static_cast<char>(32 + rng() % 95));
      }
    }
    texts.push_back(s);
  }
  Encoded e = RunTokenizer(TinyTokenizerJson(false), texts);
  ASSERT_EQ(e.decoded.size(), texts.size());
  for (size_t i = 0; i < texts.size(); ++i) EXPECT_EQ(e.decoded[i], texts[i]) << i;
}

// Trains on `texts` with tokenizer.Train; returns the tokenizer.json text.
std::string TrainTokenizer(const std::vector<std::string>& texts, const std::string& attrs,
                           const fs::path& dir) {
  fs::create_directories(dir);
  {
    std::ofstream docs(dir / "docs.jsonl");
    for (const std::string& t : texts) docs << "{\"text\": " << JsonQuote(t) << "}\n";
    std::ofstream(dir / "train.pbtxt")
        << "node { name: \"read\" op: \"io.JsonlSource\" attr: \"path=docs.jsonl\" }\n"
           "node { name: \"train\" op: \"tokenizer.Train\" input: \"read\" attr: \""
        << attrs << "\" }\n";
  }
  RunResult r = RunGraphFile(dir / "train.pbtxt", dir / "out");
  CHECK(r.status.ok()) << r.status.ToString();
  std::ifstream in(dir / "out" / "tokenizer.json");
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

TEST(Tokenizer, TrainingMergesTheMostFrequentPairFirst) {
  fs::path dir = fs::path(::testing::TempDir()) / ("tok_train_" + std::to_string(::getpid()));
  std::string json = TrainTokenizer({"abab abab abab cd", "abab cd 12345"},
                                    "vocab_size=260 specials=['<|eos|>']", dir);
  auto parsed = ParseJsonObject(json);
  ASSERT_TRUE(parsed.ok()) << json.substr(0, 200);
  const auto& model = parsed->fields().at("model").struct_value().fields();
  const auto& merges = model.at("merges").list_value().values();
  ASSERT_EQ(merges.size(), 3u);  // 256 bytes + 3 merges + 1 special = 260
  // a·b occurs 8 times; then ab·ab 4 times; then space·ab 3 times (" abab" pieces).
  EXPECT_EQ(merges[0].list_value().values()[0].string_value(), "a");
  EXPECT_EQ(merges[0].list_value().values()[1].string_value(), "b");
  EXPECT_EQ(merges[1].list_value().values()[0].string_value(), "ab");
  EXPECT_EQ(merges[1].list_value().values()[1].string_value(), "ab");
  const auto& added = parsed->fields().at("added_tokens").list_value().values();
  ASSERT_EQ(added.size(), 1u);
  EXPECT_EQ(added[0].struct_value().fields().at("id").number_value(), 259);
}

TEST(Tokenizer, ATrainedTokenizerReloadsAndRoundTrips) {
  std::ifstream stories(std::string(WEIR_SOURCE_DIR) + "/graphs/data/tiny/stories.txt");
  std::vector<std::string> texts;
  size_t bytes = 0;
  for (std::string line; std::getline(stories, line);) {
    texts.push_back(line);
    bytes += line.size();
  }
  fs::path dir = fs::path(::testing::TempDir()) / ("tok_stories_" + std::to_string(::getpid()));
  std::string attrs = "vocab_size=400 specials=['<|eos|>']";
  std::string json = TrainTokenizer(texts, attrs, dir / "a");
  EXPECT_EQ(TrainTokenizer(texts, attrs, dir / "b"), json) << "training is not deterministic";
  texts.push_back("Unseen text: 123456 中文 and <|eos|> too.");
  Encoded e = RunTokenizer(json, texts);
  ASSERT_EQ(e.ids.size(), texts.size());
  size_t tokens = 0;
  for (size_t i = 0; i < texts.size(); ++i) {
    EXPECT_EQ(e.decoded[i], texts[i]);
    for (int64_t id : e.ids[i]) EXPECT_LT(id, 400);
    if (i + 1 < texts.size()) tokens += e.ids[i].size();
  }
  // The special token written in the unseen text became its id.
  const std::vector<int64_t>& last = e.ids.back();
  EXPECT_NE(std::find(last.begin(), last.end(), 399), last.end());
  LOG(INFO) << "trained tokenizer: " << tokens << " tokens for " << bytes << " bytes";
  EXPECT_LT(static_cast<double>(tokens), 0.5 * static_cast<double>(bytes));
}

// Arbitrary bytes (invalid UTF-8 included), through the library: JSON cannot carry them.
TEST(Tokenizer, RandomBytesRoundTrip) {
  fs::path file = fs::path(::testing::TempDir()) / ("tok_bytes_" + std::to_string(::getpid()));
  std::ofstream(file) << TinyTokenizerJson(true);
  auto t = tokenizer::Tokenizer::Load(file);
  ASSERT_TRUE(t.ok()) << t.status().ToString();
  std::mt19937_64 rng(9);
  for (int n = 0; n < 200; ++n) {
    std::string s;
    for (int k = 0; k < 1 + n; ++k) s.push_back(static_cast<char>(rng() & 0xff));
    std::vector<int64_t> ids = (*t)->Encode(s);
    auto back = (*t)->Decode(ids);
    ASSERT_TRUE(back.ok());
    ASSERT_EQ(*back, s) << "length " << s.size();
  }
  auto bad = (*t)->Decode({5, 999});
  EXPECT_EQ(bad.status().message(), "token id 999 is outside the vocabulary [0, 301)");
}

TEST(Tokenizer, BadFilesAreNamed) {
  fs::path file = fs::path(::testing::TempDir()) / ("tok_bad_" + std::to_string(::getpid()));
  std::ofstream(file) << "{\"model\": {\"type\": \"Unigram\"}}";
  auto t = tokenizer::Tokenizer::Load(file);
  ASSERT_FALSE(t.ok());
  EXPECT_EQ(t.status().message(),
            "tokenizer " + file.string() + ": only BPE models are supported (model.type)");
  std::ofstream(file, std::ios::trunc) << "QQ== zero\n";
  t = tokenizer::Tokenizer::Load(file);
  ASSERT_FALSE(t.ok());
  EXPECT_EQ(t.status().message(), "tokenizer " + file.string() + ": line 1: 'zero' is not a rank");
  std::ofstream(file, std::ios::trunc)
      << "{\"added_tokens\": [{\"id\": -3, \"content\": \"<x>\"}], \"model\": {\"type\": \"BPE\", "
         "\"vocab\": {}}}";
  t = tokenizer::Tokenizer::Load(file);
  ASSERT_FALSE(t.ok());
  EXPECT_EQ(t.status().message(),
            "tokenizer " + file.string() + ": added token '<x>': token id -3 is out of range");
  std::ofstream(file, std::ios::trunc) << "QQ== 0\n";  // one byte only: the others are missing
  t = tokenizer::Tokenizer::Load(file);
  ASSERT_FALSE(t.ok());
  EXPECT_NE(t.status().message().find("lacks the single byte 0"), std::string::npos)
      << t.status().message();
}

// Files the fuzzers (tests/fuzz) found: each is a clean error, never a crash, undefined behaviour,
// a giant allocation or a tokenizer that decodes its own encoding to other text.
TEST(Tokenizer, HostileFilesAreRefused) {
  fs::path file = fs::path(::testing::TempDir()) / ("tok_hostile_" + std::to_string(::getpid()));
  std::string bpe = "\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0}}";
  for (auto [text, error] : std::vector<std::pair<std::string, std::string>>{
           // A rank sized a table of 2^31 strings.
           {"QQ== 2000000000\n",
            "line 1: token id 2000000000 is out of range: the file holds 2 "
            "tokens"},
           // One id, two tokens: "A" encoded to 0 and decoded as "B".
           {"QQ== 0\nQg== 0\n", "line 2: token id 0 is given to two different tokens"},
           {"{" + bpe + ", \"added_tokens\": [{\"id\": 0, \"content\": \"<s>\"}]}",
            "added token '<s>': token id 0 is given to two different tokens"},
           // Converting these to an integer was undefined.
           {"{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 1e300}}}",
            "vocabulary token 'a': token id 1e+300 is not an integer"},
           {"{" + bpe + ", \"added_tokens\": [{\"id\": 0.5, \"content\": \"<s>\"}]}",
            "token id 0.5 is not an integer"},
           // Missing fields threw out of the loader.
           {"{" + bpe + ", \"added_tokens\": [{\"id\": 1}]}", "needs a content and an id"},
           {"{" + bpe + ", \"pre_tokenizer\": {\"type\": \"Split\"}}",
            "only Regex Split patterns are supported"},
           {"{" + bpe + ", \"pre_tokenizer\": {\"type\": \"Sequence\"}}",
            "a Sequence pre-tokenizer needs pretokenizers"}}) {
    std::ofstream(file, std::ios::trunc) << text;
    auto t = tokenizer::Tokenizer::Load(file);
    ASSERT_FALSE(t.ok()) << text;
    EXPECT_NE(t.status().message().find(error), std::string::npos) << t.status().message();
  }
}

TEST(TokenizerLimits, AFileTooLargeToBeATokenizerIsRefusedUnread) {
  std::filesystem::path big = std::filesystem::path(::testing::TempDir()) / "huge_tokenizer.json";
  std::ofstream(big) << "{";
  std::filesystem::resize_file(big, (512 << 20) + 1);  // sparse: no disk is used
  auto t = tokenizer::Tokenizer::Load(big);
  ASSERT_FALSE(t.ok());
  EXPECT_EQ(t.status().message(), "tokenizer " + big.string() +
                                      " is 536870913 bytes; a tokenizer file is at most "
                                      "536870912 bytes");
}

}  // namespace
}  // namespace weir::testing
