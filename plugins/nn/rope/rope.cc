// nn.RoPE: rotary position embedding on [B, T, ..., D], with optional YaRN frequency scaling
// (../shared/spec/deepseek.md §2.1: adjacent pairs by default, ramp between beta_fast and
// beta_slow, frequencies divided by rope_factor above the ramp).
#include "nn_common.h"
#include "rope/frequencies.h"

namespace weir::nn {
namespace {

Status RopeShape(ShapeContext& ctx) {
  const TensorType& x = ctx.input(0);
  if (x.shape.size() < 3 || x.shape.back() % 2 != 0) {
    return InvalidArgument("x must be [batch, time, ..., d] with an even d, got " + x.ToString());
  }
  if (ctx.num_inputs() > 1 && !(ctx.input(1) == TensorType{DT_I64, {x.shape[0]}})) {
    return InvalidArgument("start must be i64 [batch] = i64" + ShapeString({x.shape[0]}) +
                           ", got " + ctx.input(1).ToString());
  }
  ctx.set_output(0, x);
  return Status();
}

Status RopeCpu(KernelContext& ctx) {
  Tensor x = ctx.input(0).Contiguous();
  const Attrs& a = ctx.attrs();
  int64_t d = x.dim(-1), half = d / 2, batch = x.dim(0), time = x.dim(1);
  int64_t inner = x.numel() / (batch * time * d);  // heads (or 1)
  std::vector<double> freq = Frequencies(a, d);
  bool interleaved = a.Bool("interleaved");
  double sign = a.Bool("inverse") ? -1.0 : 1.0;
  int64_t start = a.Int("start");
  // With per-row starts, each (batch row, time step) has its own position.
  Tensor starts = ctx.num_inputs() > 1 ? ctx.input(1).Contiguous() : Tensor();
  const int64_t* row_start = ctx.num_inputs() > 1 ? starts.data<int64_t>() : nullptr;
  int64_t positions = row_start != nullptr ? batch * time : time;
  return DispatchFloat(x.dtype(), [&](auto tag) {
    using T = decltype(tag);
    using A = AccumulatorOf<T>;
    const T* in = x.data<T>();
    T* out = ctx.output(0).data<T>();
    // cos and sin per (position, pair), once: every head (and without per-row starts every batch
    // row) shares them. The angle is formed in double, since position × frequency needs more
    // than float's 24 bits.
    std::vector<A> cs(static_cast<size_t>(positions * half)),
        sn(static_cast<size_t>(positions * half));
    ParallelFor(positions, 16, [&](int64_t b, int64_t e) {
      for (int64_t t = b; t < e; ++t) {
        double pos = static_cast<double>(start + t % time +
                                         (row_start != nullptr ? row_start[t / time] : 0));
        for (int64_t i = 0; i < half; ++i) {
          double angle = pos * freq[static_cast<size_t>(i)];
          cs[static_cast<size_t>(t * half + i)] = static_cast<A>(std::cos(angle));
          sn[static_cast<size_t>(t * half + i)] = static_cast<A>(sign * std::sin(angle));
        }
      }
    });
    // Pair i is (2i, 2i + 1) interleaved, else (i, i + half): strides of a loop that vectorizes.
    int64_t first = interleaved ? 2 : 1, offset = interleaved ? 1 : half;
    ParallelFor(batch * time, 8, [&](int64_t b, int64_t e) {
      for (int64_t bt = b; bt < e; ++bt) {
        const A* c = cs.data() + bt % positions * half;
        const A* s = sn.data() + bt % positions * half;
        for (int64_t h = 0; h < inner; ++h) {
          int64_t base = (bt * inner + h) * d;
          const T* x0 = in + base;
          const T* x1 = in + base + offset;
          T* y0 = out + base;
          T* y1 = out + base + offset;
          for (int64_t i = 0; i < half; ++i) {
            A a0 = Widen(x0[i * first]), a1 = Widen(x1[i * first]);
            y0[i * first] = Narrow<T>(a0 * c[i] - a1 * s[i]);
            y1[i * first] = Narrow<T>(a0 * s[i] + a1 * c[i]);
          }
        }
      }
    });
    return Status();
  });
}

// A rotation's transpose is the rotation by the opposite angle.
Status RopeGrad(GradContext& g) {
  std::map<std::string, AttrValue> attrs = g.attrs().values();
  attrs["inverse"] = Bool(!g.attrs().Bool("inverse"));
  std::vector<ValueRef> in = {g.grad(0)};
  if (g.num_inputs() > 1) in.push_back(g.input(1));  // the same starts; they take no gradient
  WEIR_ASSIGN_OR_RETURN(ValueRef dx, g.Op1("nn.RoPE", in, attrs));
  g.set_input_grad(0, dx);
  return Status();
}

}  // namespace

void RegisterRope(Registrar& r) {
  r.TensorOp("nn.RoPE")
      .Doc(
          "Rotary position embedding over the last dim of x [batch, time, ..., d]: each pair of "
          "channels is rotated by position · frequency. Pairs are adjacent (x[2i], x[2i+1]) when "
          "interleaved, else (x[i], x[i + d/2]). rope_factor > 1 turns on YaRN scaling.")
      .Input("x", "T", "[batch, time, ..., d], d even")
      .OptionalInput("start", "i64",
                     "[batch] position of each row's first time step, added to the start attr "
                     "(decoding: the tokens each sequence has cached); no gradient")
      .Output("y", "T", "x rotated")
      .Attr<double>("theta", 10000.0, "frequency base θ: f_i = θ^(-2i/d)", Min(1.0))
      .Attr("interleaved", true, "rotate adjacent pairs (DeepSeek) instead of the two halves")
      .Attr<int64_t>("start", 0, "position of the first time step (decoding with a cache)", Min(0))
      .Attr<double>("rope_factor", 1.0, "YaRN scale s; 1 leaves frequencies alone", Min(1.0))
      .Attr<int64_t>("original_max_position", 4096, "YaRN: context length of pretraining", Min(1))
      .Attr<double>("beta_fast", 32.0, "YaRN: ramp bound in rotations", Min(0.0))
      .Attr<double>("beta_slow", 1.0, "YaRN: ramp bound in rotations", Min(0.0))
      .Attr("inverse", false, "rotate by minus the angle (the gradient)")
      .Cheap()
      .Shape(RopeShape)
      .Kernel("cpu", RopeCpu, KernelFloatTypes())
      .Gradient(RopeGrad);
}

}  // namespace weir::nn
