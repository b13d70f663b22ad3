#include "trainer.h"

#include <algorithm>
#include <map>
#include <queue>
#include <set>

#include "weir/atomic_file.h"
#include "weir/json.h"

namespace weir::tokenizer {
namespace {

using Pair = std::pair<int, int>;

struct PairHash {
  size_t operator()(const Pair& p) const {
    return std::hash<uint64_t>()((static_cast<uint64_t>(p.first) << 32) ^
                                 static_cast<uint64_t>(p.second));
  }
};

}  // namespace

BpeTrainer::BpeTrainer(PreTokenizer pre, int64_t vocab_size, std::vector<std::string> specials,
                       size_t max_pieces)
    : pre_(std::move(pre)),
      vocab_size_(vocab_size),
      specials_(std::move(specials)),
      max_pieces_(max_pieces) {}

void BpeTrainer::Add(std::string_view text) {
  for (std::string_view piece : pre_.Split(text)) ++counts_[std::string(piece)];
  if (counts_.size() > max_pieces_) Prune();
}

// Drops the least frequent pieces until the table is at three quarters of its bound.
void BpeTrainer::Prune() {
  std::vector<uint64_t> all;
  all.reserve(counts_.size());
  for (const auto& [piece, n] : counts_) all.push_back(n);
  size_t keep = max_pieces_ * 3 / 4;
  std::nth_element(all.begin(), all.begin() + static_cast<std::ptrdiff_t>(all.size() - keep),
                   all.end());
  uint64_t threshold = all[all.size() - keep];
  for (auto it = counts_.begin(); it != counts_.end();) {
    if (it->second < threshold || (it->second == threshold && counts_.size() > keep)) {
      dropped_ += it->second;
      it = counts_.erase(it);
    } else {
      ++it;
    }
  }
}

void BpeTrainer::Train() {
  tokens_.clear();
  merges_.clear();
  for (int b = 0; b < 256; ++b) tokens_.push_back(std::string(1, static_cast<char>(b)));
  // Words in a fixed order (by piece), so training is deterministic.
  std::map<std::string, uint64_t> sorted(counts_.begin(), counts_.end());
  std::vector<std::vector<int>> words;
  std::vector<uint64_t> freq;
  for (const auto& [piece, n] : sorted) {
    std::vector<int> w;
    for (char c : piece) w.push_back(static_cast<unsigned char>(c));
    words.push_back(std::move(w));
    freq.push_back(n);
  }
  std::unordered_map<Pair, uint64_t, PairHash> pair_counts;
  std::unordered_map<Pair, std::set<size_t>, PairHash> where;
  for (size_t i = 0; i < words.size(); ++i) {
    for (size_t k = 0; k + 1 < words[i].size(); ++k) {
      Pair p{words[i][k], words[i][k + 1]};
      pair_counts[p] += freq[i];
      where[p].insert(i);
    }
  }
  // Max-heap of (count, -first, -second) with lazy deletion: ties go to the smaller ids.
  using Entry = std::tuple<uint64_t, int, int>;
  std::priority_queue<Entry> heap;
  for (const auto& [p, n] : pair_counts) heap.push({n, -p.first, -p.second});
  auto target = vocab_size_ - static_cast<int64_t>(specials_.size());
  while (static_cast<int64_t>(tokens_.size()) < target && !heap.empty()) {
    auto [n, a, b] = heap.top();
    heap.pop();
    Pair best{-a, -b};
    auto it = pair_counts.find(best);
    if (it == pair_counts.end() || it->second != n || n == 0) continue;  // stale entry
    int merged = static_cast<int>(tokens_.size());
    tokens_.push_back(tokens_[static_cast<size_t>(best.first)] +
                      tokens_[static_cast<size_t>(best.second)]);
    merges_.push_back(
        {tokens_[static_cast<size_t>(best.first)], tokens_[static_cast<size_t>(best.second)]});
    std::set<Pair> touched;
    std::set<size_t> affected = where[best];
    for (size_t i : affected) {
      std::vector<int>& w = words[i];
      // Remove this word's pairs, merge, add its new pairs.
      for (size_t k = 0; k + 1 < w.size(); ++k) {
        Pair p{w[k], w[k + 1]};
        pair_counts[p] -= freq[i];
        touched.insert(p);
      }
      std::vector<int> out;
      for (size_t k = 0; k < w.size(); ++k) {
        if (k + 1 < w.size() && w[k] == best.first && w[k + 1] == best.second) {
          out.push_back(merged);
          ++k;
        } else {
          out.push_back(w[k]);
        }
      }
      w.swap(out);
      for (size_t k = 0; k + 1 < w.size(); ++k) {
        Pair p{w[k], w[k + 1]};
        pair_counts[p] += freq[i];
        where[p].insert(i);
        touched.insert(p);
      }
    }
    for (const Pair& p : touched) {
      uint64_t c = pair_counts[p];
      if (c > 0) heap.push({c, -p.first, -p.second});
    }
  }
}

Status BpeTrainer::Save(const std::filesystem::path& file) const {
  std::string vocab, merges, added;
  for (size_t id = 0; id < tokens_.size(); ++id) {
    vocab += (id ? ", " : "") + JsonQuote(ByteLevelString(tokens_[id])) + ": " + std::to_string(id);
  }
  for (size_t m = 0; m < merges_.size(); ++m) {
    merges += std::string(m ? ", " : "") + "[" + JsonQuote(ByteLevelString(merges_[m].first)) +
              ", " + JsonQuote(ByteLevelString(merges_[m].second)) + "]";
  }
  for (size_t s = 0; s < specials_.size(); ++s) {
    added += std::string(s ? ", " : "") + "{\"id\": " + std::to_string(tokens_.size() + s) +
             ", \"content\": " + JsonQuote(specials_[s]) +
             ", \"single_word\": false, \"lstrip\": false, \"rstrip\": false, \"normalized\": "
             "false, \"special\": true}";
  }
  std::string splits;
  for (const std::string& p : pre_.patterns()) {
    splits += "{\"type\": \"Split\", \"pattern\": {\"Regex\": " + JsonQuote(p) +
              "}, \"behavior\": \"Isolated\", \"invert\": false}, ";
  }
  std::string json =
      "{\"version\": \"1.0\", \"truncation\": null, \"padding\": null, \"added_tokens\": [" +
      added +
      "], \"normalizer\": null, \"pre_tokenizer\": {\"type\": \"Sequence\", \"pretokenizers\": [" +
      splits +
      "{\"type\": \"ByteLevel\", \"add_prefix_space\": false, \"trim_offsets\": true, "
      "\"use_regex\": false}]}, \"post_processor\": null, \"decoder\": {\"type\": \"ByteLevel\", "
      "\"add_prefix_space\": true, \"trim_offsets\": true, \"use_regex\": true}, \"model\": "
      "{\"type\": \"BPE\", \"dropout\": null, \"unk_token\": null, \"continuing_subword_prefix\": "
      "null, \"end_of_word_suffix\": null, \"fuse_unk\": false, \"byte_fallback\": false, "
      "\"ignore_merges\": false, \"vocab\": {" +
      vocab + "}, \"merges\": [" + merges + "]}}\n";
  return WriteFileAtomically(file, json);
}

}  // namespace weir::tokenizer
