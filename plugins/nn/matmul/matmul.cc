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

}  // namespace

void RegisterMatMul(Registrar& r) {
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
