// Token shard files: the header, every token of every record, and the data.TokenShards reader
// over the file for a few batches.
#include "data/shards/token_shards.h"
#include "fuzz_util.h"

namespace {
const weir::fuzz::Source* reader = nullptr;
}

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  weir::fuzz::Init();
  reader = new weir::fuzz::Source(
      "node { name: \"r\" op: \"data.TokenShards\" attr: \"path=train-00000.tok batch_size=3 "
      "seed=5\" }");
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size > weir::fuzz::kMaxInputBytes) return -1;
  auto path = weir::fuzz::WriteScratchFile("train-00000.tok", data, size);
  auto shard = weir::data::MappedShard::Open(path);
  if (shard.ok()) {
    const weir::data::ShardHeader& h = shard->header();
    volatile uint32_t sink = 0;
    for (uint64_t r = 0; r < h.records; ++r)
      for (uint64_t i = 0; i < h.record_tokens; ++i) sink = sink ^ shard->Token(r, i);
  }
  (void)reader->Drain(4);
  return 0;
}
