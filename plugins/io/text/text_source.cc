// io.TextSource: plain-text files as rows, one per line or one per file.
#include <fstream>
#include <sstream>

#include "io_ops.h"
#include "weir/file_list.h"
#include "weir/line_reader.h"

namespace weir::io {
namespace {

class TextSource : public StreamKernel {
 public:
  TextSource(const NodeContext& ctx, std::vector<std::filesystem::path> files, SourceRows rows)
      : ctx_(ctx),
        files_(std::move(files)),
        rows_(rows),
        whole_files_(ctx.String("mode") == "files"),
        column_(ctx.String("column")),
        batch_size_(ctx.Int("batch_size")),
        skip_empty_(ctx.Bool("skip_empty")) {}

  Status Finish(Emitter&) override { return rows_.Save(ctx_); }

  StatusOr<bool> Produce(Emitter& out) override {
    StringColumn texts;
    StringColumn sources;
    while (texts.size() < static_cast<size_t>(batch_size_)) {
      std::string text;
      std::string source;
      WEIR_ASSIGN_OR_RETURN(bool more, Next(&text, &source));
      if (!more) break;
      if (skip_empty_ && text.find_first_not_of(" \t\r\n") == std::string::npos) continue;
      if (!rows_.Next()) continue;
      texts.push_back(std::move(text));
      sources.push_back(std::move(source));
    }
    if (texts.empty()) return false;
    Batch batch;
    WEIR_RETURN_IF_ERROR(batch.Set(column_, std::move(texts)));
    WEIR_RETURN_IF_ERROR(batch.Set("source", std::move(sources)));
    out.Emit(std::move(batch));
    return true;
  }

 private:
  StatusOr<bool> Next(std::string* text, std::string* source) {
    while (file_index_ < files_.size()) {
      const std::filesystem::path& file = files_[file_index_];
      if (whole_files_) {
        std::ifstream in(file, std::ios::binary);
        if (!in) return Unavailable("cannot read " + file.string());
        std::stringstream buffer;
        buffer << in.rdbuf();
        *text = buffer.str();
        *source = file.string();
        ++file_index_;
        return true;
      }
      if (!in_.is_open()) {
        in_.open(file);
        if (!in_) return Unavailable("cannot read " + file.string());
        line_ = 0;
      }
      auto read = ReadLine(in_, text);
      if (!read.ok()) return Status(read.status()).At({file.string(), line_ + 1, 0});
      if (*read) {
        ++line_;
        *source = file.string() + ":" + std::to_string(line_);
        return true;
      }
      in_.close();
      ++file_index_;
    }
    return false;
  }

  const NodeContext& ctx_;
  std::vector<std::filesystem::path> files_;
  SourceRows rows_;
  bool whole_files_;
  std::string column_;
  int64_t batch_size_;
  bool skip_empty_;
  size_t file_index_ = 0;
  std::ifstream in_;
  int line_ = 0;
};

}  // namespace

void RegisterTextSource(Registrar& r) {
  OpBuilder& op = r.StreamOp("io.TextSource");
  op.Doc(
        "Reads plain-text files as rows: one row per line, or one row per file. Each row also "
        "carries a 'source' column naming its file (and line).")
      .Output("out", "batch", "rows read: the text column and 'source'")
      .RequiredAttr<std::string>("path",
                                 "a text file, or a folder read recursively in path order; "
                                 "relative to the graph file")
      .Attr<std::string>("mode", "lines", "'lines': a row per line; 'files': a row per file",
                         OneOf{"lines", "files"})
      .Attr<std::string>("suffix", "", "in a folder, read only files whose names end with this")
      .Attr<std::string>("column", "text", "name of the text column")
      .Attr<int64_t>("batch_size", 64, "rows per batch", Min(1))
      .Attr("skip_empty", true, "skip rows that hold only whitespace")
      .Stateful()
      .Factory([](const NodeContext& ctx) -> StatusOr<std::unique_ptr<StreamKernel>> {
        WEIR_ASSIGN_OR_RETURN(
            auto files, ListInputFiles(ctx.InputPath(ctx.String("path")), ctx.String("suffix")));
        WEIR_ASSIGN_OR_RETURN(SourceRows rows, SourceRows::Make(ctx, &files));
        return std::unique_ptr<StreamKernel>(new TextSource(ctx, std::move(files), rows));
      });
  ShardingAttrs(op);
}

}  // namespace weir::io
