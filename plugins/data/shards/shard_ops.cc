// data.PackTokens writes token shards from a stream of tokenized documents; data.TokenShards
// reads them back as training batches, shuffled deterministically and resumable.
#include <algorithm>
#include <random>

#include "data_ops.h"
#include "shards/token_shards.h"
#include "weir/atomic_file.h"
#include "weir/file_list.h"
#include "weir/random.h"

namespace weir::data {
namespace {

class PackTokens : public StreamKernel {
 public:
  explicit PackTokens(const NodeContext& ctx)
      : ctx_(ctx),
        column_(ctx.String("ids_column")),
        record_tokens_(static_cast<uint64_t>(ctx.Int("seq_len")) + 1),
        per_shard_(static_cast<uint64_t>(ctx.Int("records_per_shard"))),
        val_fraction_(ctx.Float("val_fraction")),
        seed_(static_cast<uint64_t>(ctx.Int("seed"))),
        dir_(ctx.OutputPath(ctx.String("dir"))) {
    header_.eos = static_cast<uint64_t>(ctx.Int("eos"));
    header_.vocab_size = static_cast<uint64_t>(ctx.Int("vocab_size"));
    header_.token_bytes = header_.vocab_size <= 65536 ? 2 : 4;
    header_.record_tokens = record_tokens_;
  }

  Status Process(int, const Batch& batch, Emitter&) override {
    WEIR_ASSIGN_OR_RETURN(const IntListColumn* ids, batch.Get<IntListColumn>(column_));
    for (const auto& doc : *ids) {
      // A document's split depends only on (seed, its position in the stream).
      bool val = UnitInterval(SplitMix64(seed_ ^ SplitMix64(documents_++))) < val_fraction_;
      Split& split = val ? val_ : train_;
      for (int64_t id : doc) {
        if (id < 0 || static_cast<uint64_t>(id) >= header_.vocab_size) {
          return ctx_.Error("token id " + std::to_string(id) + " in document " +
                            std::to_string(documents_ - 1) + " is outside the vocabulary [0, " +
                            std::to_string(header_.vocab_size) + ")");
        }
        WEIR_RETURN_IF_ERROR(Push(split, static_cast<uint32_t>(id)));
      }
      WEIR_RETURN_IF_ERROR(Push(split, static_cast<uint32_t>(header_.eos)));
      ++split.documents;
    }
    return Status();
  }

  Status Finish(Emitter&) override {
    for (Split* s : {&train_, &val_}) {
      s->dropped = s->pending.size() % record_tokens_;
      s->pending.resize(s->pending.size() - s->dropped);
      if (!s->pending.empty()) WEIR_RETURN_IF_ERROR(Flush(*s));
    }
    std::string json = "{\"record_tokens\": " + std::to_string(record_tokens_) +
                       ", \"eos\": " + std::to_string(header_.eos) +
                       ", \"vocab_size\": " + std::to_string(header_.vocab_size);
    for (const auto& [name, s] : {std::pair{"train", &train_}, std::pair{"val", &val_}}) {
      json += std::string(", \"") + name + "\": {\"documents\": " + std::to_string(s->documents) +
              ", \"records\": " + std::to_string(s->records) +
              ", \"shards\": " + std::to_string(s->shards) +
              ", \"tokens_dropped\": " + std::to_string(s->dropped) + "}";
    }
    WEIR_RETURN_IF_ERROR(WriteFileAtomically(dir_ / "shards.json", json + "}\n"));
    ctx_.Metric(0, {{"documents", static_cast<double>(documents_)},
                    {"train_records", static_cast<double>(train_.records)},
                    {"val_records", static_cast<double>(val_.records)}});
    return Status();
  }

 private:
  struct Split {
    explicit Split(std::string n) : name(std::move(n)) {}
    std::string name;
    std::vector<uint32_t> pending;  // tokens not yet in a written shard
    uint64_t documents = 0, records = 0, shards = 0, dropped = 0;
  };

  Status Push(Split& s, uint32_t token) {
    s.pending.push_back(token);
    if (s.pending.size() == per_shard_ * record_tokens_) return Flush(s);
    return Status();
  }

