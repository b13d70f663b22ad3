// moe.BalanceLoss: DeepSeek-V3's sequence-wise balance loss ([V3] Eqs. 17-20, spec §3.3):
// per sequence, L = α Σ_i f_i P_i with f_i = E/(K·T) · #{t : i chosen for t} and
// P_i = (1/T) Σ_t s'_{i,t}, s' the sigmoid affinities normalized over the experts of each token;
// averaged over the sequences. f counts the experts actually routed (the spec's flagged choice).
#include <cmath>
#include <vector>

#include "moe_ops.h"
#include "weir/dispatch.h"

namespace weir::moe {
namespace {

struct Dims {
  int64_t sequences, tokens, experts, k;
};

StatusOr<Dims> GetDims(const TensorType& logits, const TensorType& indices) {
  if (logits.shape.size() != 3 || indices.shape.size() != 3 ||
      logits.shape[0] != indices.shape[0] || logits.shape[1] != indices.shape[1] ||
      indices.dtype != DT_I64) {
    return InvalidArgument(
        "expected logits [sequences, tokens, experts] and i64 indices "
        "[sequences, tokens, K], got " +
        logits.ToString() + " and " + indices.ToString());
  }
  return Dims{logits.shape[0], logits.shape[1], logits.shape[2], indices.shape[2]};
}

// f_i of one sequence: how often each expert was chosen, scaled by E/(K·T).
std::vector<double> Frequencies(const Dims& d, const int64_t* idx) {
  std::vector<double> f(static_cast<size_t>(d.experts), 0.0);
  for (int64_t t = 0; t < d.tokens * d.k; ++t) {
    int64_t e = idx[t];
    if (e >= 0 && e < d.experts) f[static_cast<size_t>(e)] += 1.0;
  }
  double norm = static_cast<double>(d.experts) / static_cast<double>(d.k * d.tokens);
  for (double& v : f) v *= norm;
  return f;
}

// Normalized sigmoid affinities of one token.
template <typename T>
void Affinities(const T* logits, int64_t experts, std::vector<double>& s, std::vector<double>& sn,
                double& total) {
  total = 0;
  for (int64_t e = 0; e < experts; ++e) {
    s[static_cast<size_t>(e)] = 1 / (1 + std::exp(-static_cast<double>(Widen(logits[e]))));
    total += s[static_cast<size_t>(e)];
  }
  for (int64_t e = 0; e < experts; ++e)
    sn[static_cast<size_t>(e)] = s[static_cast<size_t>(e)] / total;
}

Status BalanceLossCpu(KernelContext& ctx) {
  Tensor logits = ctx.input(0).Contiguous(), indices = ctx.input(1).Contiguous();
  WEIR_ASSIGN_OR_RETURN(
      Dims d, GetDims({logits.dtype(), logits.shape()}, {indices.dtype(), indices.shape()}));
  double alpha = ctx.attrs().Float("alpha");
  return DispatchFloat(logits.dtype(), [&](auto tag) {
    using T = decltype(tag);
    const T* x = logits.data<T>();
    const int64_t* idx = indices.data<int64_t>();
    std::vector<double> s(static_cast<size_t>(d.experts)), sn(s.size());
    double loss = 0;
    for (int64_t b = 0; b < d.sequences; ++b) {
      std::vector<double> f = Frequencies(d, idx + b * d.tokens * d.k);
      std::vector<double> p(static_cast<size_t>(d.experts), 0.0);
      for (int64_t t = 0; t < d.tokens; ++t) {
        double total;
        Affinities(x + (b * d.tokens + t) * d.experts, d.experts, s, sn, total);
        for (size_t e = 0; e < p.size(); ++e) p[e] += sn[e] / static_cast<double>(d.tokens);
      }
      for (size_t e = 0; e < p.size(); ++e) loss += alpha * f[e] * p[e];
    }
    StoreFromDouble(ctx.output(0).raw_data(), ctx.output(0).dtype(), 0,
                    loss / static_cast<double>(d.sequences));
    return Status();
  });
}

// Inputs: logits, indices, dloss. With a_i = α f_i / (T·B): dL/ds_j = (a_j − Σ_i a_i s'_i) / Σ s,
// then through the sigmoid.
Status BalanceLossGradCpu(KernelContext& ctx) {
  Tensor logits = ctx.input(0).Contiguous(), indices = ctx.input(1).Contiguous();
  double dloss = ctx.input(2).At(0);
  WEIR_ASSIGN_OR_RETURN(
      Dims d, GetDims({logits.dtype(), logits.shape()}, {indices.dtype(), indices.shape()}));
  double alpha = ctx.attrs().Float("alpha");
  return DispatchFloat(logits.dtype(), [&](auto tag) {
    using T = decltype(tag);
    const T* x = logits.data<T>();
    const int64_t* idx = indices.data<int64_t>();
    T* dx = ctx.output(0).data<T>();
    std::vector<double> s(static_cast<size_t>(d.experts)), sn(s.size());
    double per = dloss * alpha / static_cast<double>(d.tokens * d.sequences);
    for (int64_t b = 0; b < d.sequences; ++b) {
      std::vector<double> a = Frequencies(d, idx + b * d.tokens * d.k);
      for (double& v : a) v *= per;
      for (int64_t t = 0; t < d.tokens; ++t) {
        const T* row = x + (b * d.tokens + t) * d.experts;
        T* out = dx + (b * d.tokens + t) * d.experts;
        double total;
        Affinities(row, d.experts, s, sn, total);
        double mean = 0;
        for (size_t e = 0; e < s.size(); ++e) mean += a[e] * sn[e];
        for (size_t e = 0; e < s.size(); ++e) {
          double ds = (a[e] - mean) / total;
          out[e] = Narrow<T>(static_cast<AccumulatorOf<T>>(ds * s[e] * (1 - s[e])));
        }
      }
    }
    return Status();
  });
}

Status BalanceLossGrad(GradContext& g) {
  if (!g.needs_grad(0)) return Status();
  WEIR_ASSIGN_OR_RETURN(ValueRef d, g.Op1("moe.BalanceLossGrad",
                                          {g.input(0), g.input(1), g.grad(0)}, g.attrs().values()));
  g.set_input_grad(0, d);
  return Status();
}

}  // namespace

void RegisterBalanceLoss(Registrar& r) {
  r.TensorOp("moe.BalanceLoss")
      .Doc(
          "DeepSeek-V3's sequence-wise balance loss: per sequence alpha * sum_i f_i * P_i, f_i "
          "= E/(K*T) * (tokens routed to expert i), P_i = mean over tokens of the sigmoid "
          "affinities normalized per token; the mean over sequences. Differentiable in the "
          "logits; the routing (indices) is not.")
      .Input("logits", "T", "[sequences, tokens, experts] router logits")
      .Input("indices", "i64", "[sequences, tokens, K] the experts moe.Router chose")
      .Output("loss", "f32", "scalar (f64 for f64 logits)")
      .Attr<double>("alpha", 0.0001, "the balance factor (V3: 0.0001)", Min(0.0))
      .Shape([](ShapeContext& c) {
        WEIR_RETURN_IF_ERROR(GetDims(c.input(0), c.input(1)).status());
        c.set_output(0, {c.input(0).dtype == DT_F64 ? DT_F64 : DT_F32, {}});
        return Status();
      })
      .Kernel("cpu", BalanceLossCpu, KernelFloatTypes())
      .Gradient(BalanceLossGrad);
  r.TensorOp("moe.BalanceLossGrad")
      .Doc("Gradient of moe.BalanceLoss with respect to the logits.")
      .Input("logits", "T")
      .Input("indices", "i64")
      .Input("dloss", "f32")
      .Output("dlogits", "T")
      .Attr<double>("alpha", 0.0001, "as in the forward op", Min(0.0))
      .Shape([](ShapeContext& c) {
        c.set_output(0, c.input(0));
        return Status();
      })
      .Kernel("cpu", BalanceLossGradCpu, KernelFloatTypes());
}

}  // namespace weir::moe
