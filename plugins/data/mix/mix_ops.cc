// data.Mix draws rows from several streams in proportion to weights (a domain mixture);
// data.FillInTheMiddle rewrites a share of code documents as prefix-suffix-middle.
#include <deque>
#include <map>
#include <numeric>

#include "data_ops.h"
#include "weir/random.h"

namespace weir::data {
namespace {

class Mix : public StreamKernel {
 public:
  explicit Mix(const NodeContext& ctx)
      : ctx_(ctx),
        weights_(ctx.attrs().FloatList("weights")),
        seed_(static_cast<uint64_t>(ctx.Int("seed"))),
        queues_(weights_.size()) {}

  Status Process(int input, const Batch& batch, Emitter& out) override {
    if (input < 0 || static_cast<size_t>(input) >= weights_.size()) {
      return ctx_.Error("input " + std::to_string(input) + " has no weight (weights has " +
                        std::to_string(weights_.size()) + ")");
    }
    if (!columns_.empty() && !SameColumns(batch)) {
      return ctx_.Error("input " + std::to_string(input) +
                        " has other columns than the first input; mixed streams must agree");
    }
    if (columns_.empty()) {
      for (const auto& [name, col] : batch.columns()) columns_.push_back({name, col.index()});
    }
    for (size_t r = 0; r < batch.num_rows(); ++r)
      queues_[static_cast<size_t>(input)].push_back(batch.Slice(r, r + 1));
    return Drain(out, /*finished=*/false);
  }

  Status Finish(Emitter& out) override { return Drain(out, /*finished=*/true); }

 private:
  bool SameColumns(const Batch& batch) const {
    if (batch.columns().size() != columns_.size()) return false;
    for (size_t i = 0; i < columns_.size(); ++i) {
      if (batch.columns()[i].first != columns_[i].first ||
          batch.columns()[i].second.index() != columns_[i].second)
        return false;
    }
    return true;
  }

  // Emits rows while the next draw finds one waiting. The k-th draw depends only on (seed, k):
  // the mixture is the same however batches arrive. Before the end, a draw that picks an empty
  // queue waits for it; at the end, emptied inputs leave the draw.
  Status Drain(Emitter& out, bool finished) {
    Batch pending;
    while (true) {
      std::vector<double> w = weights_;
      if (finished) {
        for (size_t i = 0; i < w.size(); ++i)
          if (queues_[i].empty()) w[i] = 0;
      }
      double total = std::accumulate(w.begin(), w.end(), 0.0);
      if (total <= 0) break;
      double u = UnitInterval(SplitMix64(seed_ ^ SplitMix64(draws_))) * total;
      size_t pick = 0;
      while (pick + 1 < w.size() && u >= w[pick]) u -= w[pick++];
      while (w[pick] == 0) ++pick;       // rounding at the top end
      if (queues_[pick].empty()) break;  // wait for this input's next batch
      ++draws_;
      if (pending.num_rows() == 0) {
        pending = std::move(queues_[pick].front());
      } else {
        WEIR_RETURN_IF_ERROR(pending.Append(queues_[pick].front()));
      }
      queues_[pick].pop_front();
      ++emitted_[pick];
    }
    if (pending.num_rows() > 0) out.Emit(std::move(pending));
    if (finished) {
      std::vector<std::pair<std::string, double>> values;
      for (const auto& [i, n] : emitted_)
        values.push_back({"rows_from_input_" + std::to_string(i), static_cast<double>(n)});
      ctx_.Metric(0, values);
    }
    return Status();
  }

  const NodeContext& ctx_;
  std::vector<double> weights_;
  uint64_t seed_;
  std::vector<std::deque<Batch>> queues_;  // one-row batches waiting, per input
  std::vector<std::pair<std::string, size_t>> columns_;
  uint64_t draws_ = 0;
  std::map<size_t, uint64_t> emitted_;
};

// The byte offset of the code point boundary at or before `at` in UTF-8 text.
size_t Boundary(const std::string& s, size_t at) {
  while (at > 0 && at < s.size() && (static_cast<unsigned char>(s[at]) & 0xc0) == 0x80) --at;
  return at;
}

class FillInTheMiddle : public StreamKernel {
 public:
  explicit FillInTheMiddle(const NodeContext& ctx)
      : column_(ctx.String("text_column")),
        rate_(ctx.Float("rate")),
        seed_(static_cast<uint64_t>(ctx.Int("seed"))),
        begin_(ctx.String("fim_begin")),
        hole_(ctx.String("fim_hole")),
        end_(ctx.String("fim_end")) {}

