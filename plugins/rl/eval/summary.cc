// rl.Summary: the means of columns over everything a stream carried, written as one JSON object
// when it ends — a held-out evaluation's accuracy and format rate from the reward columns.
#include "weir/atomic_file.h"
#include "weir/json.h"
#include "weir/registrar.h"
#include "weir/stream_kernel.h"

namespace weir::rl {
namespace {

class SummaryKernel : public StreamKernel {
 public:
  explicit SummaryKernel(const NodeContext& ctx)
      : ctx_(ctx), columns_(ctx.StringList("columns")), names_(ctx.StringList("names")) {
    sums_.assign(columns_.size(), 0.0);
  }

  Status Process(int, const Batch& batch, Emitter& out) override {
    for (size_t c = 0; c < columns_.size(); ++c) {
      const Column* column = batch.Find(columns_[c]);
      if (column == nullptr)
        return ctx_.Error(Status(batch.Get<FloatColumn>(columns_[c]).status()).message());
      if (auto* f = std::get_if<FloatColumn>(column)) {
        for (double v : *f) sums_[c] += v;
      } else if (auto* i = std::get_if<IntColumn>(column)) {
        for (int64_t v : *i) sums_[c] += static_cast<double>(v);
      } else {
        return ctx_.Error("column '" + columns_[c] + "' holds " + ColumnTypeName(*column) +
                          ", expected float or int");
      }
    }
    rows_ += static_cast<int64_t>(batch.num_rows());
    out.Emit(batch);
    return Status();
  }

  Status Finish(Emitter&) override {
    std::string json = "{\"rows\": " + std::to_string(rows_);
    for (size_t c = 0; c < columns_.size(); ++c) {
      double mean = rows_ > 0 ? sums_[c] / static_cast<double>(rows_) : 0.0;
      json += ", " + JsonQuote(names_.empty() ? columns_[c] : names_[c]) + ": " + JsonNumber(mean);
    }
    json += "}\n";
    return WriteFileAtomically(ctx_.OutputPath(ctx_.String("file")), json);
  }

 private:
  const NodeContext& ctx_;
  std::vector<std::string> columns_, names_;
  std::vector<double> sums_;
  int64_t rows_ = 0;
};

}  // namespace

void RegisterSummary(Registrar& r) {
  r.StreamOp("rl.Summary")
      .Doc(
          "Passes its rows through and, when the stream ends, writes `file`: a JSON object with "
          "`rows` and the mean of each of `columns` (float or int) under its name in `names` "
          "(the column's own name when `names` is empty).")
      .Input("in", "batch", "rows with the columns")
      .Output("out", "batch", "the same rows")
      .RequiredAttr<std::vector<std::string>>("columns", "the columns to average")
      .Attr("names", std::vector<std::string>{}, "a name for each column in the file")
      .Attr<std::string>("file", "summary.json", "written in the run's folder")
      .Stateful()
      .Factory([](const NodeContext& ctx) -> StatusOr<std::unique_ptr<StreamKernel>> {
        auto columns = ctx.StringList("columns"), names = ctx.StringList("names");
        if (!names.empty() && names.size() != columns.size())
          return ctx.Error("names: " + std::to_string(names.size()) + " names for " +
                           std::to_string(columns.size()) + " columns");
        return std::unique_ptr<StreamKernel>(std::make_unique<SummaryKernel>(ctx));
      });
}

}  // namespace weir::rl
