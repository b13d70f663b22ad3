// The tokenizer plugin: the `tokenizer` resource (a tokenizer.json or tiktoken rank file) and
// the tokenizer.Encode, tokenizer.Decode and tokenizer.Train stream ops.
#include "weir/plugin.h"

#include <sstream>

#include "bpe.h"
#include "trainer.h"

namespace weir::tokenizer {
namespace {

class TokenizerResource : public Resource {
 public:
  explicit TokenizerResource(std::shared_ptr<Tokenizer> t) : tokenizer(std::move(t)) {}
  std::shared_ptr<Tokenizer> tokenizer;  // immutable after loading: safe from any thread
};

class Encode : public StreamKernel {
 public:
  Encode(const NodeContext& ctx, std::shared_ptr<Tokenizer> t)
      : tokenizer_(std::move(t)),
        in_(ctx.String("text_column")),
        out_(ctx.String("ids_column")),
        specials_(ctx.Bool("specials")) {}

  Status Process(int, const Batch& batch, Emitter& out) override {
    WEIR_ASSIGN_OR_RETURN(const StringColumn* texts, batch.Get<StringColumn>(in_));
    IntListColumn ids(texts->size());
    for (size_t i = 0; i < texts->size(); ++i) ids[i] = tokenizer_->Encode((*texts)[i], specials_);
    Batch result = batch;
    WEIR_RETURN_IF_ERROR(result.Set(out_, std::move(ids)));
    out.Emit(std::move(result));
    return Status();
  }

 private:
  std::shared_ptr<Tokenizer> tokenizer_;
  std::string in_, out_;
  bool specials_;
};

class Decode : public StreamKernel {
 public:
  Decode(const NodeContext& ctx, std::shared_ptr<Tokenizer> t)
      : ctx_(ctx),
        tokenizer_(std::move(t)),
        in_(ctx.String("ids_column")),
        out_(ctx.String("text_column")) {}

  Status Process(int, const Batch& batch, Emitter& out) override {
    // Ids as int lists, or as strings of whitespace-separated ids (JSON Lines written by hand).
    IntListColumn parsed;
    const IntListColumn* ids = nullptr;
    if (auto lists = batch.Get<IntListColumn>(in_); lists.ok()) {
      ids = *lists;
    } else {
      WEIR_ASSIGN_OR_RETURN(const StringColumn* strings, batch.Get<StringColumn>(in_));
      for (const std::string& s : *strings) {
        std::vector<int64_t> row;
        std::istringstream words(s);
        for (std::string w; words >> w;) {
          size_t used = 0;
          int64_t id = -1;
          try {
            id = std::stoll(w, &used);
          } catch (const std::exception&) {
            used = 0;
          }
          if (used != w.size())
            return ctx_.Error("'" + w + "' in column '" + in_ + "' is not a token id");
          row.push_back(id);
        }
        parsed.push_back(std::move(row));
      }
      ids = &parsed;
    }
    StringColumn texts;
    for (const auto& row : *ids) {
      auto text = tokenizer_->Decode(row);
      if (!text.ok()) return ctx_.Error(text.status().message());
      texts.push_back(std::move(*text));
    }
    Batch result = batch;
    WEIR_RETURN_IF_ERROR(result.Set(out_, std::move(texts)));
    out.Emit(std::move(result));
    return Status();
  }

 private:
  const NodeContext& ctx_;
  std::shared_ptr<Tokenizer> tokenizer_;
  std::string in_, out_;
};

// Learns a tokenizer from the text it receives and writes it when the stream ends.
class Train : public StreamKernel {
 public:
  Train(const NodeContext& ctx, PreTokenizer pre)
      : ctx_(ctx),
        column_(ctx.String("text_column")),
        emit_(ctx.Bool("emit_encoded")),
        trainer_(std::move(pre), ctx.Int("vocab_size"), ctx.StringList("specials"),
                 static_cast<size_t>(ctx.Int("max_pieces"))) {}

  Status Process(int, const Batch& batch, Emitter&) override {
    WEIR_ASSIGN_OR_RETURN(const StringColumn* texts, batch.Get<StringColumn>(column_));
    for (const std::string& t : *texts) trainer_.Add(t);
    documents_ += texts->size();
    if (emit_) held_.push_back(batch);
    return Status();
  }

  Status Finish(Emitter& out) override {
    trainer_.Train();
    ctx_.Metric(0, {{"documents", static_cast<double>(documents_)},
                    {"merges", static_cast<double>(trainer_.merges().size())},
                    {"piece_occurrences_dropped", static_cast<double>(trainer_.pieces_dropped())}});
    std::filesystem::path file = ctx_.OutputPath(ctx_.String("dir")) / ctx_.String("file");
    WEIR_RETURN_IF_ERROR(trainer_.Save(file));
    if (!emit_) return Status();
    // The documents it learned from, encoded with what it learned: read back from the file
    // just written, so they are exactly what a later tokenizer.Encode would give.
    WEIR_ASSIGN_OR_RETURN(auto tokenizer, Tokenizer::Load(file));
    for (Batch& batch : held_) {
      WEIR_ASSIGN_OR_RETURN(const StringColumn* texts, batch.Get<StringColumn>(column_));
      IntListColumn ids;
      for (const std::string& t : *texts) ids.push_back(tokenizer->Encode(t));
      WEIR_RETURN_IF_ERROR(batch.Set(ctx_.String("ids_column"), std::move(ids)));
      out.Emit(std::move(batch));
    }
    held_.clear();
    return Status();
  }