  Status Process(int, const Batch& batch, Emitter& out) override {
    WEIR_ASSIGN_OR_RETURN(const StringColumn* texts, batch.Get<StringColumn>(column_));
    StringColumn rewritten;
    IntColumn fim;
    for (const std::string& text : *texts) {
      // Whether and where to cut depend only on (seed, the document's position).
      uint64_t h = SplitMix64(seed_ ^ SplitMix64(documents_++));
      if (text.empty() || UnitInterval(h) >= rate_) {
        rewritten.push_back(text);
        fim.push_back(0);
        continue;
      }
      size_t a = Boundary(text, SplitMix64(h ^ 1) % (text.size() + 1));
      size_t b = Boundary(text, SplitMix64(h ^ 2) % (text.size() + 1));
      if (a > b) std::swap(a, b);
      // Prefix-suffix-middle, as DeepSeek-V3 trains it: the model sees the prefix and the
      // suffix, then writes the middle.
      rewritten.push_back(begin_ + text.substr(0, a) + hole_ + text.substr(b) + end_ +
                          text.substr(a, b - a));
      fim.push_back(1);
    }
    Batch result = batch;
    WEIR_RETURN_IF_ERROR(result.Set(column_, std::move(rewritten)));
    WEIR_RETURN_IF_ERROR(result.Set("fim", std::move(fim)));
    out.Emit(std::move(result));
    return Status();
  }

 private:
  std::string column_;
  double rate_;
  uint64_t seed_;
  std::string begin_, hole_, end_;
  uint64_t documents_ = 0;
};

}  // namespace

void RegisterMix(Registrar& r) {
  r.StreamOp("data.Mix")
      .Doc(
          "A mixture of streams (web text, code, math, multilingual): each output row comes "
          "from input i with probability weights[i] / sum(weights), drawn from (seed, row "
          "number), until an input runs out; the others then share its weight. Inputs must "
          "have the same columns. Rows wait in memory until their draw comes.")
      .VariadicInput("in", "batch", "the streams to mix, in the order of `weights`")
      .Output("out", "batch", "the mixture")
      .RequiredAttr<std::vector<double>>("weights", "one weight per input, >= 0")
      .Attr<int64_t>("seed", 0, "seed of the draws")
      .Stateful()
      .Factory([](const NodeContext& ctx) -> StatusOr<std::unique_ptr<StreamKernel>> {
        for (double w : ctx.attrs().FloatList("weights"))
          if (w < 0) return ctx.Error("weights must not be negative");
        return std::unique_ptr<StreamKernel>(new Mix(ctx));
      });
  r.StreamOp("data.FillInTheMiddle")
      .Doc(
          "Rewrites a share `rate` of documents (0.1, as DeepSeek-V3) in the fill-in-the-middle "
          "prefix-suffix-middle form: fim_begin + prefix + fim_hole + suffix + fim_end + middle, "
          "cut at two random code point boundaries; which documents and where depend only on "
          "(seed, position). Adds an int column `fim` (1 for rewritten rows).")
      .Input("in", "batch", "documents")
      .Output("out", "batch", "the documents, some rewritten")
      .Attr<std::string>("text_column", "text", "the text to rewrite")
      .Attr<double>("rate", 0.1, "share of documents rewritten", Min(0.0), Max(1.0))
      .Attr<int64_t>("seed", 0, "seed of the choices and cuts")
      .Attr<std::string>("fim_begin", "<\uff5cfim\u2581begin\uff5c>", "marks the prefix")
      .Attr<std::string>("fim_hole", "<\uff5cfim\u2581hole\uff5c>", "marks where the middle was")
      .Attr<std::string>("fim_end", "<\uff5cfim\u2581end\uff5c>", "precedes the middle")
      .Stateful()
      .Factory([](const NodeContext& ctx) -> StatusOr<std::unique_ptr<StreamKernel>> {
        return std::unique_ptr<StreamKernel>(new FillInTheMiddle(ctx));
      });
}

}  // namespace weir::data
