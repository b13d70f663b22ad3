#include "io_ops.h"
#include "weir/atomic_file.h"
#include "weir/json.h"

namespace weir::io {

namespace {
std::filesystem::path StateFile(const std::filesystem::path& run, const NodeContext& ctx) {
  return run / "state" / (ctx.node() + ".json");
}

// The rows the run being resumed had read: 0 without --resume, or when resuming from a training
// checkpoint (its readers resume by the trainer's data position).
StatusOr<int64_t> ResumedRows(const NodeContext& ctx) {
  if (ctx.resume_dir().empty()) return 0;
  std::filesystem::path file = StateFile(ctx.resume_dir(), ctx);
  if (!std::filesystem::exists(file)) return 0;
  auto state = ReadJsonFile(file);
  if (!state.ok()) return ctx.Error("resume: " + state.status().message());
  auto it = state->fields().find("rows_read");
  if (it == state->fields().end())
    return ctx.Error("resume: " + file.string() + " has no number 'rows_read'");
  return static_cast<int64_t>(it->second.number_value());
}
}  // namespace

StatusOr<SourceRows> SourceRows::Make(const NodeContext& ctx,
                                      std::vector<std::filesystem::path>* files) {
  SourceRows s;
  s.shards_ = ctx.Int("shards");
  s.shard_ = ctx.Int("shard");
  s.by_row_ = ctx.String("shard_by") == "row";
  if (s.shard_ >= s.shards_) {
    return ctx.Error("shard " + std::to_string(s.shard_) + " does not exist: shards are 0.." +
                     std::to_string(s.shards_ - 1));
  }
  if (!s.by_row_ && s.shards_ > 1) {
    std::vector<std::filesystem::path> mine;
    for (size_t i = 0; i < files->size(); ++i)
      if (static_cast<int64_t>(i) % s.shards_ == s.shard_) mine.push_back((*files)[i]);
    *files = std::move(mine);
  }
  WEIR_ASSIGN_OR_RETURN(s.skip_, ResumedRows(ctx));
  return s;
}

Status SourceRows::Save(const NodeContext& ctx) const {
  return WriteFileAtomically(StateFile(ctx.out_dir(), ctx),
                             "{\"rows_read\": " + std::to_string(read_) + "}\n");
}

OpBuilder& ShardingAttrs(OpBuilder& op) {
  return op.Attr<int64_t>("shards", 1, "how many workers split the input", Min(1))
      .Attr<int64_t>("shard", 0, "which of them this node is (0-based)", Min(0))
      .Attr<std::string>("shard_by", "file",
                         "'file': whole files round-robin (file i to shard i % shards); 'row': "
                         "every worker reads everything and keeps row i when i % shards == shard",
                         OneOf{"file", "row"});
}

}  // namespace weir::io
