// Shape ops: nn.Reshape, nn.Transpose, nn.Concat, nn.Split, nn.Slice (and nn.SliceGrad),
// nn.Expand (and nn.ExpandGrad).
#include <numeric>

#include "nn_common.h"

namespace weir::nn {
namespace {

// Copies a strided view into dense memory of the same type.
void CopyDense(const Tensor& src, Tensor& dst) {
  if (src.is_contiguous()) {
    std::memcpy(dst.raw_data(), src.raw_data(), dst.nbytes());
    return;
  }
  // Walk the source's index space; a dense innermost dim (a split's or a slice's rows) is copied
  // a row at a time, any other element by element.
  size_t elt = DataTypeSize(src.dtype());
  const char* base = static_cast<const char*>(src.raw_data());
  char* out = static_cast<char*>(dst.raw_data());
  int rank = src.rank();
  if (src.numel() == 0) return;
  int64_t run = rank > 0 && src.strides().back() == 1 ? src.shape().back() : 1;
  int outer_rank = run > 1 ? rank - 1 : rank;
  std::vector<int64_t> idx(static_cast<size_t>(rank), 0);
  for (int64_t i = 0; i < src.numel(); i += run) {
    int64_t off = 0;
    for (int d = 0; d < outer_rank; ++d)
      off += idx[static_cast<size_t>(d)] * src.strides()[static_cast<size_t>(d)];
    std::memcpy(out + i * static_cast<int64_t>(elt), base + off * static_cast<int64_t>(elt),
                static_cast<size_t>(run) * elt);
    for (int d = outer_rank - 1; d >= 0; --d) {
      if (++idx[static_cast<size_t>(d)] < src.shape()[static_cast<size_t>(d)]) break;
      idx[static_cast<size_t>(d)] = 0;
    }
  }
}

StatusOr<Shape> ReshapeTarget(const Shape& in, const std::vector<int64_t>& spec) {
  Shape out;
  int infer = -1;
  int64_t known = 1;
  for (size_t i = 0; i < spec.size(); ++i) {
    int64_t s = spec[i];
    if (s == 0) {
      if (i >= in.size())
        return InvalidArgument("shape " + ShapeString(spec) + ": 0 copies dim " +
                               std::to_string(i) + ", which " + ShapeString(in) + " lacks");
      s = in[i];
    }
    if (s == -1) {
      if (infer >= 0) return InvalidArgument("shape " + ShapeString(spec) + " has two -1");
      infer = static_cast<int>(i);
      out.push_back(1);
      continue;
    }
    if (s < 0) return InvalidArgument("shape " + ShapeString(spec) + " has a negative dim");
    known *= s;
    out.push_back(s);
  }
  int64_t total = NumElements(in);
  if (infer >= 0) {
    if (known == 0 || total % known != 0)
      return InvalidArgument("cannot reshape " + ShapeString(in) + " to " + ShapeString(spec));
    out[static_cast<size_t>(infer)] = total / known;
  }
  if (NumElements(out) != total) {
    return InvalidArgument("cannot reshape " + ShapeString(in) + " (" + std::to_string(total) +
                           " elements) to " + ShapeString(spec));
  }
  return out;
}

Status ReshapeShape(ShapeContext& ctx) {
  WEIR_ASSIGN_OR_RETURN(Shape out, ReshapeTarget(ctx.input(0).shape, ctx.attrs().IntList("shape")));
  ctx.set_output(0, {ctx.input(0).dtype, out});
  return Status();
}

Status CopyKernel(KernelContext& ctx) {
  CopyDense(ctx.input(0), ctx.output(0));
  return Status();
}

Status ReshapeGrad(GradContext& g) {
  WEIR_ASSIGN_OR_RETURN(ValueRef d,
                        g.Op1("nn.Reshape", {g.grad(0)}, {{"shape", Ints(g.input_type(0).shape)}}));
  g.set_input_grad(0, d);
  return Status();
}

StatusOr<std::vector<int64_t>> Permutation(const Attrs& a, int rank) {
  std::vector<int64_t> perm = a.IntList("perm");
  std::vector<int64_t> sorted = perm;
  std::sort(sorted.begin(), sorted.end());
  std::vector<int64_t> iota(static_cast<size_t>(rank));
  std::iota(iota.begin(), iota.end(), 0);
  if (sorted != iota)
    return InvalidArgument("perm " + ShapeString(perm) + " is not a permutation of " +
                           std::to_string(rank) + " dims");
  return perm;
}

Status TransposeShape(ShapeContext& ctx) {
  const TensorType& x = ctx.input(0);
  WEIR_ASSIGN_OR_RETURN(auto perm, Permutation(ctx.attrs(), static_cast<int>(x.shape.size())));
  Shape out;
  for (int64_t p : perm) out.push_back(x.shape[static_cast<size_t>(p)]);
  ctx.set_output(0, {x.dtype, out});
  return Status();
}

Status TransposeCpu(KernelContext& ctx) {
  const Tensor& x = ctx.input(0);
  WEIR_ASSIGN_OR_RETURN(auto perm, Permutation(ctx.attrs(), x.rank()));
  // Build the permuted view by successive swaps, then copy it densely.
  Tensor view = x;
  std::vector<int64_t> where(perm.size());
  std::iota(where.begin(), where.end(), 0);  // where[d] = original dim now at position d
  for (size_t d = 0; d < perm.size(); ++d) {
    size_t from =
        static_cast<size_t>(std::find(where.begin(), where.end(), perm[d]) - where.begin());
    if (from != d) {
      view = view.Transpose(static_cast<int>(d), static_cast<int>(from));
      std::swap(where[d], where[from]);
    }
  }
  CopyDense(view, ctx.output(0));
  return Status();
}

Status TransposeGrad(GradContext& g) {
  std::vector<int64_t> perm = g.attrs().IntList("perm"), inverse(perm.size());
  for (size_t i = 0; i < perm.size(); ++i)
    inverse[static_cast<size_t>(perm[i])] = static_cast<int64_t>(i);
  WEIR_ASSIGN_OR_RETURN(ValueRef d, g.Op1("nn.Transpose", {g.grad(0)}, {{"perm", Ints(inverse)}}));
  g.set_input_grad(0, d);
  return Status();
}

int Axis(int64_t axis, size_t rank) {
  return static_cast<int>(axis < 0 ? axis + static_cast<int64_t>(rank) : axis);
}

Status ConcatShape(ShapeContext& ctx) {
  const TensorType& first = ctx.input(0);
  int axis = Axis(ctx.attrs().Int("axis"), first.shape.size());
  if (axis < 0 || axis >= static_cast<int>(first.shape.size()))
    return InvalidArgument("axis " + std::to_string(ctx.attrs().Int("axis")) + " is outside " +
                           first.ToString());
  Shape out = first.shape;
  out[static_cast<size_t>(axis)] = 0;
  for (int i = 0; i < ctx.num_inputs(); ++i) {
    const TensorType& t = ctx.input(i);
    Shape a = t.shape, b = first.shape;
    if (a.size() == b.size()) a[static_cast<size_t>(axis)] = b[static_cast<size_t>(axis)] = 0;
    if (t.dtype != first.dtype || a != b)
      return InvalidArgument("input " + std::to_string(i) + " " + t.ToString() +
                             " does not concatenate with " + first.ToString() + " on axis " +
                             std::to_string(axis));
    out[static_cast<size_t>(axis)] += t.shape[static_cast<size_t>(axis)];
  }
  ctx.set_output(0, {first.dtype, out});
  return Status();
}

Status ConcatCpu(KernelContext& ctx) {
  Tensor& out = ctx.output(0);
  int axis = Axis(ctx.attrs().Int("axis"), static_cast<size_t>(out.rank()));
  int64_t offset = 0;
  for (int i = 0; i < ctx.num_inputs(); ++i) {
    const Tensor& in = ctx.input(i);
    int64_t n = in.dim(axis);
    if (n == 0) continue;  // an empty part (a decoding cache before the first token)
    Tensor dst = out.Slice(axis, offset, offset + n);
    // dst is a strided view of the output: copy through the dense copy of the input.
    Tensor src = in.Contiguous();
    int64_t outer = 1, inner = 1;
    for (int d = 0; d < axis; ++d) outer *= out.dim(d);
    for (int d = axis; d < out.rank(); ++d) inner *= (d == axis ? n : out.dim(d));
    size_t elt = DataTypeSize(out.dtype());
    int64_t out_row = inner / n * out.dim(axis);
    for (int64_t o = 0; o < outer; ++o) {
      std::memcpy(static_cast<char*>(dst.raw_data()) + o * out_row * static_cast<int64_t>(elt),
                  static_cast<const char*>(src.raw_data()) + o * inner * static_cast<int64_t>(elt),
                  static_cast<size_t>(inner) * elt);
    }
    offset += n;
  }
  return Status();
}

Status ConcatGrad(GradContext& g) {
  int axis = Axis(g.attrs().Int("axis"), g.output_type(0).shape.size());
  int64_t offset = 0;
  for (int i = 0; i < g.num_inputs(); ++i) {
    int64_t n = g.input_type(i).shape[static_cast<size_t>(axis)];
    if (g.needs_grad(i)) {
      WEIR_ASSIGN_OR_RETURN(
          ValueRef d,
          g.Op1("nn.Slice", {g.grad(0)},
                {{"axis", Int(axis)}, {"begin", Int(offset)}, {"end", Int(offset + n)}}));
      g.set_input_grad(i, d);
    }
    offset += n;
  }
  return Status();
}

// nn.Slice's default end.
constexpr int64_t kToTheEnd = std::numeric_limits<int64_t>::max();

// [begin, end) of a dim of length n; negative values count from the end (-1: n - 1).
std::pair<int64_t, int64_t> SliceRange(const Attrs& a, int64_t n) {
  int64_t begin = a.Int("begin"), end = a.Int("end");
  if (end == kToTheEnd) end = n;
  return {begin < 0 ? begin + n : begin, end < 0 ? end + n : end};
}

Status SliceShape(ShapeContext& ctx) {
  const TensorType& x = ctx.input(0);
  int axis = Axis(ctx.attrs().Int("axis"), x.shape.size());
  bool in_range = axis >= 0 && axis < static_cast<int>(x.shape.size());
  auto [begin, end] = SliceRange(ctx.attrs(), in_range ? x.shape[static_cast<size_t>(axis)] : 0);
  if (!in_range || begin < 0 || end < begin || end > x.shape[static_cast<size_t>(axis)]) {
    return InvalidArgument("slice [" + std::to_string(begin) + ", " + std::to_string(end) +
                           ") of axis " + std::to_string(ctx.attrs().Int("axis")) +
                           " does not fit " + x.ToString());
  }
  Shape out = x.shape;
  out[static_cast<size_t>(axis)] = end - begin;
  ctx.set_output(0, {x.dtype, out});
  return Status();
}

Status SliceCpu(KernelContext& ctx) {
  const Tensor& x = ctx.input(0);
  int axis = Axis(ctx.attrs().Int("axis"), static_cast<size_t>(x.rank()));
  auto [begin, end] = SliceRange(ctx.attrs(), x.dim(axis));
  CopyDense(x.Slice(axis, begin, end), ctx.output(0));
  return Status();
}

Status SliceGrad(GradContext& g) {
  const Shape& in = g.input_type(0).shape;
  int axis = Axis(g.attrs().Int("axis"), in.size());
  int64_t begin = SliceRange(g.attrs(), in[static_cast<size_t>(axis)]).first;
  WEIR_ASSIGN_OR_RETURN(ValueRef d, g.Op1("nn.SliceGrad", {g.grad(0)},
                                          {{"axis", Int(axis)},
                                           {"begin", Int(begin)},
                                           {"size", Int(in[static_cast<size_t>(axis)])}}));
  g.set_input_grad(0, d);
  return Status();
}

Status SliceGradCpu(KernelContext& ctx) {
  Tensor& out = ctx.output(0);
  std::memset(out.raw_data(), 0, out.nbytes());
  const Tensor& dy = ctx.input(0);
  int axis = Axis(ctx.attrs().Int("axis"), static_cast<size_t>(out.rank()));
  int64_t begin = ctx.attrs().Int("begin");
  Tensor src = dy.Contiguous();
  int64_t outer = 1, inner = 1;
  for (int d = 0; d < axis; ++d) outer *= out.dim(d);
  for (int d = axis + 1; d < out.rank(); ++d) inner *= out.dim(d);
  size_t elt = DataTypeSize(out.dtype());
  int64_t n = dy.dim(axis), full = out.dim(axis);
  for (int64_t o = 0; o < outer; ++o) {
    std::memcpy(
        static_cast<char*>(out.raw_data()) +
            ((o * full + begin) * inner) * static_cast<int64_t>(elt),
        static_cast<const char*>(src.raw_data()) + (o * n * inner) * static_cast<int64_t>(elt),
        static_cast<size_t>(n * inner) * elt);
  }
  return Status();
}

// nn.Expand repeats a dim of size 1; seen as [outer, 1, inner] -> [outer, size, inner].
struct ExpandPlan {
  int axis;
  int64_t outer = 1, inner = 1;
};

StatusOr<ExpandPlan> PlanExpand(const Attrs& a, const Shape& x) {
  ExpandPlan p{Axis(a.Int("axis"), x.size())};
  if (p.axis < 0 || p.axis >= static_cast<int>(x.size()) || x[static_cast<size_t>(p.axis)] != 1) {
    return InvalidArgument("nn.Expand repeats a dim of size 1; axis " +
                           std::to_string(a.Int("axis")) + " of " + ShapeString(x) + " is not one");
  }
  for (int d = 0; d < p.axis; ++d) p.outer *= x[static_cast<size_t>(d)];
  for (size_t d = static_cast<size_t>(p.axis) + 1; d < x.size(); ++d) p.inner *= x[d];
  return p;
}

Status ExpandShape(ShapeContext& ctx) {
  WEIR_ASSIGN_OR_RETURN(ExpandPlan p, PlanExpand(ctx.attrs(), ctx.input(0).shape));
  Shape out = ctx.input(0).shape;
  out[static_cast<size_t>(p.axis)] = ctx.attrs().Int("size");
  ctx.set_output(0, {ctx.input(0).dtype, out});
  return Status();
}

Status ExpandCpu(KernelContext& ctx) {
  Tensor x = ctx.input(0).Contiguous();
  WEIR_ASSIGN_OR_RETURN(ExpandPlan p, PlanExpand(ctx.attrs(), x.shape()));
  int64_t size = ctx.attrs().Int("size");
  size_t row = static_cast<size_t>(p.inner) * DataTypeSize(x.dtype());
  const char* in = static_cast<const char*>(x.raw_data());
  char* out = static_cast<char*>(ctx.output(0).raw_data());
  for (int64_t o = 0; o < p.outer; ++o)
    for (int64_t r = 0; r < size; ++r)
      std::memcpy(out + static_cast<size_t>(o * size + r) * row, in + static_cast<size_t>(o) * row,
                  row);
  return Status();
}

Status ExpandGrad(GradContext& g) {
  WEIR_ASSIGN_OR_RETURN(
      ValueRef d, g.Op1("nn.ExpandGrad", {g.grad(0)}, {{"axis", Int(g.attrs().Int("axis"))}}));
  g.set_input_grad(0, d);
  return Status();
}

// Sums dy over the expanded dim, in the accumulator type, in a fixed order.
Status ExpandGradCpu(KernelContext& ctx) {
  Tensor dy = ctx.input(0).Contiguous();
  Shape kept = dy.shape();
  int axis = Axis(ctx.attrs().Int("axis"), kept.size());
  int64_t size = dy.dim(axis);
  kept[static_cast<size_t>(axis)] = 1;
  WEIR_ASSIGN_OR_RETURN(ExpandPlan p, PlanExpand(ctx.attrs(), kept));
  return DispatchFloat(dy.dtype(), [&](auto tag) {
    using T = decltype(tag);
    using A = AccumulatorOf<T>;
    const T* d = dy.data<T>();
    T* dx = ctx.output(0).data<T>();
    std::vector<A> sum(static_cast<size_t>(p.inner));
    for (int64_t o = 0; o < p.outer; ++o) {
      std::fill(sum.begin(), sum.end(), A(0));
      for (int64_t r = 0; r < size; ++r) {
        const T* src = d + (o * size + r) * p.inner;
        for (int64_t i = 0; i < p.inner; ++i) sum[static_cast<size_t>(i)] += Widen(src[i]);
      }
      for (int64_t i = 0; i < p.inner; ++i)
        dx[o * p.inner + i] = Narrow<T>(sum[static_cast<size_t>(i)]);
    }
    return Status();
  });
}

// nn.Split's axis and part sizes for input shape x: `sizes` when given (they must add up to the
// axis), else `num` equal parts.
struct SplitPlan {
  int axis;
  std::vector<int64_t> sizes;
};

StatusOr<SplitPlan> PlanSplit(const Attrs& a, const Shape& x) {
  SplitPlan plan{Axis(a.Int("axis"), x.size()), a.IntList("sizes")};
  int64_t num = a.Int("num");
  if (plan.axis < 0 || plan.axis >= static_cast<int>(x.size())) {
    return InvalidArgument("axis " + std::to_string(a.Int("axis")) + " is outside " +
                           ShapeString(x));
  }
  int64_t length = x[static_cast<size_t>(plan.axis)];
  if (plan.sizes.empty()) {
    if (length % num != 0) {
      return InvalidArgument("axis " + std::to_string(plan.axis) + " of " + ShapeString(x) + " (" +
                             std::to_string(length) + ") does not split into " +
                             std::to_string(num) + " equal parts; give sizes");
    }
    plan.sizes.assign(static_cast<size_t>(num), length / num);
    return plan;
  }
  if (static_cast<int64_t>(plan.sizes.size()) != num) {
    return InvalidArgument("sizes has " + std::to_string(plan.sizes.size()) + " entries, num is " +
                           std::to_string(num));
  }
  int64_t total = 0;
  for (int64_t s : plan.sizes) {
    if (s < 0) return InvalidArgument("sizes must not be negative");
    total += s;
  }
  if (total != length) {
    return InvalidArgument("sizes add up to " + std::to_string(total) + ", axis " +
                           std::to_string(plan.axis) + " of " + ShapeString(x) + " has " +
                           std::to_string(length));
  }
  return plan;
}

Status SplitShape(ShapeContext& ctx) {
  const TensorType& x = ctx.input(0);
  WEIR_ASSIGN_OR_RETURN(SplitPlan plan, PlanSplit(ctx.attrs(), x.shape));
  for (size_t i = 0; i < plan.sizes.size(); ++i) {
    Shape part = x.shape;
    part[static_cast<size_t>(plan.axis)] = plan.sizes[i];
    ctx.set_output(static_cast<int>(i), {x.dtype, part});
  }
  return Status();
}

Status SplitCpu(KernelContext& ctx) {
  const Tensor& x = ctx.input(0);
  WEIR_ASSIGN_OR_RETURN(SplitPlan plan, PlanSplit(ctx.attrs(), x.shape()));
  int64_t begin = 0;
  for (size_t i = 0; i < plan.sizes.size(); ++i) {
    CopyDense(x.Slice(plan.axis, begin, begin + plan.sizes[i]), ctx.output(static_cast<int>(i)));
    begin += plan.sizes[i];
  }
  return Status();
}

// dx = the parts' gradients joined; a part nothing downstream used contributes zeros.
Status SplitGrad(GradContext& g) {
  WEIR_ASSIGN_OR_RETURN(SplitPlan plan, PlanSplit(g.attrs(), g.input_type(0).shape));
  std::vector<ValueRef> parts;
  for (int i = 0; i < g.num_outputs(); ++i)
    if (g.grad(i).valid()) parts.push_back(g.grad(i));
  if (static_cast<int>(parts.size()) == g.num_outputs()) {
    WEIR_ASSIGN_OR_RETURN(ValueRef d, g.Op1("nn.Concat", parts, {{"axis", Int(plan.axis)}}));
    g.set_input_grad(0, d);
    return Status();
  }
  int64_t length = g.input_type(0).shape[static_cast<size_t>(plan.axis)], begin = 0;
  ValueRef sum;
  for (int i = 0; i < g.num_outputs(); ++i) {
    if (g.grad(i).valid()) {
      WEIR_ASSIGN_OR_RETURN(
          ValueRef padded,
          g.Op1("nn.SliceGrad", {g.grad(i)},
                {{"axis", Int(plan.axis)}, {"begin", Int(begin)}, {"size", Int(length)}}));
      if (sum.valid()) {
        WEIR_ASSIGN_OR_RETURN(sum, g.Op1("nn.Add", {sum, padded}));
      } else {
        sum = padded;
      }
    }
    begin += plan.sizes[static_cast<size_t>(i)];
  }
  if (sum.valid()) g.set_input_grad(0, sum);
  return Status();
}

}  // namespace

void RegisterShapeOps(Registrar& r) {
  r.TensorOp("nn.Reshape")
      .Doc(
          "Same elements, new shape. In `shape`, 0 copies the input's dim at that position and "
          "one -1 takes what is left.")
      .Input("x", "T")
      .Output("y", "T")
      .AttrOfType("shape", ATTR_INT_LIST, std::nullopt, "the new shape (0: keep, -1: infer)")
      .Cheap()
      .View()
      .Shape(ReshapeShape)
      .Kernel("cpu", CopyKernel)
      .Gradient(ReshapeGrad);
  r.TensorOp("nn.Transpose")
      .Doc("Permutes dims: output dim i is input dim perm[i].")
      .Input("x", "T")
      .Output("y", "T")
      .AttrOfType("perm", ATTR_INT_LIST, std::nullopt, "a permutation of the input's dims")
      .Shape(TransposeShape)
      .Kernel("cpu", TransposeCpu)
      .Gradient(TransposeGrad);
  r.TensorOp("nn.Concat")
      .Doc("Joins inputs along `axis`; other dims must agree.")
      .VariadicInput("x", "T", "two or more tensors")
      .Output("y", "T")
      .Attr<int64_t>("axis", -1, "the dim to join on (negative counts from the end)")
      .Shape(ConcatShape)
      .Kernel("cpu", ConcatCpu)
      .Gradient(ConcatGrad);
  r.TensorOp("nn.Split")
      .Doc(
          "Cuts x along `axis` into `num` consecutive parts: of the lengths in `sizes` (which "
          "must add up to the axis), or equal parts when sizes is empty. Graphs name the parts "
          "by number: `split:0`, `split:1`, ...")
      .Input("x", "T")
      .VariadicOutput("y", "T", "num", "the parts, in order")
      .Attr<int64_t>("num", 2, "how many parts", Min(1))
      .Attr<std::vector<int64_t>>("sizes", {}, "length of each part along axis; empty: equal")
      .Attr<int64_t>("axis", -1, "the dim to cut (negative counts from the end)")
      .Shape(SplitShape)
      .Kernel("cpu", SplitCpu)
      .Gradient(SplitGrad);
  r.TensorOp("nn.Slice")
      .Doc("The range [begin, end) of one dim.")
      .Input("x", "T")
      .Output("y", "T")
      .Attr<int64_t>("axis", -1, "the dim to slice (negative counts from the end)")
      .RequiredAttr<int64_t>("begin", "first index kept (negative counts from the end)")
      .Attr<int64_t>("end", kToTheEnd,
                     "one past the last index kept (negative counts from the end; default: the "
                     "end)")
      .Shape(SliceShape)
      .Kernel("cpu", SliceCpu)
      .Gradient(SliceGrad);
  r.TensorOp("nn.Expand")
      .Doc(
          "Repeats a dim of size 1 `size` times (a broadcast made explicit): MLA's one shared "
          "RoPE key [batch, time, 1, d] becomes one per head.")
      .Input("x", "T", "a tensor whose dim `axis` is 1")
      .Output("y", "T", "x with dim `axis` = size")
      .Attr<int64_t>("axis", -2, "the dim to repeat (negative counts from the end)")
      .RequiredAttr<int64_t>("size", "how many copies", Min(1))
      .Shape(ExpandShape)
      .Kernel("cpu", ExpandCpu)
      .Gradient(ExpandGrad);
  r.TensorOp("nn.ExpandGrad")
      .Doc("Gradient of nn.Expand: dy summed over dim `axis`, which becomes 1.")
      .Input("dy", "T")
      .Output("dx", "T")
      .Attr<int64_t>("axis", -2, "the expanded dim")
      .Shape([](ShapeContext& c) {
        Shape s = c.input(0).shape;
        int axis = Axis(c.attrs().Int("axis"), s.size());
        if (axis < 0 || axis >= static_cast<int>(s.size()))
          return InvalidArgument("axis " + std::to_string(c.attrs().Int("axis")) + " is outside " +
                                 c.input(0).ToString());
        s[static_cast<size_t>(axis)] = 1;
        c.set_output(0, {c.input(0).dtype, s});
        return Status();
      })
      .Kernel("cpu", ExpandGradCpu, KernelFloatTypes());
  r.TensorOp("nn.Cached")
      .Doc(
          "The identity, marking a per-token tensor [batch, time, ...] that incremental decoding "
          "keeps for later tokens (MLA's latent c_KV and its RoPE key): `weir plan` counts its "
          "elements as the KV cache.")
      .Input("x", "T", "[batch, time, ...]")
      .Output("y", "T", "x")
      .Cheap()
      .View()
      .Shape([](ShapeContext& c) {
        if (c.input(0).shape.size() < 2)
          return InvalidArgument("nn.Cached needs [batch, time, ...], got " +
                                 c.input(0).ToString());
        c.set_output(0, c.input(0));
        return Status();
      })
      .Kernel("cpu", CopyKernel)
      .Gradient(IdentityGradient)
      .Cost([](const std::vector<TensorType>& in, const std::vector<TensorType>&, const Attrs&) {
        const Shape& s = in[0].shape;
        OpCost cost;
        cost.cached_elements_per_token =
            static_cast<double>(NumElements(s)) / static_cast<double>(s[0] * s[1]);
        return cost;
      });
  r.TensorOp("nn.SliceGrad")
      .Doc(
          "Gradient of nn.Slice: dy placed at [begin, begin + len) of a zero tensor whose sliced "
          "dim has `size` entries.")
      .Input("dy", "T")
      .Output("dx", "T")
      .Attr<int64_t>("axis", 0, "the sliced dim", Min(0))
      .Attr<int64_t>("begin", 0, "where dy starts", Min(0))
      .RequiredAttr<int64_t>("size", "the full length of the sliced dim", Min(1))
      .Shape([](ShapeContext& c) {
        Shape s = c.input(0).shape;
        s.at(static_cast<size_t>(c.attrs().Int("axis"))) = c.attrs().Int("size");
        c.set_output(0, {c.input(0).dtype, s});
        return Status();
      })
      .Kernel("cpu", SliceGradCpu);
}

}  // namespace weir::nn
