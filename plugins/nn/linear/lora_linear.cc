// nn.LoRALinear: nn.Linear with a low-rank adapter (LoRA, Hu et al. 2021),
//   y = x · Wᵀ + (alpha / rank) · (dropout(x) · Aᵀ) · Bᵀ,
// A [rank, in] and B [out, rank]. B starts at zero, so an adapted model starts as its base. The
// weight keeps nn.Linear's name (`weight`), so a base checkpoint loads unchanged; a model resource
// with `lora_targets` rewrites the chosen nn.Linear nodes into this op and trains A and B alone.
#include <atomic>

#include "nn_common.h"
#include "weir/gemm.h"
#include "weir/random.h"

namespace weir::nn {
namespace {

std::atomic<uint64_t> g_calls{0};

double Scaling(const Attrs& a) {
  return a.Float("lora_alpha") / static_cast<double>(a.Int("lora_rank"));
}

Status LoraLinearShape(ShapeContext& ctx) {
  const TensorType& x = ctx.input(0);
  WEIR_RETURN_IF_ERROR(ExpectDtype(ctx, 0, ctx.attrs().Type("T")));
  if (x.shape.empty()) return InvalidArgument("x must have at least 1 dim, got " + x.ToString());
  int64_t in = x.shape.back(), out = ctx.attrs().Int("out_features");
  int64_t rank = ctx.attrs().Int("lora_rank");
  const Shape expected[] = {{out, in}, {rank, in}, {out, rank}};
  const char* names[] = {"weight", "lora_a", "lora_b"};
  for (int i = 0; i < 3; ++i) {
    if (ctx.input(1 + i).shape != expected[i]) {
      return InvalidArgument(std::string(names[i]) + " is " + ctx.input(1 + i).ToString() +
                             ", expected " + ShapeString(expected[i]) + " for x " + x.ToString());
    }
  }
  Shape y = x.shape, h = x.shape;
  y.back() = out;
  h.back() = rank;
  ctx.set_output(0, {x.dtype, y});
  ctx.set_output(1, {x.dtype, h});
  // The dropout mask, kept for the gradient; empty without dropout.
  ctx.set_output(2, {DT_U8, ctx.attrs().Float("lora_dropout") > 0 ? x.shape : Shape{0}});
  return Status();
}

Status LoraLinearCpu(KernelContext& ctx) {
  const Tensor &x = ctx.input(0), &w = ctx.input(1), &a = ctx.input(2), &b = ctx.input(3);
  Tensor &y = ctx.output(0), &h = ctx.output(1);
  WEIR_RETURN_IF_ERROR(Gemm(x, false, w, true, y));
  Tensor dropped = x;
  double rate = ctx.attrs().Float("lora_dropout");
  if (rate > 0) {
    Tensor xc = x.Contiguous();
    dropped = Tensor::Empty(x.dtype(), x.shape());
    uint8_t* mask = ctx.output(2).data<uint8_t>();
    uint64_t stream =
        SplitMix64(static_cast<uint64_t>(ctx.attrs().Int("seed")) ^ SplitMix64(g_calls++));
    double keep = 1.0 / (1.0 - rate);
    WEIR_RETURN_IF_ERROR(DispatchFloat(x.dtype(), [&](auto tag) {
      using T = decltype(tag);
      using Acc = AccumulatorOf<T>;
      const T* in = xc.data<T>();
      T* out = dropped.data<T>();
      for (int64_t i = 0; i < xc.numel(); ++i) {
        mask[i] = UnitInterval(SplitMix64(stream ^ static_cast<uint64_t>(i))) >= rate ? 1 : 0;
        out[i] = Narrow<T>(mask[i] ? Widen(in[i]) * static_cast<Acc>(keep) : Acc(0));
      }
      return Status();
    }));
  }
  WEIR_RETURN_IF_ERROR(Gemm(dropped, false, a, true, h));
  // y += (s·h) · Bᵀ: scaling the rank-wide h is the cheap place for s.
  Tensor scaled = Tensor::Empty(h.dtype(), h.shape());
  double s = Scaling(ctx.attrs());
  WEIR_RETURN_IF_ERROR(DispatchFloat(h.dtype(), [&](auto tag) {
    using T = decltype(tag);
    const T* in = h.data<T>();
    T* out = scaled.data<T>();
    for (int64_t i = 0; i < h.numel(); ++i)
      out[i] = Narrow<T>(Widen(in[i]) * static_cast<AccumulatorOf<T>>(s));
    return Status();
  }));
  return Gemm(scaled, false, b, true, y, /*accumulate=*/true);
}

// With g = s·dy and xd = dropout(x) (recomputed from the mask):
//   dB = gᵀ·h, dh = g·B, dA = dhᵀ·xd, dx = dy·W + dropout'(dh·A), dW = dyᵀ·x.
Status LoraLinearGrad(GradContext& g) {
  ValueRef x = g.input(0), w = g.input(1), a = g.input(2), b = g.input(3);
  ValueRef dy = g.grad(0), h = g.output(1), mask = g.output(2);
  const Attrs& attrs = g.attrs();
  double rate = attrs.Float("lora_dropout");
  int64_t in = g.input_type(0).shape.back(), out = attrs.Int("out_features");
  int64_t rank = attrs.Int("lora_rank");
  auto rows = [&](ValueRef v, int64_t width) {
    return g.Op1("nn.Reshape", {v}, {{"shape", Ints({-1, width})}});
  };
  WEIR_ASSIGN_OR_RETURN(ValueRef gy, g.Op1("nn.Scale", {dy}, {{"factor", Float(Scaling(attrs))}}));
  WEIR_ASSIGN_OR_RETURN(ValueRef dh, g.Op1("nn.MatMul", {gy, b}));
  if (g.needs_grad(3)) {
    WEIR_ASSIGN_OR_RETURN(ValueRef gy2, rows(gy, out));
    WEIR_ASSIGN_OR_RETURN(ValueRef h2, rows(h, rank));
    WEIR_ASSIGN_OR_RETURN(ValueRef db,
                          g.Op1("nn.MatMul", {gy2, h2}, {{"transpose_a", Bool(true)}}));
    g.set_input_grad(3, db);
  }
  if (g.needs_grad(2)) {
    ValueRef dropped = x;
    if (rate > 0) {
      // nn.DropoutGrad applies a kept mask with the forward pass's scaling: x ↦ dropout(x).
      WEIR_ASSIGN_OR_RETURN(dropped, g.Op1("nn.DropoutGrad", {x, mask}, {{"rate", Float(rate)}}));
    }
    WEIR_ASSIGN_OR_RETURN(ValueRef dh2, rows(dh, rank));
    WEIR_ASSIGN_OR_RETURN(ValueRef xd2, rows(dropped, in));
    WEIR_ASSIGN_OR_RETURN(ValueRef da,
                          g.Op1("nn.MatMul", {dh2, xd2}, {{"transpose_a", Bool(true)}}));
    g.set_input_grad(2, da);
  }
  if (g.needs_grad(1)) {
    WEIR_ASSIGN_OR_RETURN(ValueRef dy2, rows(dy, out));
    WEIR_ASSIGN_OR_RETURN(ValueRef x2, rows(x, in));
    WEIR_ASSIGN_OR_RETURN(ValueRef dw,
                          g.Op1("nn.MatMul", {dy2, x2}, {{"transpose_a", Bool(true)}}));
    g.set_input_grad(1, dw);
  }
  if (g.needs_grad(0)) {
    WEIR_ASSIGN_OR_RETURN(ValueRef base, g.Op1("nn.MatMul", {dy, w}));
    WEIR_ASSIGN_OR_RETURN(ValueRef adapter, g.Op1("nn.MatMul", {dh, a}));
    if (rate > 0) {
      WEIR_ASSIGN_OR_RETURN(adapter,
                            g.Op1("nn.DropoutGrad", {adapter, mask}, {{"rate", Float(rate)}}));
    }
    WEIR_ASSIGN_OR_RETURN(ValueRef dx, g.Op1("nn.Add", {base, adapter}));
    g.set_input_grad(0, dx);
  }
  return Status();
}

}  // namespace

void RegisterLoraLinear(Registrar& r) {
  LinearWeightParam(r.TensorOp("nn.LoRALinear"))
      .Doc(
          "nn.Linear with a low-rank adapter: y = x · Wᵀ + (lora_alpha / lora_rank) · "
          "(dropout(x) · Aᵀ) · Bᵀ. W [out_features, in_features] is named `weight` as in "
          "nn.Linear; A [lora_rank, in_features] starts uniform in ±1/√in_features and B "
          "[out_features, lora_rank] at zero (Hugging Face PEFT's initialization), so training "
          "starts from the base model. Outputs the adapter's rank-wide activation x·Aᵀ and the "
          "dropout mask for the gradient. A model resource's `lora_targets` puts it in place of "
          "nn.Linear nodes.")
      .Input("x", "T", "[..., in_features]")
      .Output("y", "T", "[..., out_features]")
      .Output("h", "T", "[..., lora_rank]: dropout(x) · Aᵀ")
      .Output("mask", "u8", "dropout's keep mask, shaped as x ([0] without dropout)")
      .RequiredAttr<int64_t>("out_features", "output width", Min(1))
      .Attr<double>("init_std", 0.02, "standard deviation of W's initial values", Min(0.0))
      .Attr<int64_t>("lora_rank", 8, "rank of the adapter", Min(1))
      .Attr<double>("lora_alpha", 16.0, "the adapter's output is scaled by lora_alpha / lora_rank",
                    Min(0.0))
      .Attr<double>("lora_dropout", 0.0, "dropout on the adapter's input while training", Min(0.0),
                    Max(0.99))
      .Attr<int64_t>("seed", 0, "seed of the dropout masks")
      .AttrOfType("T", ATTR_TYPE, "f32", "compute dtype")
      .Param(
          "lora_a",
          [](const ShapeContext& c) -> StatusOr<weir::Shape> {
            if (c.input(0).shape.empty()) return InvalidArgument("x has no dims");
            return weir::Shape{c.attrs().Int("lora_rank"), c.input(0).shape.back()};
          },
          [](const Attrs&, const weir::Shape& shape) {
            return Init::Uniform(1.0 / std::sqrt(static_cast<double>(shape[1])));
          })
      .Param(
          "lora_b",
          [](const ShapeContext& c) -> StatusOr<weir::Shape> {
            return weir::Shape{c.attrs().Int("out_features"), c.attrs().Int("lora_rank")};
          },
          Init::Zeros())
      .Shape(LoraLinearShape)
      .Kernel("cpu", LoraLinearCpu, KernelFloatTypes())
      .Gradient(LoraLinearGrad)
      .Cost([](const std::vector<TensorType>& in, const std::vector<TensorType>& out,
               const Attrs& a) {
        double rows = static_cast<double>(NumElements(out[0].shape) / out[0].shape.back());
        double width = static_cast<double>(in[0].shape.back());
        double o = static_cast<double>(out[0].shape.back());
        double rank = static_cast<double>(a.Int("lora_rank"));
        return OpCost{2.0 * rows * (o * width + rank * (width + o))};
      });
}

}  // namespace weir::nn
