// The io plugin's op families; plugin.cc registers them all.
#pragma once

#include <filesystem>
#include <vector>

#include "weir/registrar.h"
#include "weir/stream_kernel.h"

namespace weir::io {

// Which part of the input a source reads when several workers split it (attrs `shards`,
// `shard`, `shard_by`): whole files round-robin (shard_by=file: file i goes to shard i % shards),
// or rows round-robin (shard_by=row: every worker reads all files and keeps row i when
// i % shards == shard). The shards are disjoint and together hold every row.
class Sharding {
 public:
  // Checks the attrs and keeps this shard's files (all of them when sharding by row).
  static StatusOr<Sharding> Make(const NodeContext& ctx, std::vector<std::filesystem::path>* files);
  // Whether the row with this index (0-based, in read order) belongs to this shard.
  bool Keep(int64_t row) const { return !by_row_ || row % shards_ == shard_; }

 private:
  int64_t shards_ = 1, shard_ = 0;
  bool by_row_ = false;
};

// Declares `shards`, `shard` and `shard_by` on a source.
OpBuilder& ShardingAttrs(OpBuilder& op);

// A source's read position: how many rows it has read (its shard's and the others'), saved as
// <run>/state/<node>.json when its stream ends, so `weir run GRAPH --resume RUN` (RUN an earlier
// run's output folder) continues after them: a job stopped with Ctrl-C resumes where it stopped.
struct ReadPosition {
  // The rows to skip: the saved position of the run being resumed, or 0.
  static StatusOr<int64_t> Load(const NodeContext& ctx);
  static Status Save(const NodeContext& ctx, int64_t rows);
};

void RegisterJsonlSource(Registrar& r);
void RegisterJsonlSink(Registrar& r);
void RegisterTextSource(Registrar& r);
void RegisterHead(Registrar& r);
void RegisterSample(Registrar& r);

}  // namespace weir::io
