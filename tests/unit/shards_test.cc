// Token shards: documents packed with EOS round-trip through data.PackTokens and
// data.TokenShards, every record is read once per epoch in a seeded order, and a resumed reader
// continues exactly.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <set>
#include <tuple>

#include "test_util.h"
#include "weir/json.h"

namespace weir::testing {
namespace {

namespace fs = std::filesystem;

constexpr int kEos = 256;

// A tiktoken rank file of the 256 single bytes: a token's id is its byte.
void WriteByteRanks(const fs::path& file) {
  const char* b64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  std::ofstream out(file);
  for (int b = 0; b < 256; ++b) out << b64[b >> 2] << b64[(b & 3) << 4] << "== " << b << "\n";
}

// Document i: letter 'a' + i % 26 repeated 3 + i % 7 times, then its number.
std::string Doc(int i) {
  return std::string(static_cast<size_t>(3 + i % 7), static_cast<char>('a' + i % 26)) +
         std::to_string(i);
}

class ShardsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::path(::testing::TempDir()) /
           ("shards_" + std::to_string(::getpid()) + "_" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
    WriteByteRanks(dir_ / "bytes.tiktoken");
    std::ofstream docs(dir_ / "docs.jsonl");
    for (int i = 0; i < 60; ++i) docs << "{\"text\": \"" << Doc(i) << "\"}\n";
  }

  Status Run(const std::string& graph, const std::string& out, const fs::path& resume = {}) {
    std::ofstream(dir_ / "g.pbtxt") << graph;
    return RunGraphFile(dir_ / "g.pbtxt", dir_ / out, {}, resume).status;
  }

  Status Pack() {
    return Run(
        "resource { name: \"tok\" kind: \"tokenizer\" attr: \"file=bytes.tiktoken\" }\n"
        "node { name: \"read\" op: \"io.JsonlSource\" attr: \"path=docs.jsonl batch_size=7\" }\n"
        "node { name: \"enc\" op: \"tokenizer.Encode\" input: \"read\" attr: \"tokenizer=tok\" }\n"
        "node { name: \"pack\" op: \"data.PackTokens\" input: \"enc\" attr: \"seq_len=7 eos=256 "
        "vocab_size=257 records_per_shard=3 val_fraction=0.3 seed=1 dir=" +
            (dir_ / "shards").string() + "\" }\n",
        "pack");
  }

  // The records a reader graph emits, each tokens + the last target: seq_len + 1 tokens.
  std::vector<std::vector<int64_t>> Read(const std::string& attrs, const std::string& out,
                                         const fs::path& resume = {}) {
    Status s = Run("node { name: \"r\" op: \"data.TokenShards\" attr: \"path=shards batch_size=1 " +
                       attrs +
                       "\" }\nnode { name: \"w\" op: \"io.JsonlSink\" input: \"r\" "
                       "attr: \"path=rows.jsonl\" }\n",
                   out, resume);
    EXPECT_TRUE(s.ok()) << s.ToString();
    std::vector<std::vector<int64_t>> records;
    std::ifstream in(dir_ / out / "rows.jsonl");
    for (std::string line; std::getline(in, line);) {
      auto row = ParseJsonObject(line);
      CHECK(row.ok()) << line;
      std::vector<int64_t> r;
      for (const auto& v : row->fields().at("tokens").list_value().values())
        r.push_back(static_cast<int64_t>(v.number_value()));
      r.push_back(static_cast<int64_t>(
          row->fields().at("targets").list_value().values().rbegin()->number_value()));
      records.push_back(r);
    }
    return records;
  }

