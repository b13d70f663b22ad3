// Token shards: fixed-length token records in memory-mappable files.
//
// A shard file (<split>-NNNNN.tok) is a 64-byte header followed by the records:
//   0  char[8]  "WEIRTOKS"
//   8  u32      format version (1)
//   12 u32      bytes per token: 2 (vocabularies up to 65,536) or 4
//   16 u64      tokens per record (a training sequence of seq_len uses seq_len + 1: inputs and
//               targets shifted by one)
//   24 u64      records in this file
//   32 u64      the end-of-document token id
//   40 u64      vocabulary size
//   48 ...      zero up to 64
// then records × tokens-per-record tokens, little-endian. Documents are packed back to back, each
// followed by the end-of-document token, and cut into records without regard to document
// boundaries (the model learns across them; the EOS token marks them).
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <vector>

#include "weir/status.h"
#include "weir/tensor.h"

namespace weir::data {

constexpr char kShardMagic[8] = {'W', 'E', 'I', 'R', 'T', 'O', 'K', 'S'};
constexpr uint32_t kShardVersion = 1;
constexpr size_t kShardHeaderBytes = 64;

struct ShardHeader {
  uint32_t token_bytes = 2;
  uint64_t record_tokens = 0;
  uint64_t records = 0;
  uint64_t eos = 0;
  uint64_t vocab_size = 0;
};

// Writes one shard atomically.
Status WriteShard(const std::filesystem::path& file, const ShardHeader& header,
                  const std::vector<uint32_t>& tokens);

// A shard mapped into memory.
class MappedShard {
 public:
  static StatusOr<MappedShard> Open(const std::filesystem::path& file);
  const ShardHeader& header() const { return header_; }
  uint32_t Token(uint64_t record, uint64_t i) const;

 private:
  ShardHeader header_;
  std::shared_ptr<Storage> storage_;
  const unsigned char* body_ = nullptr;
};

}  // namespace weir::data
