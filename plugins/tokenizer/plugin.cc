// The tokenizer plugin: the `tokenizer` resource (a tokenizer.json or tiktoken rank file) and
// the tokenizer.Encode / tokenizer.Decode stream ops.
#include "weir/plugin.h"

#include "bpe.h"

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
    WEIR_ASSIGN_OR_RETURN(const IntListColumn* ids, batch.Get<IntListColumn>(in_));
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
  r.StreamOp("tokenizer.Decode")
      .Doc("Adds the text of an int-list column of token ids.")
      .Input("in", "batch", "rows with an ids column")
      .Output("out", "batch", "the same rows with the text column added")
      .AttrOfType("tokenizer", ATTR_RESOURCE, std::nullopt, "the tokenizer resource")
      .Attr<std::string>("ids_column", "ids", "the ids to decode")
      .Attr<std::string>("text_column", "text", "the column of text to add")
      .Factory(Make<Decode>());
}

}  // namespace
}  // namespace weir::tokenizer

WEIR_PLUGIN("tokenizer", "0.1.0", weir::tokenizer::Register)
