#include "shards/token_shards.h"

#include <cstring>

#include "weir/atomic_file.h"

namespace weir::data {

Status WriteShard(const std::filesystem::path& file, const ShardHeader& h,
                  const std::vector<uint32_t>& tokens) {
  WEIR_ASSIGN_OR_RETURN(auto writer, AtomicFileWriter::Open(file));
  char header[kShardHeaderBytes] = {};
  std::memcpy(header, kShardMagic, 8);
  std::memcpy(header + 8, &kShardVersion, 4);
  std::memcpy(header + 12, &h.token_bytes, 4);
  std::memcpy(header + 16, &h.record_tokens, 8);
  std::memcpy(header + 24, &h.records, 8);
  std::memcpy(header + 32, &h.eos, 8);
  std::memcpy(header + 40, &h.vocab_size, 8);
  std::ostream& out = writer->stream();
  out.write(header, kShardHeaderBytes);
  for (uint32_t t : tokens) {
    if (h.token_bytes == 2) {
      auto v = static_cast<uint16_t>(t);
      out.write(reinterpret_cast<const char*>(&v), 2);
    } else {
      out.write(reinterpret_cast<const char*>(&t), 4);
    }
  }
  return writer->Commit();
}

StatusOr<MappedShard> MappedShard::Open(const std::filesystem::path& file) {
  std::error_code ec;
  auto size = std::filesystem::file_size(file, ec);
  if (ec) return NotFound("cannot read token shard " + file.string() + ": " + ec.message());
  auto bad = [&](const std::string& why) {
    return InvalidArgument("token shard " + file.string() + ": " + why);
  };
  if (size < kShardHeaderBytes) return bad("shorter than its header");
  WEIR_ASSIGN_OR_RETURN(auto storage, Storage::MapFile(file, 0, size));
  const auto* p = static_cast<const unsigned char*>(storage->data());
  if (std::memcmp(p, kShardMagic, 8) != 0) return bad("not a weir token shard");
  uint32_t version;
  std::memcpy(&version, p + 8, 4);
  if (version != kShardVersion) {
    return bad("format version " + std::to_string(version) + ", this weir reads " +
               std::to_string(kShardVersion));
  }
  MappedShard s;
  std::memcpy(&s.header_.token_bytes, p + 12, 4);
  std::memcpy(&s.header_.record_tokens, p + 16, 8);
  std::memcpy(&s.header_.records, p + 24, 8);
  std::memcpy(&s.header_.eos, p + 32, 8);
  std::memcpy(&s.header_.vocab_size, p + 40, 8);
  if (s.header_.token_bytes != 2 && s.header_.token_bytes != 4)
    return bad("tokens of " + std::to_string(s.header_.token_bytes) + " bytes");
  // A record is a training sequence plus its shifted target: at least 2 tokens. Records of no
  // tokens would let any record count pass the size check below, and a length past int64 would
  // overflow the sequence length readers derive from it.
  constexpr uint64_t kMaxRecordTokens = uint64_t{1} << 31;
  if (s.header_.record_tokens < 2 || s.header_.record_tokens > kMaxRecordTokens)
    return bad("records of " + std::to_string(s.header_.record_tokens) +
               " tokens; a record holds 2 to " + std::to_string(kMaxRecordTokens));
  // Checked products: a hostile count must not wrap around to the file's size.
  uint64_t body = 0;
  if (__builtin_mul_overflow(s.header_.records, s.header_.record_tokens, &body) ||
      __builtin_mul_overflow(body, s.header_.token_bytes, &body)) {
    return bad("its header promises " + std::to_string(s.header_.records) + " records of " +
               std::to_string(s.header_.record_tokens) + " tokens, more than any file holds");
  }
  if (body != size - kShardHeaderBytes) {
    return bad("holds " + std::to_string(size) + " bytes, its header promises " +
               std::to_string(kShardHeaderBytes + body) + " (truncated?)");
  }
  s.storage_ = std::move(storage);
  s.body_ = p + kShardHeaderBytes;
  return s;
}

uint32_t MappedShard::Token(uint64_t record, uint64_t i) const {
  uint64_t at = (record * header_.record_tokens + i) * header_.token_bytes;
  if (header_.token_bytes == 2) {
    uint16_t v;
    std::memcpy(&v, body_ + at, 2);
    return v;
  }
  uint32_t v;
  std::memcpy(&v, body_ + at, 4);
  return v;
}

}  // namespace weir::data
