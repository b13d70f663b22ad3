// nn.SegmentIds: supervised fine-tuning packs several documents into one row, each ending with a
// separator token; the segment id of a position is the number of separators strictly before it
// in its row, so a document's separator still belongs to it and the next document starts after.
// nn.Attention takes these ids to keep the documents from attending to each other.
#include "segments/segment_ids.h"

#include "nn_common.h"

namespace weir::nn {
namespace {

Status SegmentIdsShape(ShapeContext& ctx) {
  const TensorType& tokens = ctx.input(0);
  if (tokens.shape.size() != 2 || (tokens.dtype != DT_I64 && tokens.dtype != DT_I32)) {
    return InvalidArgument("tokens must be integer ids [batch, time] (i64 or i32), got " +
                           tokens.ToString());
  }
  ctx.set_output(0, {DT_I64, tokens.shape});
  return Status();
}

template <typename Id>
void CountSeparators(const Id* tokens, int64_t rows, int64_t time, int64_t separator,
                     int64_t* segments) {
  for (int64_t r = 0; r < rows; ++r) {
    int64_t before = 0;
    for (int64_t t = 0; t < time; ++t) {
      segments[r * time + t] = before;
      before += static_cast<int64_t>(tokens[r * time + t]) == separator;
    }
  }
}

Status SegmentIdsCpu(KernelContext& ctx) {
  Tensor tokens = ctx.input(0).Contiguous();
  int64_t separator = ctx.attrs().Int("separator");
  int64_t rows = tokens.dim(0), time = tokens.dim(1);
  int64_t* segments = ctx.output(0).data<int64_t>();
  if (separator < 0) {  // no packing: ids are never negative, so no position would count one
    std::fill(segments, segments + tokens.numel(), int64_t{0});
  } else if (tokens.dtype() == DT_I64) {
    CountSeparators(tokens.data<int64_t>(), rows, time, separator, segments);
  } else {
    CountSeparators(tokens.data<int32_t>(), rows, time, separator, segments);
  }
  return Status();
}

}  // namespace

void RegisterSegmentIds(Registrar& r) {
  r.TensorOp("nn.SegmentIds")
      .Doc(
          "The packed document of each token: the number of separator tokens strictly before "
          "each position in its row (a document ends with its separator; the next starts after "
          "it). separator -1: all zeros, one document per row. The ids never decrease along a "
          "row, as nn.Attention's segments must. Integer output: no gradient.")
      .Input("tokens", "i64", "[batch, time] token ids (i64 or i32)")
      .Output("segments", "i64", "[batch, time] segment ids, 0 for the first document")
      .Attr<int64_t>("separator", -1, "the token that ends a document; -1: no packing", Min(-1))
      .Shape(SegmentIdsShape)
      .Kernel("cpu", SegmentIdsCpu, {DT_I64});
}

}  // namespace weir::nn
