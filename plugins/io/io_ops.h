// The io plugin's op families; plugin.cc registers them all.
#pragma once

#include <filesystem>
#include <vector>

#include "weir/registrar.h"
#include "weir/stream_kernel.h"

namespace weir::io {

// Which rows a source emits.
//
// Sharding (attrs `shards`, `shard`, `shard_by`), so several workers split one input: whole
// files round-robin (shard_by=file: file i goes to shard i % shards), or rows round-robin
// (shard_by=row: every worker reads all files and keeps row i when i % shards == shard). The
// shards are disjoint and together hold every row.
//
// The read position: how many rows the source has read (its shard's and the others'), saved as
// <run>/state/<node>.json when its stream ends, so `weir run GRAPH --resume RUN` (RUN an earlier
// run's output folder) skips them: a job stopped with Ctrl-C resumes where it stopped.
class SourceRows {
 public:
  // Checks the attrs, keeps this shard's files (all of them when sharding by row) and reads the
  // position of the run being resumed, if any.
  static StatusOr<SourceRows> Make(const NodeContext& ctx,
                                   std::vector<std::filesystem::path>* files);
  // Counts the next row read and says whether to emit it: it is this shard's and the resumed
  // run had not read it.
  bool Next() {
    int64_t row = read_++;
    return row >= skip_ && (!by_row_ || row % shards_ == shard_);
  }
  // Saves the read position for a later --resume.
  Status Save(const NodeContext& ctx) const;

 private:
  int64_t shards_ = 1, shard_ = 0;
  bool by_row_ = false;
  int64_t skip_ = 0;  // rows the resumed run had read
  int64_t read_ = 0;  // rows read so far, this shard's or not
};

// Declares `shards`, `shard` and `shard_by` on a source.
OpBuilder& ShardingAttrs(OpBuilder& op);

void RegisterJsonlSource(Registrar& r);
void RegisterJsonlSink(Registrar& r);
void RegisterTextSource(Registrar& r);
void RegisterHead(Registrar& r);
void RegisterSample(Registrar& r);

}  // namespace weir::io
