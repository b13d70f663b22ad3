// nn.Embedding: rows of a learned table picked by integer ids.
#include "nn_common.h"

namespace weir::nn {
namespace {

Status CheckIds(const TensorType& ids) {
  if (ids.dtype != DT_I64 && ids.dtype != DT_I32)
    return InvalidArgument("ids must be i64 or i32, got " + ids.ToString());
  return Status();
}

Status EmbeddingShape(ShapeContext& ctx) {
  WEIR_RETURN_IF_ERROR(CheckIds(ctx.input(0)));
  Shape out = ctx.input(0).shape;
  out.push_back(ctx.attrs().Int("dim"));
  ctx.set_output(0, {ctx.attrs().Type("T"), out});
  return Status();
}

int64_t IdAt(const Tensor& ids, int64_t i) {
  return ids.dtype() == DT_I64 ? ids.data<int64_t>()[i] : ids.data<int32_t>()[i];
}

Status CheckRange(const Tensor& ids, int64_t vocab) {
  for (int64_t i = 0; i < ids.numel(); ++i) {
    int64_t id = IdAt(ids, i);
    if (id < 0 || id >= vocab) {
      return InvalidArgument("id " + std::to_string(id) + " at position " + std::to_string(i) +
                             " is outside the table [0, " + std::to_string(vocab) + ")");
    }
  }
  return Status();
}

Status EmbeddingCpu(KernelContext& ctx) {
  Tensor ids = ctx.input(0).Contiguous();
  const Tensor& table = ctx.input(1);
  int64_t dim = table.dim(1);
  WEIR_RETURN_IF_ERROR(CheckRange(ids, table.dim(0)));
  size_t row_bytes = static_cast<size_t>(dim) * DataTypeSize(table.dtype());
  const char* src = static_cast<const char*>(table.raw_data());
  char* dst = static_cast<char*>(ctx.output(0).raw_data());
  ParallelFor(ids.numel(), 256, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i)
      std::memcpy(dst + i * row_bytes, src + IdAt(ids, i) * row_bytes, row_bytes);
  });
  return Status();
}

Status EmbeddingGradShape(ShapeContext& ctx) {
  WEIR_RETURN_IF_ERROR(CheckIds(ctx.input(0)));
  const TensorType& dy = ctx.input(1);
  ctx.set_output(0, {dy.dtype, {ctx.attrs().Int("num_embeddings"), dy.shape.back()}});
  return Status();
}

// dTable[id] += dy[i] for every position i; rows are summed in the accumulator type.
Status EmbeddingGradCpu(KernelContext& ctx) {
  Tensor ids = ctx.input(0).Contiguous();
  Tensor dy = ctx.input(1).Contiguous();
  Tensor& out = ctx.output(0);
  WEIR_RETURN_IF_ERROR(CheckRange(ids, out.dim(0)));
  return DispatchFloat(dy.dtype(), [&](auto tag) {
    using T = decltype(tag);
    using A = AccumulatorOf<T>;
    int64_t vocab = out.dim(0), dim = out.dim(1);
    std::vector<A> acc(static_cast<size_t>(vocab * dim), A(0));
    const T* g = dy.data<T>();
    for (int64_t i = 0; i < ids.numel(); ++i) {
      A* row = acc.data() + IdAt(ids, i) * dim;
      for (int64_t d = 0; d < dim; ++d) row[d] += Widen(g[i * dim + d]);
    }
    T* o = out.data<T>();
    for (size_t k = 0; k < acc.size(); ++k) o[k] = Narrow<T>(acc[k]);
    return Status();
  });
}

Status EmbeddingGrad(GradContext& g) {
  if (!g.needs_grad(1)) return Status();
  WEIR_ASSIGN_OR_RETURN(ValueRef dw, g.Op1("nn.EmbeddingGrad", {g.input(0), g.grad(0)},
                                           {{"num_embeddings", Int(g.input_type(1).shape[0])}}));
  g.set_input_grad(1, dw);
  return Status();
}

}  // namespace

void RegisterEmbedding(Registrar& r) {
  r.TensorOp("nn.Embedding")
      .Doc(
          "Looks up rows of a learned table [num_embeddings, dim] by integer id. An id outside "
          "the table is an error naming it.")
      .Input("ids", "i64", "integer ids (i64 or i32), any shape")
      .Output("y", "T", "[..., dim]")
      .RequiredAttr<int64_t>("num_embeddings", "rows in the table (vocabulary size)", Min(1))
      .RequiredAttr<int64_t>("dim", "row width", Min(1))
      .Attr<double>("init_std", 0.02, "standard deviation of the initial table", Min(0.0))
      .AttrOfType("T", ATTR_TYPE, "f32", "dtype of the table and output")
      .Param(
          "weight",
          [](const ShapeContext& c) -> StatusOr<weir::Shape> {
            return weir::Shape{c.attrs().Int("num_embeddings"), c.attrs().Int("dim")};
          },
          [](const Attrs& a, const weir::Shape&) { return Init::Normal(a.Float("init_std")); })
      .Shape(EmbeddingShape)
      .Kernel("cpu", EmbeddingCpu)
      .Gradient(EmbeddingGrad);
  r.TensorOp("nn.EmbeddingGrad")
      .Doc("Gradient of nn.Embedding's table: sums dy rows into the rows their ids name.")
      .Input("ids", "i64", "the ids of the forward pass")
      .Input("dy", "T", "[..., dim]")
      .Output("dtable", "T", "[num_embeddings, dim]")
      .RequiredAttr<int64_t>("num_embeddings", "rows in the table", Min(1))
      .Shape(EmbeddingGradShape)
      .Kernel("cpu", EmbeddingGradCpu, KernelFloatTypes());
}

}  // namespace weir::nn
