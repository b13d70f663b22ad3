// nn.MatMul: batched matrix product with optional transposes (oneDNN underneath).
#include "nn_common.h"
#include "weir/gemm.h"

namespace weir::nn {
namespace {

Status MatMulShape(ShapeContext& ctx) {
  if (ctx.input(0).dtype != ctx.input(1).dtype) {
    return InvalidArgument("a is " + ctx.input(0).ToString() + ", b is " + ctx.input(1).ToString() +
                           ": dtypes must match");
  }
  WEIR_ASSIGN_OR_RETURN(Shape out, GemmShape(ctx.input(0).shape, ctx.attrs().Bool("transpose_a"),
                                             ctx.input(1).shape, ctx.attrs().Bool("transpose_b")));
  ctx.set_output(0, {ctx.input(0).dtype, out});
  return Status();
}

Status MatMulCpu(KernelContext& ctx) {
  return Gemm(ctx.input(0), ctx.attrs().Bool("transpose_a"), ctx.input(1),
              ctx.attrs().Bool("transpose_b"), ctx.output(0));
}

StatusOr<ValueRef> Flatten(GradContext& g, ValueRef v, int64_t last) {
  return g.Op1("nn.Reshape", {v}, {{"shape", Ints({-1, last})}});
}

// y = op(a) op(b). With ta/tb the transposes:
//   da = dy op(b)ᵀ          (ta = false)     da = op(b) dyᵀ   (ta = true)
//   db = op(a)ᵀ dy          (tb = false)     db = dyᵀ op(a)   (tb = true)
// A 2-D b shared over a batched a gets its gradient summed over the batch by flattening first.
Status MatMulGrad(GradContext& g) {
  bool ta = g.attrs().Bool("transpose_a"), tb = g.attrs().Bool("transpose_b");
  ValueRef a = g.input(0), b = g.input(1), dy = g.grad(0);
  auto mm = [&](ValueRef x, bool tx, ValueRef y, bool ty) {
    return g.Op1("nn.MatMul", {x, y}, {{"transpose_a", Bool(tx)}, {"transpose_b", Bool(ty)}});
  };
  if (g.needs_grad(0)) {
    WEIR_ASSIGN_OR_RETURN(ValueRef da, ta ? mm(b, tb, dy, true) : mm(dy, false, b, !tb));
    g.set_input_grad(0, da);
  }
  if (g.needs_grad(1)) {
    const Shape& as = g.input_type(0).shape;
    const Shape& bs = g.input_type(1).shape;
    ValueRef a2 = a, dy2 = dy;
    if (bs.size() == 2 && as.size() > 2) {
      if (ta)
        return InvalidArgument("the gradient of a shared 2-D b with transpose_a is not supported");
      WEIR_ASSIGN_OR_RETURN(a2, Flatten(g, a, as.back()));
      WEIR_ASSIGN_OR_RETURN(dy2, Flatten(g, dy, g.output_type(0).shape.back()));
    }
    WEIR_ASSIGN_OR_RETURN(ValueRef db, tb ? mm(dy2, true, a2, ta) : mm(a2, !ta, dy2, false));
    g.set_input_grad(1, db);
  }
  return Status();
}

// nn.HeadMatMul: per head h, y[..., h, :] = x[..., h, :] · W[h] (W[h]ᵀ with transpose_w). The
// heads are strided blocks of x and y, so each head is one GEMM on them in place.
struct HeadPlan {
  int64_t heads, rows, n, m;  // x [rows, heads, n] · w[h] [n, m] -> y [rows, heads, m]
};

StatusOr<HeadPlan> PlanHeads(const TensorType& x, const TensorType& w, bool transpose_w) {
  if (x.dtype != w.dtype || x.shape.size() < 2 || w.shape.size() != 3 ||
      x.shape[x.shape.size() - 2] != w.shape[0] || x.shape.back() != w.shape[transpose_w ? 2 : 1]) {
    return InvalidArgument("x " + x.ToString() + " does not multiply per head with w " +
                           w.ToString() + (transpose_w ? " transposed" : "") +
                           " (x [..., heads, n], w [heads, n, m], or [heads, m, n] transposed)");
  }
  int64_t heads = w.shape[0], n = x.shape.back();
  return HeadPlan{heads, NumElements(x.shape) / (heads * n), n, w.shape[transpose_w ? 1 : 2]};
}

Status HeadMatMulShape(ShapeContext& ctx) {
  WEIR_ASSIGN_OR_RETURN(HeadPlan p,
                        PlanHeads(ctx.input(0), ctx.input(1), ctx.attrs().Bool("transpose_w")));
  Shape out = ctx.input(0).shape;
  out.back() = p.m;
  ctx.set_output(0, {ctx.input(0).dtype, out});
  return Status();
}

const char* Bytes(const Tensor& t, int64_t elements) {
  return static_cast<const char*>(t.raw_data()) +
         elements * static_cast<int64_t>(DataTypeSize(t.dtype()));
}

Status HeadMatMulCpu(KernelContext& ctx) {
  Tensor x = ctx.input(0).Contiguous(), w = ctx.input(1).Contiguous();
  bool tw = ctx.attrs().Bool("transpose_w");
  WEIR_ASSIGN_OR_RETURN(HeadPlan p, PlanHeads({x.dtype(), x.shape()}, {w.dtype(), w.shape()}, tw));
  Tensor& y = ctx.output(0);
  for (int64_t h = 0; h < p.heads; ++h) {
    WEIR_RETURN_IF_ERROR(GemmBlock(x.dtype(), y.dtype(), p.rows, p.m, p.n,
                                   MatrixRef{Bytes(x, h * p.n), p.heads * p.n},
                                   MatrixRef{Bytes(w, h * p.n * p.m), tw ? p.n : p.m, tw},
                                   const_cast<char*>(Bytes(y, h * p.m)), p.heads * p.m));
  }
  return Status();
}

// dW[h] = x_hᵀ · dy_h ([n, m]), or dy_hᵀ · x_h ([m, n]) for a transposed w.
Status HeadMatMulGradWCpu(KernelContext& ctx) {
  Tensor x = ctx.input(0).Contiguous(), dy = ctx.input(1).Contiguous();
  bool tw = ctx.attrs().Bool("transpose_w");
  Tensor& dw = ctx.output(0);
  int64_t heads = dw.dim(0), n = x.dim(-1), m = dy.dim(-1);
  int64_t rows = x.numel() / (heads * n);
  for (int64_t h = 0; h < heads; ++h) {
    MatrixRef xs{Bytes(x, h * n), heads * n, true}, dys{Bytes(dy, h * m), heads * m, true};
    char* out = const_cast<char*>(Bytes(dw, h * n * m));
    Status s = tw ? GemmBlock(x.dtype(), dw.dtype(), m, n, rows, dys,
                              MatrixRef{Bytes(x, h * n), heads * n}, out, n)
                  : GemmBlock(x.dtype(), dw.dtype(), n, m, rows, xs,
                              MatrixRef{Bytes(dy, h * m), heads * m}, out, m);
    WEIR_RETURN_IF_ERROR(s);
  }
  return Status();
}

Status HeadMatMulGrad(GradContext& g) {
  bool tw = g.attrs().Bool("transpose_w");
  if (g.needs_grad(0)) {
    WEIR_ASSIGN_OR_RETURN(
        ValueRef dx, g.Op1("nn.HeadMatMul", {g.grad(0), g.input(1)}, {{"transpose_w", Bool(!tw)}}));
    g.set_input_grad(0, dx);
  }
  if (g.needs_grad(1)) {
    WEIR_ASSIGN_OR_RETURN(ValueRef dw, g.Op1("nn.HeadMatMulGradW", {g.input(0), g.grad(0)},
                                             {{"transpose_w", Bool(tw)}}));
    g.set_input_grad(1, dw);
  }
  return Status();
}

}  // namespace

void RegisterMatMul(Registrar& r) {
  r.TensorOp("nn.HeadMatMul")
      .Doc(
          "A product per head: y[..., h, :] = x[..., h, :] · w[h] (or w[h]ᵀ with transpose_w). "
          "MLA's absorbed decode folds W_UK into the query and applies W_UV after attention "
          "with it.")
      .Input("x", "T", "[..., heads, n]")
      .Input("w", "T", "[heads, n, m] ([heads, m, n] with transpose_w)")
      .Output("y", "T", "[..., heads, m]")
      .Attr("transpose_w", false, "use each head's matrix transposed")
      .Shape(HeadMatMulShape)
      .Kernel("cpu", HeadMatMulCpu, KernelFloatTypes())
      .Gradient(HeadMatMulGrad)
      .Cost(
          [](const std::vector<TensorType>& in, const std::vector<TensorType>& out, const Attrs&) {
            return OpCost{2.0 * static_cast<double>(NumElements(out[0].shape)) *
                          static_cast<double>(in[0].shape.back())};
          });
  r.TensorOp("nn.HeadMatMulGradW")
      .Doc("Gradient of nn.HeadMatMul for w: x_hᵀ · dy_h summed over the rows, per head.")
      .Input("x", "T", "[..., heads, n]")
      .Input("dy", "T", "[..., heads, m]")
      .Output("dw", "T", "[heads, n, m] ([heads, m, n] with transpose_w)")
      .Attr("transpose_w", false, "as in the forward op")
      .Shape([](ShapeContext& c) {
        const Shape &x = c.input(0).shape, &dy = c.input(1).shape;
        if (x.size() < 2 || dy.size() != x.size() || x[x.size() - 2] != dy[dy.size() - 2])
          return InvalidArgument("x " + c.input(0).ToString() + " and dy " + c.input(1).ToString() +
                                 " disagree on their heads");
        int64_t h = x[x.size() - 2], n = x.back(), m = dy.back();
        c.set_output(
            0, {c.input(0).dtype, c.attrs().Bool("transpose_w") ? Shape{h, m, n} : Shape{h, n, m}});
        return Status();
      })
      .Kernel("cpu", HeadMatMulGradWCpu, KernelFloatTypes());
  r.TensorOp("nn.MatMul")
      .Doc(
          "Matrix product of the last two dims, batched over the leading ones: "
          "y = op(a) · op(b). b may be 2-D and shared across a's batch.")
      .Input("a", "T", "[..., M, K] ([..., K, M] with transpose_a)")
      .Input("b", "T", "[..., K, N] ([..., N, K] with transpose_b), or 2-D")
      .Output("y", "T", "[..., M, N]")
      .Attr("transpose_a", false, "use a transposed")
      .Attr("transpose_b", false, "use b transposed")
      .Shape(MatMulShape)
      .Kernel("cpu", MatMulCpu, KernelFloatTypes())
      .Gradient(MatMulGrad)
      .Cost([](const std::vector<TensorType>& in, const std::vector<TensorType>& out,
               const Attrs& a) {
        const Shape& s = in[0].shape;
        double k = static_cast<double>(s[s.size() - (a.Bool("transpose_a") ? 2 : 1)]);
        return OpCost{2.0 * static_cast<double>(NumElements(out[0].shape)) * k};
      });
}

}  // namespace weir::nn
