// graphs/data/dedup.pbtxt on a generated corpus with planted duplicates: precision and recall at
// the default settings, the output contract, a persistent index across runs, per-shard scope.
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <random>
#include <set>

#include "test_util.h"
#include "weir/json.h"

namespace weir::testing {
namespace {

namespace fs = std::filesystem;

struct Doc {
  int id;
  std::string text;
  int duplicate_of = -1;  // planted: the original's id
  std::string shard = "a";
};

// Originals of about 100 words from a 3000-word vocabulary, a third of them sharing a boilerplate
// header and footer (true non-duplicates with common text), then planted near duplicates: one or
// two words changed, two adjacent sentences swapped, whitespace and case changed, exact copies.
std::vector<Doc> Corpus(int originals, int planted, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<std::string> vocab;
  for (int w = 0; w < 3000; ++w) {
    std::string word;
    int len = 3 + static_cast<int>(rng() % 6);
    for (int c = 0; c < len; ++c) word.push_back(static_cast<char>('a' + rng() % 26));
    vocab.push_back(word);
  }
  auto sentence = [&] {
    std::string s;
    int len = 8 + static_cast<int>(rng() % 8);
    for (int k = 0; k < len; ++k) s += (k ? " " : "") + vocab[rng() % vocab.size()];
    return s + ".";
  };
  std::string header =
      "Welcome to our site where we share news and stories about the things "
      "that matter most to our readers every single day.";
  std::string footer =
      "All rights reserved. Subscribe to the newsletter for more articles and "
      "updates from our team.";
  std::vector<std::vector<std::string>> sentences;
  std::vector<Doc> docs;
  auto join = [](const std::vector<std::string>& parts) {
    std::string out;
    for (const std::string& p : parts) out += (out.empty() ? "" : " ") + p;
    return out;
  };
  for (int d = 0; d < originals; ++d) {
    std::vector<std::string> parts;
    for (int k = 0; k < 8; ++k) parts.push_back(sentence());
    if (d % 3 == 0) {
      parts.insert(parts.begin(), header);
      parts.push_back(footer);
    }
    sentences.push_back(parts);
    docs.push_back({d, join(parts)});
  }
  for (int p = 0; p < planted; ++p) {
    int of = static_cast<int>(rng() % static_cast<uint64_t>(originals));
    std::vector<std::string> parts = sentences[static_cast<size_t>(of)];
    std::string text;
    switch (p % 5) {
      case 0:
      case 1: {  // one or two words replaced
        text = join(parts);
        for (int e = 0; e <= p % 5; ++e) {
          size_t at = text.find(' ', rng() % text.size());
          if (at == std::string::npos) at = text.find(' ');
          size_t end = text.find(' ', at + 1);
          if (end == std::string::npos) end = text.size();
          text.replace(at + 1, end - at - 1, vocab[rng() % vocab.size()]);
        }
        break;
      }
      case 2: {  // two adjacent sentences swapped
        size_t k = rng() % (parts.size() - 1);
        std::swap(parts[k], parts[k + 1]);
        text = join(parts);
        break;
      }
      case 3:  // whitespace and case
        text = join(parts);
        for (char& c : text) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
        for (size_t at = text.find(". "); at != std::string::npos; at = text.find(". ", at + 3))
          text.replace(at, 2, ".\n\n ");
        break;
      default:  // exact copy
        text = join(parts);
    }
    docs.push_back({originals + p, text, of});
  }
  return docs;
}

std::string WriteCorpus(const std::vector<Doc>& docs, const std::string& name) {
  fs::path path =
      fs::path(::testing::TempDir()) / (name + "_" + std::to_string(::getpid()) + ".jsonl");
  std::ofstream out(path);
  for (const Doc& d : docs) {
    out << "{\"id\": " << d.id << ", \"text\": " << JsonQuote(d.text)
        << ", \"shard\": " << JsonQuote(d.shard) << "}\n";
  }
  return path.string();
}

std::string DedupGraph() { return std::string(WEIR_SOURCE_DIR) + "/graphs/data/dedup.pbtxt"; }

struct DedupRun {
  RunResult result;
  fs::path out;
  std::map<int, std::pair<std::string, int>> removed;  // id -> (reason, duplicate_of)
  std::set<int> kept;
  google::protobuf::Struct stats;
};

DedupRun RunDedup(const std::string& input, const std::string& name,
                  std::vector<std::string> extra = {}) {
  DedupRun run;
  run.out = fs::path(::testing::TempDir()) / ("dedup_" + name + "_" + std::to_string(::getpid()));
  fs::remove_all(run.out);
  std::vector<std::string> sets = {"input=" + input, "out=result"};
  sets.insert(sets.end(), extra.begin(), extra.end());
  run.result = RunGraphFile(DedupGraph(), run.out, sets);
  if (!run.result.status.ok()) return run;
  std::ifstream kept(run.out / "result" / "kept.jsonl");
  for (std::string line; std::getline(kept, line);) {
    auto row = ParseJsonObject(line);
    CHECK(row.ok()) << line;
    run.kept.insert(static_cast<int>(row->fields().at("id").number_value()));
    CHECK(!row->fields().count("reason")) << "kept rows are unchanged: " << line;
  }
  std::ifstream removed(run.out / "result" / "removed.jsonl");
  for (std::string line; std::getline(removed, line);) {
    auto row = ParseJsonObject(line);
    CHECK(row.ok()) << line;
    run.removed[static_cast<int>(row->fields().at("id").number_value())] = {
        row->fields().at("reason").string_value(),
        static_cast<int>(row->fields().at("duplicate_of").number_value())};
  }
  auto stats = ReadJsonFile(run.out / "result" / "stats.json");
  CHECK(stats.ok()) << stats.status().ToString();
  run.stats = *stats;
  return run;
}

TEST(Dedup, PlantedDuplicatesAreFoundAtTheDefaults) {
  std::vector<Doc> docs = Corpus(600, 300, 42);
  DedupRun run = RunDedup(WriteCorpus(docs, "planted"), "planted");
  ASSERT_TRUE(run.result.status.ok()) << run.result.status.ToString();
  ASSERT_EQ(run.kept.size() + run.removed.size(), docs.size());
  int true_positive = 0, planted = 0;
  for (const Doc& d : docs) {
    bool removed = run.removed.count(d.id) > 0;
    if (d.duplicate_of >= 0) ++planted;
    if (removed && d.duplicate_of >= 0) {
      ++true_positive;
      // The cluster's first document is the original (or, transitively, its first copy).
      int of = run.removed[d.id].second;
      EXPECT_TRUE(of == d.duplicate_of ||
                  docs[static_cast<size_t>(of)].duplicate_of == d.duplicate_of)
          << d.id << " marked a duplicate of " << of << ", planted from " << d.duplicate_of;
    }
  }
  double precision = static_cast<double>(true_positive) / static_cast<double>(run.removed.size());
  double recall = static_cast<double>(true_positive) / static_cast<double>(planted);
  LOG(INFO) << "dedup: " << run.removed.size() << " removed, precision " << precision << ", recall "
            << recall;
  EXPECT_GE(precision, 0.95);
  EXPECT_GE(recall, 0.9);
  for (const auto& [id, why] : run.removed) {
    EXPECT_TRUE(why.first == "exact" || why.first == "near") << why.first;
    EXPECT_TRUE(run.kept.count(why.second))
        << id << " points at " << why.second << ", which was not kept";
  }
  EXPECT_EQ(run.stats.fields().at("documents").number_value(), 900);
  EXPECT_EQ(run.stats.fields().at("kept").number_value(), static_cast<double>(run.kept.size()));
  EXPECT_GE(run.stats.fields().at("removed_exact").number_value(), 50);  // every 5th planted
  // The exported clusters hold every removed document once, under the id it duplicates.
  std::ifstream clusters(run.out / "result" / "clusters.jsonl");
  size_t listed = 0;
  for (std::string line; std::getline(clusters, line);) {
    auto c = ParseJsonObject(line);
    ASSERT_TRUE(c.ok()) << line;
    int kept = static_cast<int>(c->fields().at("kept").number_value());
    EXPECT_TRUE(run.kept.count(kept)) << line;
    for (const auto& v : c->fields().at("duplicates").list_value().values()) {
      int id = static_cast<int>(v.number_value());
      ASSERT_TRUE(run.removed.count(id)) << id << " in a cluster but not removed";
      ++listed;
    }
  }
  EXPECT_EQ(listed, run.removed.size());
}

TEST(Dedup, TheIndexCatchesDuplicatesArrivingInALaterRun) {
  std::vector<Doc> docs = Corpus(100, 0, 7);
  std::vector<Doc> first(docs.begin(), docs.begin() + 60), second(docs.begin() + 60, docs.end());
  Doc again = docs[5];  // an old document, slightly edited, in the new data
  again.id = 1000;
  again.text += " Updated.";
  second.push_back(again);
  DedupRun one = RunDedup(WriteCorpus(first, "first"), "first");
  ASSERT_TRUE(one.result.status.ok()) << one.result.status.ToString();
  EXPECT_TRUE(one.removed.empty());
  fs::path index = one.out / "result" / "index.bin";
  ASSERT_TRUE(fs::exists(index));
  DedupRun two =
      RunDedup(WriteCorpus(second, "second"), "second", {"load_index=" + index.string()});
  ASSERT_TRUE(two.result.status.ok()) << two.result.status.ToString();
  ASSERT_EQ(two.removed.size(), 1u);
  EXPECT_EQ(two.removed.begin()->first, 1000);
  EXPECT_EQ(two.removed.begin()->second.second, 5);
  EXPECT_EQ(two.stats.fields().at("indexed_before").number_value(), 60);
  // The same data without the index keeps everything.
  DedupRun fresh = RunDedup(WriteCorpus(second, "fresh"), "fresh");
  ASSERT_TRUE(fresh.result.status.ok());
  EXPECT_TRUE(fresh.removed.empty());
}

TEST(Dedup, PerShardScopeKeepsCopiesInOtherShards) {
  std::vector<Doc> docs = Corpus(20, 0, 9);
  Doc copy = docs[3];
  copy.id = 100;
  copy.shard = "b";
  docs.push_back(copy);
  std::string input = WriteCorpus(docs, "shards");
  DedupRun global = RunDedup(input, "global");
  ASSERT_TRUE(global.result.status.ok()) << global.result.status.ToString();
  EXPECT_EQ(global.removed.size(), 1u);
  DedupRun sharded = RunDedup(input, "sharded", {"shard_column=shard"});
  ASSERT_TRUE(sharded.result.status.ok()) << sharded.result.status.ToString();
  EXPECT_TRUE(sharded.removed.empty());
}

TEST(Dedup, AnIndexBuiltWithOtherSettingsIsRefused) {
  std::vector<Doc> docs = Corpus(10, 0, 3);
  DedupRun one = RunDedup(WriteCorpus(docs, "settings"), "settings");
  ASSERT_TRUE(one.result.status.ok());
  // Same graph, another band count: the node's attrs are fixed in the graph file, so damage the
  // index header instead (bands 14 -> 15).
  fs::path index = one.out / "result" / "index.bin";
  std::fstream f(index, std::ios::in | std::ios::out | std::ios::binary);
  f.seekp(8 + 4 + 4);  // magic, version, ngram
  int32_t bands = 15;
  f.write(reinterpret_cast<const char*>(&bands), 4);
  f.close();
  RunResult r =
      RunGraphFile(DedupGraph(),
                   fs::path(::testing::TempDir()) / ("dedup_refused_" + std::to_string(::getpid())),
                   {"input=" + WriteCorpus(docs, "settings2"), "load_index=" + index.string()});
  ASSERT_FALSE(r.status.ok());
  EXPECT_NE(r.status.ToString().find("built with ngram=5 bands=15 rows=8 seed=1; this node uses "
                                     "ngram=5 bands=14 rows=8 seed=1"),
            std::string::npos)
      << r.status.ToString();
}

}  // namespace
}  // namespace weir::testing
