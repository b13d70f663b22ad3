// io.JsonlSource: reads JSON Lines files into batches of columns.
#include <algorithm>
#include <fstream>
#include <optional>

#include "io_ops.h"
#include "weir/file_list.h"
#include "weir/json.h"
#include "weir/line_reader.h"

namespace weir::io {
namespace {

using google::protobuf::Value;

// The column type a JSON value goes into: strings stay strings, numbers become floats, booleans
// ints (0/1); arrays and objects are kept as their JSON text.
int ColumnKind(const Value& v) {
  switch (v.kind_case()) {
    case Value::kNumberValue:
      return 2;
    case Value::kBoolValue:
      return 1;
    default:
      return 0;
  }
}

class JsonlSource : public StreamKernel {
 public:
  JsonlSource(const NodeContext& ctx, std::vector<std::filesystem::path> files, SourceRows rows)
      : ctx_(ctx),
        files_(std::move(files)),
        rows_(rows),
        batch_size_(ctx.Int("batch_size")),
        limit_(ctx.Int("limit")),
        fields_(ctx.StringList("fields")) {}

  Status Finish(Emitter&) override { return rows_.Save(ctx_); }

  StatusOr<bool> Produce(Emitter& out) override {
    Batch batch;
    std::vector<Column> columns;
    size_t rows = 0;
    while (rows < static_cast<size_t>(batch_size_) && (limit_ == 0 || total_ < limit_)) {
      std::string line;
      WEIR_ASSIGN_OR_RETURN(bool more, NextLine(&line));
      if (!more) break;
      if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
      if (!rows_.Next()) continue;
      SourceLoc where{files_[file_index_].string(), line_number_, 0};
      auto record = ParseJsonObject(line);
      if (!record.ok()) return Status(record.status()).At(where);
      if (fields_.empty()) {
        for (const auto& [key, _] : record->fields()) fields_.push_back(key);
        std::sort(fields_.begin(), fields_.end());
      }
      if (kinds_.empty()) {
        for (const std::string& f : fields_) {
          auto it = record->fields().find(f);
          if (it == record->fields().end()) break;
          kinds_.push_back(ColumnKind(it->second));
        }
      }
      if (columns.empty()) {
        for (int kind : kinds_) {
          if (kind == 0) columns.emplace_back(StringColumn{});
          if (kind == 1) columns.emplace_back(IntColumn{});
          if (kind == 2) columns.emplace_back(FloatColumn{});
        }
      }
      for (size_t i = 0; i < fields_.size(); ++i) {
        auto it = record->fields().find(fields_[i]);
        if (it == record->fields().end() || i >= kinds_.size())
          return InvalidArgument("record has no field '" + fields_[i] + "'").At(where);
        const Value& v = it->second;
        if (ColumnKind(v) != kinds_[i]) {
          return InvalidArgument("field '" + fields_[i] + "' changes type (was " +
                                 ColumnTypeName(columns[i]) + ")")
              .At(where);
        }
        if (kinds_[i] == 1) std::get<IntColumn>(columns[i]).push_back(v.bool_value() ? 1 : 0);
        if (kinds_[i] == 2) std::get<FloatColumn>(columns[i]).push_back(v.number_value());
        if (kinds_[i] == 0) {
          std::get<StringColumn>(columns[i])
              .push_back(v.kind_case() == Value::kStringValue ? v.string_value()
                                                              : JsonValueText(v));
        }
      }
      ++rows;
      ++total_;
    }
    if (rows == 0) return false;
    for (size_t i = 0; i < fields_.size(); ++i)
      WEIR_RETURN_IF_ERROR(batch.Set(fields_[i], std::move(columns[i])));
    out.Emit(std::move(batch));
    return true;
  }

 private:
  StatusOr<bool> NextLine(std::string* line) {
    while (file_index_ < files_.size()) {
      if (!in_.is_open()) {
        in_.open(files_[file_index_]);
        line_number_ = 0;
      }
      auto read = ReadLine(in_, line);
      if (!read.ok())
        return Status(read.status()).At({files_[file_index_].string(), line_number_ + 1, 0});
      if (*read) {
        ++line_number_;
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
  int64_t batch_size_;
  int64_t limit_;
  std::vector<std::string> fields_;
  std::vector<int> kinds_;
  size_t file_index_ = 0;
  std::ifstream in_;
  int line_number_ = 0;
  int64_t total_ = 0;
};

}  // namespace

void RegisterJsonlSource(Registrar& r) {
  OpBuilder& op = r.StreamOp("io.JsonlSource");
  op.Doc(
        "Reads JSON Lines (one JSON object per line) into batches. Strings become string "
        "columns, numbers float columns, booleans int columns (0/1); nested arrays and objects "
        "are kept as JSON text. Blank lines are skipped; a malformed line is an error naming "
        "its file and line.")
      .Output("out", "batch", "rows read")
      .RequiredAttr<std::string>("path",
                                 "a .jsonl file, or a folder whose *.jsonl files are read in "
                                 "path order; relative to the graph file")
      .Attr<int64_t>("batch_size", 64, "rows per batch", Min(1))
      .Attr<int64_t>("limit", 0, "stop after this many rows (0: read everything)", Min(0))
      .Attr("fields", std::vector<std::string>{},
            "fields to read, in column order (empty: every field of the first record, sorted)")
      .Stateful()
      .Factory([](const NodeContext& ctx) -> StatusOr<std::unique_ptr<StreamKernel>> {
        WEIR_ASSIGN_OR_RETURN(auto files,
                              ListInputFiles(ctx.InputPath(ctx.String("path")), ".jsonl"));
        WEIR_ASSIGN_OR_RETURN(SourceRows rows, SourceRows::Make(ctx, &files));
        return std::unique_ptr<StreamKernel>(new JsonlSource(ctx, std::move(files), rows));
      });
  ShardingAttrs(op);
}

}  // namespace weir::io