  fs::path dir_;
};

// The documents of a token stream (split at EOS); the last one may be cut short.
std::vector<std::string> Documents(const std::vector<std::vector<int64_t>>& records) {
  std::vector<std::string> docs(1);
  for (const auto& r : records) {
    for (int64_t t : r) {
      if (t == kEos) {
        docs.emplace_back();
      } else {
        docs.back().push_back(static_cast<char>(t));
      }
    }
  }
  return docs;
}

TEST_F(ShardsTest, DocumentsRoundTripWithEosInOrder) {
  Status s = Pack();
  ASSERT_TRUE(s.ok()) << s.ToString();
  auto meta = ReadJsonFile(dir_ / "shards" / "shards.json");
  ASSERT_TRUE(meta.ok());
  const auto& train = meta->fields().at("train").struct_value().fields();
  const auto& val = meta->fields().at("val").struct_value().fields();
  EXPECT_EQ(train.at("documents").number_value() + val.at("documents").number_value(), 60);
  EXPECT_GT(val.at("documents").number_value(), 5);  // about 30 %
  EXPECT_TRUE(fs::exists(dir_ / "shards" / "train-00000.tok"));
  EXPECT_TRUE(fs::exists(dir_ / "shards" / "train-00001.tok"));  // 3 records per shard

  std::set<std::string> seen;
  int previous = -1;
  for (const char* split : {"train", "val"}) {
    auto records =
        Read(std::string("split=") + split + " shuffle=false epochs=1", std::string(split));
    EXPECT_EQ(static_cast<double>(records.size()),
              meta->fields().at(split).struct_value().fields().at("records").number_value());
    for (const auto& r : records) ASSERT_EQ(r.size(), 8u);
    std::vector<std::string> docs = Documents(records);
    docs.pop_back();  // after the last EOS: a document cut off by the last full record
    previous = -1;
    for (const std::string& d : docs) {
      size_t digits = d.find_first_of("0123456789");
      ASSERT_NE(digits, std::string::npos) << d;
      int i = std::stoi(d.substr(digits));
      EXPECT_EQ(d, Doc(i)) << "document " << i << " changed in " << split;
      EXPECT_GT(i, previous) << "documents out of order in " << split;
      previous = i;
      EXPECT_TRUE(seen.insert(d).second) << d << " is in both splits";
    }
  }
  EXPECT_GE(seen.size(), 56u);  // all but at most the cut-off tail of each split
}

TEST_F(ShardsTest, EveryRecordOncePerEpochInASeededOrder) {
  ASSERT_TRUE(Pack().ok());
  auto plain = Read("shuffle=false epochs=1", "plain");
  auto a = Read("seed=3 epochs=1", "a");
  auto b = Read("seed=3 epochs=1", "b");
  auto c = Read("seed=4 epochs=1", "c");
  EXPECT_EQ(a, b);
  EXPECT_NE(a, plain);
  EXPECT_NE(a, c);
  std::multiset<std::vector<int64_t>> want(plain.begin(), plain.end()), got(a.begin(), a.end());
  EXPECT_EQ(got, want);
  auto two = Read("seed=3 epochs=2", "two");
  ASSERT_EQ(two.size(), 2 * plain.size());
  EXPECT_EQ(std::vector<std::vector<int64_t>>(two.begin(), two.begin() + a.size()), a);
}

TEST_F(ShardsTest, AResumedReaderContinuesExactly) {
  ASSERT_TRUE(Pack().ok());
  auto whole = Read("seed=5 batches=10", "whole");
  fs::create_directories(dir_ / "ckpt");
  std::ofstream(dir_ / "ckpt" / "trainer_state.json") << "{\"step\": 4, \"data_position\": 4}";
  auto resumed = Read("seed=5 batches=10", "resumed", dir_ / "ckpt");
  ASSERT_EQ(whole.size(), 10u);
  ASSERT_EQ(resumed.size(), 6u);
  EXPECT_EQ(resumed, std::vector<std::vector<int64_t>>(whole.begin() + 4, whole.end()));
  // An evaluation reader (another split) starts over: it must not skip the trainer's batches.
  auto val = Read("split=val shuffle=false batches=3", "val");
  auto val_resumed = Read("split=val shuffle=false batches=3", "val_resumed", dir_ / "ckpt");
  ASSERT_EQ(val.size(), 3u);
  EXPECT_EQ(val_resumed, val);
}

// Headers the fuzzers (tests/fuzz) found: counts whose product wrapped around to the file's size
// let the reader run past the mapping, records of 0 tokens let any count through, and a record
// length past int64 (with no records) overflowed the sequence length.
TEST_F(ShardsTest, HostileHeadersAreRefused) {
  for (auto [record_tokens, records, error] :
       std::vector<std::tuple<uint64_t, uint64_t, std::string>>{
           {2, uint64_t{1} << 63, "records of 2 tokens, more than any file holds"},
           {0, uint64_t{1} << 40, "records of 0 tokens; a record holds 2 to 2147483648"},
           {uint64_t{1} << 63, 0,
            "records of 9223372036854775808 tokens; a record holds 2 to 2147483648"}}) {
    char header[64] = "WEIRTOKS";
    uint32_t version = 1, token_bytes = 2;
    std::memcpy(header + 8, &version, 4);
    std::memcpy(header + 12, &token_bytes, 4);
    std::memcpy(header + 16, &record_tokens, 8);
    std::memcpy(header + 24, &records, 8);
    fs::create_directories(dir_ / "hostile");
    std::ofstream(dir_ / "hostile" / "train-00000.tok", std::ios::binary)
        .write(header, sizeof(header));
    Status s =
        Run("node { name: \"r\" op: \"data.TokenShards\" attr: \"path=hostile\" }\n"
            "node { name: \"w\" op: \"io.JsonlSink\" input: \"r\" attr: \"path=rows.jsonl\" }\n",
            "hostile_" + std::to_string(record_tokens));
    ASSERT_FALSE(s.ok());
    EXPECT_NE(s.ToString().find(error), std::string::npos) << s.ToString();
  }
}

TEST_F(ShardsTest, ADamagedShardIsNamed) {
  ASSERT_TRUE(Pack().ok());
  fs::path shard = dir_ / "shards" / "train-00000.tok";
  fs::resize_file(shard, fs::file_size(shard) - 3);
  Status s =
      Run("node { name: \"r\" op: \"data.TokenShards\" attr: \"path=shards\" }\n"
          "node { name: \"w\" op: \"io.JsonlSink\" input: \"r\" attr: \"path=rows.jsonl\" }\n",
          "damaged");
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.ToString().find("token shard " + shard.string() + ": holds"), std::string::npos)
      << s.ToString();
  EXPECT_NE(s.ToString().find("(truncated?)"), std::string::npos) << s.ToString();
}

}  // namespace
}  // namespace weir::testing
