// JSON Lines files through io.JsonlSource, read whole in small batches: once with the fields of
// the first record, once with named fields and sharding by row. The first input byte picks which.
#include "fuzz_util.h"

namespace {
const weir::fuzz::Source* sources[2] = {};
}

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  weir::fuzz::Init();
  sources[0] = new weir::fuzz::Source(
      "node { name: \"r\" op: \"io.JsonlSource\" attr: \"path=in.jsonl batch_size=2\" }");
  sources[1] = new weir::fuzz::Source(
      "node { name: \"r\" op: \"io.JsonlSource\" attr: \"path=in.jsonl batch_size=3 "
      "fields=[text, id] shards=2 shard=1 shard_by=row limit=20\" }");
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0 || size > weir::fuzz::kMaxInputBytes) return -1;
  weir::fuzz::WriteScratchFile("in.jsonl", data + 1, size - 1);
  // Every row fits in this many batches; the loop stops at the end of the file.
  (void)sources[data[0] % 2]->Drain(static_cast<int>(size) + 1);
  return 0;
}
