// Byte-level BPE: pre-tokenization by regular expressions (PCRE2), merges by rank, special
// tokens. Loads Hugging Face tokenizer.json files (model BPE over GPT-2's byte alphabet, merges
// as "a b" strings or [a, b] pairs) and tiktoken rank files ("<base64 token> <rank>" lines).
#pragma once

#include <filesystem>
#include <memory>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "weir/status.h"

namespace weir::tokenizer {

// The pre-tokenizer pattern of OpenAI's cl100k_base (tiktoken's published regex).
extern const char* const kCl100kPattern;
// GPT-2's pattern (the one Hugging Face's ByteLevel pre-tokenizer uses with use_regex).
extern const char* const kGpt2Pattern;

// DeepSeek-V3's pre-tokenizer steps, as Split regexes applied in order (then ByteLevel without
// its regex): digits in groups of 1-3, runs of CJK and kana isolated, then letters,
// punctuation and newlines split as cl100k does.
extern const char* const kDeepSeekPatterns[3];

class Regex;

// Regexes applied in sequence: each cuts every piece into its matches and the gaps between.
class PreTokenizer {
 public:
  static StatusOr<PreTokenizer> Make(const std::vector<std::string>& patterns);
  PreTokenizer();
  PreTokenizer(PreTokenizer&&) noexcept;
  PreTokenizer& operator=(PreTokenizer&&) noexcept;
  ~PreTokenizer();
  std::vector<std::string_view> Split(std::string_view text) const;
  const std::vector<std::string>& patterns() const { return sources_; }

 private:
  std::vector<std::unique_ptr<Regex>> regexes_;
  std::vector<std::string> sources_;
};

// Bytes spelled in GPT-2's byte-level alphabet (how tokenizer.json vocabularies write them).
std::string ByteLevelString(std::string_view bytes);

class Tokenizer {
 public:
  // A tokenizer.json (the file starts with '{') or a tiktoken rank file, whose pre-tokenizer is
  // `tiktoken_pattern` (a regex, or "cl100k" / "gpt2").
  static StatusOr<std::shared_ptr<Tokenizer>> Load(const std::filesystem::path& file,
                                                   const std::string& tiktoken_pattern = "cl100k");
  ~Tokenizer();

  // Ids of `text`; special tokens written in the text become their ids when `specials`.
  std::vector<int64_t> Encode(std::string_view text, bool specials = true) const;
  // The bytes of the ids; an id outside the vocabulary is an error.
  StatusOr<std::string> Decode(const std::vector<int64_t>& ids) const;
  int64_t vocab_size() const { return static_cast<int64_t>(tokens_.size()); }

 private:
  Tokenizer();
  // Bounds the ids SetToken accepts by how many tokens the file declares: ids index a table, so
  // a hostile id must not size a giant one, while real vocabularies leave few or small gaps.
  void SetFileTokens(int64_t n) {
    file_tokens_ = n;
    id_limit_ = n + kMaxIdGap;
  }
  // Makes `bytes` token `id`; an ordinary token is also found by its bytes (special tokens are
  // matched in the text instead).
  Status SetToken(int64_t id, std::string bytes, bool ordinary);

  void EncodeOrdinary(std::string_view text, std::vector<int64_t>& out) const;
  void EncodePiece(std::string_view piece, std::vector<int64_t>& out) const;
  // The priority of merging two adjacent parts (lower first), or -1 when they do not merge.
  int64_t PairRank(std::string_view left, std::string_view right) const;

  PreTokenizer pre_;
  std::unordered_map<std::string, int64_t> ids_;  // token bytes -> id
  std::vector<std::string> tokens_;               // id -> token bytes
  // HF: merge rank of "left\0right"; tiktoken (empty): a pair merges when their concatenation is
  // a token, with its id as the rank.
  std::unordered_map<std::string, int64_t> merges_;
  std::vector<std::pair<std::string, int64_t>> specials_;  // longest first
  uint64_t serial_;  // identifies this tokenizer's piece memos
  static constexpr int64_t kMaxIdGap = 1 << 16;
  int64_t file_tokens_ = 0;
  int64_t id_limit_ = 0;
};

}  // namespace weir::tokenizer