  Status Flush(Split& s) {
    ShardHeader h = header_;
    h.records = s.pending.size() / record_tokens_;
    char name[32];
    std::snprintf(name, sizeof(name), "%s-%05llu.tok", s.name.c_str(),
                  static_cast<unsigned long long>(s.shards));
    WEIR_RETURN_IF_ERROR(WriteShard(dir_ / name, h, s.pending));
    s.records += h.records;
    ++s.shards;
    s.pending.clear();
    return Status();
  }

  const NodeContext& ctx_;
  std::string column_;
  uint64_t record_tokens_, per_shard_;
  double val_fraction_;
  uint64_t seed_;
  std::filesystem::path dir_;
  ShardHeader header_;
  Split train_{"train"};
  Split val_{"val"};
  uint64_t documents_ = 0;
};

class TokenShards : public StreamKernel {
 public:
  TokenShards(const NodeContext& ctx, std::vector<MappedShard> shards)
      : shards_(std::move(shards)),
        batch_(ctx.Int("batch_size")),
        shuffle_(ctx.Bool("shuffle")),
        seed_(static_cast<uint64_t>(ctx.Int("seed"))),
        limit_(ctx.Int("batches")),
        epochs_(ctx.Int("epochs")) {
    for (size_t s = 0; s < shards_.size(); ++s)
      for (uint64_t r = 0; r < shards_[s].header().records; ++r) records_.push_back({s, r});
  }

  Status Init(const NodeContext& ctx) {
    if (shards_.empty()) return ctx.Error("no token shards of split '" + ctx.String("split") + "'");
    const ShardHeader& first = shards_[0].header();
    for (const MappedShard& s : shards_) {
      if (s.header().record_tokens != first.record_tokens)
        return ctx.Error("token shards disagree on the record length");
    }
    seq_len_ = static_cast<int64_t>(first.record_tokens) - 1;
    if (records_.empty()) return ctx.Error("the token shards hold no records");
    // Resuming: the train split continues after the batches the trainer already consumed; other
    // splits (evaluation) start over, as they do in every run.
    if (ctx.String("split") == "train") {
      WEIR_ASSIGN_OR_RETURN(next_, ctx.ResumedDataPosition());
    }
    return Status();
  }

  StatusOr<bool> Produce(Emitter& out) override {
    if (limit_ > 0 && next_ >= limit_) return false;
    auto n = static_cast<int64_t>(records_.size());
    if (epochs_ > 0 && next_ * batch_ >= epochs_ * n) return false;
    Tensor tokens = Tensor::Empty(DT_I64, {batch_, seq_len_});
    Tensor targets = Tensor::Empty(DT_I64, {batch_, seq_len_});
    int64_t* tp = tokens.data<int64_t>();
    int64_t* gp = targets.data<int64_t>();
    for (int64_t b = 0; b < batch_; ++b) {
      // Row b of batch `next_` is position next_·batch + b of the endless sequence of epochs,
      // each a permutation drawn from (seed, epoch): a pure function of the batch number.
      int64_t position = next_ * batch_ + b;
      const auto& [shard, record] =
          records_[static_cast<size_t>(Order(position / n)[static_cast<size_t>(position % n)])];
      for (int64_t t = 0; t < seq_len_; ++t) {
        tp[b * seq_len_ + t] = shards_[shard].Token(record, static_cast<uint64_t>(t));
        gp[b * seq_len_ + t] = shards_[shard].Token(record, static_cast<uint64_t>(t) + 1);
      }
    }
    Batch batch;
    WEIR_RETURN_IF_ERROR(batch.Set("tokens", tokens));
    WEIR_RETURN_IF_ERROR(batch.Set("targets", targets));
    batch.meta()["batch_index"] = std::to_string(next_);
    ++next_;
    out.Emit(std::move(batch));
    return true;
  }

 private:
  // The order of records in an epoch (cached for the current one).
  const std::vector<int64_t>& Order(int64_t epoch) {
    if (epoch != order_epoch_) {
      order_.resize(records_.size());
      for (size_t i = 0; i < order_.size(); ++i) order_[i] = static_cast<int64_t>(i);
      if (shuffle_) {
        std::mt19937_64 rng(SplitMix64(seed_ ^ SplitMix64(static_cast<uint64_t>(epoch))));
        for (size_t i = order_.size(); i > 1; --i) std::swap(order_[i - 1], order_[rng() % i]);
      }
      order_epoch_ = epoch;
    }
    return order_;
  }