 private:
  const NodeContext& ctx_;
  std::string column_;
  bool emit_;
  BpeTrainer trainer_;
  uint64_t documents_ = 0;
  std::vector<Batch> held_;  // with emit_encoded, the rows to encode when training is done
};

template <typename K>
StreamKernelFactory Make() {
  return [](const NodeContext& ctx) -> StatusOr<std::unique_ptr<StreamKernel>> {
    WEIR_ASSIGN_OR_RETURN(TokenizerResource * t, ctx.Resource<TokenizerResource>("tokenizer"));
    return std::unique_ptr<StreamKernel>(new K(ctx, t->tokenizer));
  };
}

void Register(Registrar& r) {
  r.ResourceKind("tokenizer")
      .Doc(
          "A byte-level BPE tokenizer loaded from a Hugging Face tokenizer.json (BPE model, "
          "Split/ByteLevel pre-tokenizers, added tokens) or a tiktoken rank file.")
      .Attr<std::string>("file", "", "tokenizer.json or tiktoken rank file; relative to the graph")
      .Attr<std::string>("pattern", "cl100k",
                         "tiktoken files only: the pre-tokenizer regex, or cl100k / gpt2")
      .Factory([](const ResourceContext& ctx) -> StatusOr<std::shared_ptr<Resource>> {
        WEIR_ASSIGN_OR_RETURN(auto t, Tokenizer::Load(ctx.InputPath(ctx.attrs().String("file")),
                                                      ctx.attrs().String("pattern")));
        return std::shared_ptr<Resource>(std::make_shared<TokenizerResource>(std::move(t)));
      });
  r.StreamOp("tokenizer.Encode")
      .Doc("Adds the token ids of a text column as a column of int lists.")
      .Input("in", "batch", "rows with a text column")
      .Output("out", "batch", "the same rows with the ids column added")
      .AttrOfType("tokenizer", ATTR_RESOURCE, std::nullopt, "the tokenizer resource")
      .Attr<std::string>("text_column", "text", "the text to encode")
      .Attr<std::string>("ids_column", "ids", "the column of ids to add")
      .Attr("specials", true, "special tokens written in the text become their ids")
      .Factory(Make<Encode>());
  r.StreamOp("tokenizer.Train")
      .Doc(
          "Trains a byte-level BPE tokenizer on a text column and writes it as a Hugging Face "
          "tokenizer.json when the stream ends: the 256 bytes, one token per merge (the most "
          "frequent adjacent pair first, 64-bit counts, ties to the smaller ids), then the "
          "special tokens. Pieces are counted in a table of at most max_pieces entries (the "
          "rarest are dropped when it fills), so memory stays bounded on any corpus.")
      .Input("in", "batch", "rows with a text column")
      .Output("encoded", "batch",
              "with emit_encoded: the same rows and an ids column, encoded with the trained "
              "tokenizer when training is done")
      .Attr<std::string>("text_column", "text", "the text to learn from")
      .Attr("emit_encoded", false,
            "keep the rows and emit them encoded at the end (so one graph can train a tokenizer "
            "and pack token shards; the rows are held in memory)")
      .Attr<std::string>("ids_column", "ids", "with emit_encoded: the column of ids added")
      .RequiredAttr<int64_t>("vocab_size", "tokens in all, special tokens included", Min(257))
      .Attr("specials", std::vector<std::string>{}, "special tokens, given the last ids")
      .Attr<std::string>("pre_tokenizer", "deepseek",
                         "deepseek (digits by 1-3, CJK runs, letters/punctuation/newlines), "
                         "cl100k or gpt2",
                         OneOf{"deepseek", "cl100k", "gpt2"})
      .Attr<int64_t>("max_pieces", 5000000, "bound of the piece count table", Min(1000))
      .Attr<std::string>("file", "tokenizer.json", "output file, relative to `dir`")
      .Attr<std::string>("dir", ".", "its folder: relative to the run's output folder, or absolute")
      .Stateful()
      .Factory([](const NodeContext& ctx) -> StatusOr<std::unique_ptr<StreamKernel>> {
        std::string which = ctx.String("pre_tokenizer");
        std::vector<std::string> patterns;
        if (which == "deepseek") {
          patterns.assign(std::begin(kDeepSeekPatterns), std::end(kDeepSeekPatterns));
        } else {
          patterns = {which == "cl100k" ? kCl100kPattern : kGpt2Pattern};
        }
        WEIR_ASSIGN_OR_RETURN(PreTokenizer pre, PreTokenizer::Make(patterns));
        return std::unique_ptr<StreamKernel>(new Train(ctx, std::move(pre)));
      });
  r.StreamOp("tokenizer.Decode")
      .Doc("Adds the text of an int-list column of token ids.")
      .Input("in", "batch", "rows with an ids column")
      .Output("out", "batch", "the same rows with the text column added")
      .AttrOfType("tokenizer", ATTR_RESOURCE, std::nullopt, "the tokenizer resource")
      .Attr<std::string>("ids_column", "ids",
                         "the ids to decode: int lists, or strings of space-separated ids")
      .Attr<std::string>("text_column", "text", "the column of text to add")
      .Factory(Make<Decode>());
}

}  // namespace
}  // namespace weir::tokenizer

WEIR_PLUGIN("tokenizer", "0.1.0", weir::tokenizer::Register)
