// io.JsonlSink: writes every row it receives as one JSON object per line.
#include "io_ops.h"
#include "weir/atomic_file.h"
#include "weir/json.h"

namespace weir::io {
namespace {

class JsonlSink : public StreamKernel {
 public:
  JsonlSink(const NodeContext& ctx, std::unique_ptr<AtomicFileWriter> file)
      : ctx_(ctx), file_(std::move(file)), columns_(ctx.StringList("columns")) {}

  Status Process(int, const Batch& batch, Emitter&) override {
    std::vector<std::pair<std::string, const Column*>> picked;
    if (columns_.empty()) {
      for (const auto& [name, col] : batch.columns()) picked.emplace_back(name, &col);
    } else {
      for (const std::string& name : columns_) {
        const Column* col = batch.Find(name);
        if (col == nullptr) return ctx_.Error("batch has no column '" + name + "'");
        picked.emplace_back(name, col);
      }
    }
    std::ostream& out = file_->stream();
    for (size_t row = 0; row < batch.num_rows(); ++row) {
      out << '{';
      for (size_t i = 0; i < picked.size(); ++i) {
        out << (i ? "," : "") << JsonQuote(picked[i].first) << ':';
        const Column& col = *picked[i].second;
        if (auto* s = std::get_if<StringColumn>(&col)) out << JsonQuote((*s)[row]);
        if (auto* n = std::get_if<IntColumn>(&col)) out << (*n)[row];
        if (auto* f = std::get_if<FloatColumn>(&col)) out << JsonNumber((*f)[row]);
        if (auto* l = std::get_if<IntListColumn>(&col)) {
          out << '[';
          for (size_t k = 0; k < (*l)[row].size(); ++k) out << (k ? "," : "") << (*l)[row][k];
          out << ']';
        }
        if (auto* t = std::get_if<TensorColumn>(&col)) {
          // A tensor row is written as a flat array of its values.
          Tensor r = t->Slice(0, static_cast<int64_t>(row), static_cast<int64_t>(row) + 1);
          out << '[';
          for (int64_t k = 0; k < r.numel(); ++k) out << (k ? "," : "") << JsonNumber(r.At(k));
          out << ']';
        }
      }
      out << "}\n";
    }
    rows_ += static_cast<int64_t>(batch.num_rows());
    return Status();
  }

  Status Finish(Emitter&) override {
    WEIR_RETURN_IF_ERROR(file_->Commit());
    ctx_.Metric(0, {{"rows_written", static_cast<double>(rows_)}});
    return Status();
  }

 private:
  const NodeContext& ctx_;
  std::unique_ptr<AtomicFileWriter> file_;
  std::vector<std::string> columns_;
  int64_t rows_ = 0;
};

}  // namespace

void RegisterJsonlSink(Registrar& r) {
  r.StreamOp("io.JsonlSink")
      .Doc(
          "Writes each row as one JSON object per line. The file appears complete when the run "
          "finishes (it is written beside the target and renamed), so a failed run leaves an "
          "earlier file intact.")
      .Input("in", "batch", "rows to write")
      .RequiredAttr<std::string>("path", "output file; relative to `dir`")
      .Attr<std::string>("dir", ".",
                         "folder of the file: relative to the run's output folder, or absolute "
                         "(lets a graph param name the output folder)")
      .Attr("columns", std::vector<std::string>{},
            "columns to write, in this order (empty: every column)")
      .Stateful()
      .Factory([](const NodeContext& ctx) -> StatusOr<std::unique_ptr<StreamKernel>> {
        WEIR_ASSIGN_OR_RETURN(auto file, AtomicFileWriter::Open(ctx.OutputPath(ctx.String("dir")) /
                                                                ctx.String("path")));
        return std::unique_ptr<StreamKernel>(new JsonlSink(ctx, std::move(file)));
      });
}

}  // namespace weir::io