  std::vector<MappedShard> shards_;
  std::vector<std::pair<size_t, uint64_t>> records_;  // (shard, record) in file order
  int64_t batch_;
  bool shuffle_;
  uint64_t seed_;
  int64_t limit_, epochs_;
  int64_t seq_len_ = 0;
  int64_t next_ = 0;
  std::vector<int64_t> order_;
  int64_t order_epoch_ = -1;
};

}  // namespace

void RegisterShards(Registrar& r) {
  r.StreamOp("data.PackTokens")
      .Doc(
          "Packs tokenized documents into token shards (plugins/data/README.md has the format): "
          "each document followed by `eos`, back to back, cut into records of seq_len + 1 "
          "tokens; a share `val_fraction` of the documents (chosen by seed and position) goes "
          "to the val split. Writes <dir>/train-NNNNN.tok, val-NNNNN.tok and shards.json, each "
          "atomically; the tokens after the last full record are dropped and counted.")
      .Input("in", "batch", "documents with an int-list column of token ids")
      .Attr<std::string>("ids_column", "ids", "the token ids")
      .RequiredAttr<int64_t>("seq_len", "training sequence length (records hold one more)", Min(1))
      .RequiredAttr<int64_t>("eos", "the end-of-document token id", Min(0))
      .RequiredAttr<int64_t>("vocab_size", "ids must be below it; up to 65,536 uses 2 bytes",
                             Min(1))
      .Attr<double>("val_fraction", 0.0, "share of documents for the val split", Min(0.0), Max(1.0))
      .Attr<int64_t>("seed", 0, "seed of the train/val choice")
      .Attr<int64_t>("records_per_shard", 8192, "records per shard file", Min(1))
      .Attr<std::string>("dir", "shards",
                         "output folder: relative to the run's output folder, or absolute")
      .Stateful()
      .Factory([](const NodeContext& ctx) -> StatusOr<std::unique_ptr<StreamKernel>> {
        return std::unique_ptr<StreamKernel>(new PackTokens(ctx));
      });
  r.StreamOp("data.TokenShards")
      .Doc(
          "Training batches from token shards: `tokens` and `targets` (shifted by one), i64 "
          "[batch_size, seq_len]. Records are drawn in a permutation per epoch that depends only "
          "on (seed, epoch), so every record is read once per epoch and a resumed run "
          "(weir run --resume) continues with exactly the batches an uninterrupted run would "
          "have seen; readers of other splits than train (evaluation) start over.")
      .Output("out", "batch", "tokens and targets")
      .RequiredAttr<std::string>("path", "a folder of shards (or one shard); relative to the graph")
      .Attr<std::string>("split", "train", "which shards: <split>-*.tok")
      .Attr<int64_t>("batch_size", 8, "rows per batch", Min(1))
      .Attr("shuffle", true, "draw records in a seeded permutation per epoch (else file order)")
      .Attr<int64_t>("seed", 0, "seed of the permutations")
      .Attr<int64_t>("epochs", 0, "stop after this many passes (0: never; the trainer stops it)",
                     Min(0))
      .Attr<int64_t>("batches", 0, "stop after this many batches (0: never)", Min(0))
      .Stateful()
      .Factory([](const NodeContext& ctx) -> StatusOr<std::unique_ptr<StreamKernel>> {
        std::filesystem::path path = ctx.InputPath(ctx.String("path"));
        std::string prefix = ctx.String("split") + "-";
        WEIR_ASSIGN_OR_RETURN(auto files, ListInputFiles(path, ".tok"));
        std::vector<MappedShard> shards;
        for (const auto& f : files) {
          if (std::filesystem::is_directory(path) && !f.filename().string().starts_with(prefix))
            continue;
          WEIR_ASSIGN_OR_RETURN(MappedShard s, MappedShard::Open(f));
          shards.push_back(std::move(s));
        }
        auto kernel = std::make_unique<TokenShards>(ctx, std::move(shards));
        WEIR_RETURN_IF_ERROR(kernel->Init(ctx));
        return std::unique_ptr<StreamKernel>(std::move(kernel));
      });
}

}  // namespace weir::data
