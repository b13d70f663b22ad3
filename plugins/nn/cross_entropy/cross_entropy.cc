// nn.CrossEntropy: mean negative log-likelihood of target ids under softmax(logits), with a
// fused log-softmax, an ignore index and an optional per-position loss mask (SFT masks prompts).
#include "nn_common.h"

namespace weir::nn {
namespace {

DataType LossType(DataType t) { return t == DT_F64 ? DT_F64 : DT_F32; }

Status CheckInputs(const ShapeContext& ctx, int mask_input) {
  const TensorType& logits = ctx.input(0);
  const TensorType& targets = ctx.input(1);
  if (logits.shape.empty()) return InvalidArgument("logits need a vocabulary dim");
  Shape rows(logits.shape.begin(), logits.shape.end() - 1);
  if (targets.shape != rows || (targets.dtype != DT_I64 && targets.dtype != DT_I32)) {
    return InvalidArgument("targets must be integer ids of shape " + ShapeString(rows) +
                           " for logits " + logits.ToString() + ", got " + targets.ToString());
  }
  if (ctx.num_inputs() > mask_input && ctx.input(mask_input).shape != rows) {
    return InvalidArgument("mask must have shape " + ShapeString(rows) + ", got " +
                           ctx.input(mask_input).ToString());
  }
  return Status();
}

int64_t Target(const Tensor& t, int64_t i) {
  return t.dtype() == DT_I64 ? t.data<int64_t>()[i] : t.data<int32_t>()[i];
}

// Per row: the log-sum-exp of the logits and the weight of its loss (0 when ignored).
struct RowStats {
  std::vector<double> lse, weight;
  double denom = 0;
};

template <typename T>
StatusOr<RowStats> Prepare(const Tensor& logits, const Tensor& targets, const Tensor* mask,
                           int64_t ignore) {
  using A = AccumulatorOf<T>;
  int64_t v = logits.dim(-1), n = Rows(logits.shape());
  RowStats out;
  out.lse.resize(static_cast<size_t>(n));
  out.weight.resize(static_cast<size_t>(n));
  const T* x = logits.data<T>();
  for (int64_t r = 0; r < n; ++r) {
    int64_t t = Target(targets, r);
    double w = mask ? mask->At(r) : 1.0;
    if (t == ignore) w = 0;
    if (t != ignore && (t < 0 || t >= v)) {
      return InvalidArgument("target " + std::to_string(t) + " at position " + std::to_string(r) +
                             " is outside the vocabulary [0, " + std::to_string(v) + ")");
    }
    out.weight[static_cast<size_t>(r)] = w;
    out.denom += w;
  }
  ParallelFor(n, 16, [&](int64_t b, int64_t e) {
    for (int64_t r = b; r < e; ++r) {
      const T* row = x + r * v;
      A m = RowMax(row, v);
      out.lse[static_cast<size_t>(r)] =
          static_cast<double>(m + std::log(ExpSum(row, v, A(1), m, static_cast<T*>(nullptr))));
    }
  });
  return out;
}

Status CrossEntropyCpu(KernelContext& ctx) {
  Tensor logits = ctx.input(0).Contiguous(), targets = ctx.input(1).Contiguous();
  Tensor mask;
  if (ctx.num_inputs() > 2) mask = ctx.input(2).Contiguous();
  int64_t ignore = ctx.attrs().Int("ignore_index");
  return DispatchFloat(logits.dtype(), [&](auto tag) {
    using T = decltype(tag);
    WEIR_ASSIGN_OR_RETURN(
        RowStats rows, Prepare<T>(logits, targets, ctx.num_inputs() > 2 ? &mask : nullptr, ignore));
    const T* x = logits.data<T>();
    int64_t v = logits.dim(-1);
    double total = 0;
    for (size_t r = 0; r < rows.lse.size(); ++r) {
      if (rows.weight[r] == 0) continue;
      int64_t t = Target(targets, static_cast<int64_t>(r));
      total += rows.weight[r] *
               (rows.lse[r] - static_cast<double>(Widen(x[static_cast<int64_t>(r) * v + t])));
    }
    double loss = rows.denom > 0 ? total / rows.denom : 0.0;
    StoreFromDouble(ctx.output(0).raw_data(), ctx.output(0).dtype(), 0, loss);
    return Status();
  });
}

// dlogits = (softmax(logits) - onehot(target)) * weight / Σweight * dloss.
Status CrossEntropyGradCpu(KernelContext& ctx) {
  Tensor logits = ctx.input(0).Contiguous(), targets = ctx.input(1).Contiguous();
  double dloss = ctx.input(2).At(0);
  Tensor mask;
  if (ctx.num_inputs() > 3) mask = ctx.input(3).Contiguous();
  int64_t ignore = ctx.attrs().Int("ignore_index");
  return DispatchFloat(logits.dtype(), [&](auto tag) {
    using T = decltype(tag);
    using A = AccumulatorOf<T>;
    WEIR_ASSIGN_OR_RETURN(
        RowStats rows, Prepare<T>(logits, targets, ctx.num_inputs() > 3 ? &mask : nullptr, ignore));
    const T* x = logits.data<T>();
    T* dx = ctx.output(0).data<T>();
    int64_t v = logits.dim(-1);
    ParallelFor(static_cast<int64_t>(rows.lse.size()), 16, [&](int64_t b, int64_t e) {
      for (int64_t r = b; r < e; ++r) {
        double w = rows.denom > 0 ? rows.weight[static_cast<size_t>(r)] / rows.denom * dloss : 0.0;
        A scale = static_cast<A>(w), lse = static_cast<A>(rows.lse[static_cast<size_t>(r)]);
        const T* row = x + r * v;
        T* drow = dx + r * v;
        if (w == 0) {
          std::fill(drow, drow + v, Narrow<T>(A(0)));
          continue;
        }
        for (int64_t j = 0; j < v; ++j) drow[j] = Narrow<T>(Exp(Widen(row[j]) - lse) * scale);
        int64_t t = Target(targets, r);
        drow[t] = Narrow<T>((Exp(Widen(row[t]) - lse) - A(1)) * scale);
      }
    });
    return Status();
  });
}

Status CrossEntropyGrad(GradContext& g) {
  std::vector<ValueRef> in = {g.input(0), g.input(1), g.grad(0)};
  if (g.num_inputs() > 2) in.push_back(g.input(2));
  WEIR_ASSIGN_OR_RETURN(ValueRef d, g.Op1("nn.CrossEntropyGrad", in, g.attrs().values()));
  g.set_input_grad(0, d);
  return Status();
}

// The share of rows whose largest entry sits at the same index in a and b (ties: the first).
Status ArgmaxMatchCpu(KernelContext& ctx) {
  Tensor a = ctx.input(0).Contiguous(), b = ctx.input(1).Contiguous();
  int64_t width = a.dim(-1), rows = width > 0 ? a.numel() / width : 0;
  return DispatchFloat(a.dtype(), [&](auto tag) {
    using T = decltype(tag);
    auto argmax = [&](const T* row) {
      int64_t best = 0;
      for (int64_t j = 1; j < width; ++j)
        if (Widen(row[j]) > Widen(row[best])) best = j;
      return best;
    };
    int64_t same = 0;
    for (int64_t r = 0; r < rows; ++r)
      same += argmax(a.data<T>() + r * width) == argmax(b.data<T>() + r * width);
    ctx.output(0).data<float>()[0] =
        rows > 0 ? static_cast<float>(static_cast<double>(same) / static_cast<double>(rows)) : 0.f;
    return Status();
  });
}

}  // namespace

void RegisterCrossEntropy(Registrar& r) {
  r.TensorOp("nn.ArgmaxMatch")
      .Doc(
          "The share of rows [..., classes] whose largest entry is at the same index in a and b: "
          "how often two predictions agree (a multi-token-prediction draft accepted by the main "
          "model). A metric, not differentiable.")
      .Input("a", "T", "[..., classes]")
      .Input("b", "T", "[..., classes], a's shape")
      .Output("share", "f32", "scalar in [0, 1]")
      .Shape([](ShapeContext& c) {
        if (c.input(0).shape.empty() || c.input(0) != c.input(1))
          return InvalidArgument("a " + c.input(0).ToString() + " and b " + c.input(1).ToString() +
                                 " must have one type with a class dim");
        c.set_output(0, {DT_F32, {}});
        return Status();
      })
      .Kernel("cpu", ArgmaxMatchCpu, KernelFloatTypes());
  r.TensorOp("nn.CrossEntropy")
      .Doc(
          "Mean negative log-likelihood of integer targets under softmax(logits) over the last "
          "dim. Positions whose target is ignore_index, or whose mask is 0, do not count; the "
          "mean is over the (mask-weighted) positions that count, 0 when none does.")
      .Input("logits", "T", "[..., vocab]")
      .Input("targets", "i64", "[...] target ids (i64 or i32)")
      .OptionalInput("mask", "T", "[...] loss weights (1 counts, 0 does not)")
      .Output("loss", "f32", "scalar (f64 for f64 logits)")
      .Attr<int64_t>("ignore_index", -100, "target id that contributes no loss")
      .Shape([](ShapeContext& c) {
        WEIR_RETURN_IF_ERROR(CheckInputs(c, 2));
        c.set_output(0, {LossType(c.input(0).dtype), {}});
        return Status();
      })
      .Kernel("cpu", CrossEntropyCpu)
      .Gradient(CrossEntropyGrad);
  r.TensorOp("nn.CrossEntropyGrad")
      .Doc("Gradient of nn.CrossEntropy with respect to the logits.")
      .Input("logits", "T")
      .Input("targets", "i64")
      .Input("dloss", "f32")
      .OptionalInput("mask", "T")
      .Output("dlogits", "T")
      .Attr<int64_t>("ignore_index", -100, "as in the forward op")
      .Shape([](ShapeContext& c) {
        WEIR_RETURN_IF_ERROR(CheckInputs(c, 3));
        c.set_output(0, c.input(0));
        return Status();
      })
      .Kernel("cpu", CrossEntropyGradCpu, KernelFloatTypes());
}

}  // namespace weir::nn
