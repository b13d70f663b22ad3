// A byte-level BPE trainer: counts pre-tokenized pieces in a bounded table, then merges the most
// frequent adjacent pair (64-bit counts) until the vocabulary is full, and writes the result as
// a Hugging Face tokenizer.json.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <unordered_map>
#include <vector>

#include "bpe.h"

namespace weir::tokenizer {

class BpeTrainer {
 public:
  // `max_pieces` bounds the count table: when it is exceeded, the pieces seen least often are
  // dropped (a standard approximation that keeps memory fixed on any corpus).
  BpeTrainer(PreTokenizer pre, int64_t vocab_size, std::vector<std::string> specials,
             size_t max_pieces);

  void Add(std::string_view text);
  // Learns the merges; the vocabulary is the 256 bytes, then one token per merge, then the
  // special tokens.
  void Train();
  Status Save(const std::filesystem::path& file) const;

  const std::vector<std::pair<std::string, std::string>>& merges() const { return merges_; }
  uint64_t pieces_dropped() const { return dropped_; }

 private:
  void Prune();

  PreTokenizer pre_;
  int64_t vocab_size_;
  std::vector<std::string> specials_;
  size_t max_pieces_;
  std::unordered_map<std::string, uint64_t> counts_;
  uint64_t dropped_ = 0;
  std::vector<std::string> tokens_;  // id -> bytes
  std::vector<std::pair<std::string, std::string>> merges_;
};

}  // namespace weir::tokenizer
