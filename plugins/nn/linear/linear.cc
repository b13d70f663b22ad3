// nn.Linear: y = x · Wᵀ with a learned weight W [out_features, in_features].
#include "nn_common.h"
#include "weir/gemm.h"

namespace weir::nn {
namespace {

Status LinearShape(ShapeContext& ctx) {
  const TensorType& x = ctx.input(0);
  WEIR_RETURN_IF_ERROR(ExpectDtype(ctx, 0, ctx.attrs().Type("T")));
  if (x.shape.empty()) return InvalidArgument("x must have at least 1 dim, got " + x.ToString());
  const TensorType& w = ctx.input(1);
  if (w.shape.size() != 2 || w.shape[1] != x.shape.back()) {
    return InvalidArgument("weight " + w.ToString() + " does not fit x " + x.ToString());
  }
  Shape out = x.shape;
  out.back() = ctx.attrs().Int("out_features");
  ctx.set_output(0, {x.dtype, out});
  return Status();
}

Status LinearCpu(KernelContext& ctx) {
  return Gemm(ctx.input(0), false, ctx.input(1), true, ctx.output(0));
}

// dx = dy · W; dW = dyᵀ · x over all rows.
Status LinearGrad(GradContext& g) {
  ValueRef x = g.input(0), w = g.input(1), dy = g.grad(0);
  if (g.needs_grad(0)) {
    WEIR_ASSIGN_OR_RETURN(ValueRef dx, g.Op1("nn.MatMul", {dy, w}));
    g.set_input_grad(0, dx);
  }
  if (g.needs_grad(1)) {
    int64_t in = g.input_type(0).shape.back(), out = g.output_type(0).shape.back();
    WEIR_ASSIGN_OR_RETURN(ValueRef x2, g.Op1("nn.Reshape", {x}, {{"shape", Ints({-1, in})}}));
    WEIR_ASSIGN_OR_RETURN(ValueRef dy2, g.Op1("nn.Reshape", {dy}, {{"shape", Ints({-1, out})}}));
    WEIR_ASSIGN_OR_RETURN(ValueRef dw,
                          g.Op1("nn.MatMul", {dy2, x2}, {{"transpose_a", Bool(true)}}));
    g.set_input_grad(1, dw);
  }
  return Status();
}

}  // namespace

void RegisterLinear(Registrar& r) {
  LinearWeightParam(r.TensorOp("nn.Linear"))
      .Doc(
          "Affine map without bias: y = x · Wᵀ over the last dim. W is a parameter of shape "
          "[out_features, in_features], initialized from N(0, init_std²).")
      .Input("x", "T", "[..., in_features]")
      .Output("y", "T", "[..., out_features]")
      .RequiredAttr<int64_t>("out_features", "output width", Min(1))
      .Attr<double>("init_std", 0.02, "standard deviation of the initial weights", Min(0.0))
      .AttrOfType("T", ATTR_TYPE, "f32", "compute dtype")
      .Shape(LinearShape)
      .Kernel("cpu", LinearCpu, KernelFloatTypes())
      .Gradient(LinearGrad)
      .Cost(
          [](const std::vector<TensorType>& in, const std::vector<TensorType>& out, const Attrs&) {
            return OpCost{2.0 * static_cast<double>(NumElements(out[0].shape)) *
                          static_cast<double>(in[0].shape.back())};
          });
  // A parameter as a value, for weights that several nodes share (DeepSeek-V3's output head,
  // used by the main model and by multi-token prediction).
  r.TensorOp("nn.Weight")
      .Doc(
          "Outputs its parameter `weight` of shape `shape` (N(0, init_std²)), so that several "
          "nodes can use one weight: nn.MatMul(x, head, transpose_b=true) is a Linear with a "
          "shared weight.")
      .Output("y", "T", "the parameter")
      .AttrOfType("shape", ATTR_INT_LIST, std::nullopt, "the parameter's shape")
      .Attr<double>("init_std", 0.02, "standard deviation of the initial weights", Min(0.0))
      .AttrOfType("T", ATTR_TYPE, "f32", "compute dtype")
      .Param(
          "weight",
          [](const ShapeContext& c) -> StatusOr<weir::Shape> {
            weir::Shape shape = c.attrs().IntList("shape");
            for (int64_t d : shape)
              if (d < 1) return InvalidArgument("shape " + ShapeString(shape) + " has a dim < 1");
            return shape;
          },
          [](const Attrs& a, const weir::Shape&) { return Init::Normal(a.Float("init_std")); })
      .View()
      .Shape(SameAsInput())
      .Kernel("cpu",
              [](KernelContext& ctx) {
                Tensor src = ctx.input(0).Contiguous();
                std::memcpy(ctx.output(0).raw_data(), src.raw_data(), src.nbytes());
                return Status();
              })
      .Gradient(IdentityGradient);
}

}  // namespace weir::nn
