// rl.TokenLogProbs: log softmax(logits)[target] per position and the entropy of each position's
// distribution, what GRPO's probability ratio, KL term and entropy metric are made of.
#include <algorithm>
#include <cmath>
#include <limits>

#include "losses/losses.h"
#include "weir/parallel.h"
#include "weir/vec_math.h"

namespace weir::rl {
namespace {

// Rows of vocabulary-wide work per parallel task.
constexpr int64_t kRowGrain = 16;

Status CheckTypes(const ShapeContext& ctx) {
  const TensorType& logits = ctx.input(0);
  const TensorType& targets = ctx.input(1);
  WEIR_RETURN_IF_ERROR(ExpectReadableFloat(logits, "logits"));
  if (logits.shape.empty()) {
    return InvalidArgument("logits " + logits.ToString() + " need a vocabulary dim");
  }
  Shape rows(logits.shape.begin(), logits.shape.end() - 1);
  if (targets.shape != rows || (targets.dtype != DT_I64 && targets.dtype != DT_I32)) {
    return InvalidArgument("targets must be integer ids of shape " + ShapeString(rows) +
                           " for logits " + logits.ToString() + ", got " + targets.ToString());
  }
  return Status();
}

int64_t TargetAt(const Tensor& targets, int64_t i) {
  return targets.dtype() == DT_I64 ? targets.data<int64_t>()[i] : targets.data<int32_t>()[i];
}

// Serial: cheap next to the vocabulary-wide work, and the first bad id is the one reported.
Status CheckTargets(const Tensor& targets, int64_t vocab, int64_t ignore) {
  for (int64_t r = 0; r < targets.numel(); ++r) {
    int64_t t = TargetAt(targets, r);
    if (t != ignore && (t < 0 || t >= vocab)) {
      return InvalidArgument("target " + std::to_string(t) + " at position " + std::to_string(r) +
                             " is outside the vocabulary [0, " + std::to_string(vocab) + ")");
    }
  }
  return Status();
}

// One row's softmax in the max-subtracted form: with m = max_j x_j and e_j = exp(x_j − m),
// log_sum = log Σ e_j, so log p_j = (x_j − m) − log_sum, and the entropy
// −Σ p_j log p_j = log_sum − Σ e_j (x_j − m) / Σ e_j.
template <typename A>
struct RowSoftmax {
  A max;
  A log_sum;
  A entropy;
};

// Eight partial results per reduction: a single running max or sum is a serial dependency the
// compiler may not reorder, so it would not vectorize.
template <typename T>
RowSoftmax<AccumulatorOf<T>> Softmax(const T* row, int64_t n) {
  using A = AccumulatorOf<T>;
  A top[8];
  std::fill(top, top + 8, -std::numeric_limits<A>::infinity());
  int64_t j = 0;
  for (; j + 8 <= n; j += 8)
    for (int l = 0; l < 8; ++l) top[l] = std::max(top[l], Widen(row[j + l]));
  for (; j < n; ++j) top[0] = std::max(top[0], Widen(row[j]));
  A m = *std::max_element(top, top + 8);

  A sum[8] = {}, weighted[8] = {};
  // A logit of −∞ (a token masked out) has e = 0 and x − m = −∞; its term is 0, not NaN.
  auto term = [m](A x, A* s, A* w) {
    A d = x - m;
    A e = Exp(d);
    *s += e;
    *w += e * (e > A(0) ? d : A(0));
  };
  j = 0;
  for (; j + 8 <= n; j += 8)
    for (int l = 0; l < 8; ++l) term(Widen(row[j + l]), &sum[l], &weighted[l]);
  for (; j < n; ++j) term(Widen(row[j]), &sum[0], &weighted[0]);
  auto total = [](const A* p) {
    return ((p[0] + p[1]) + (p[2] + p[3])) + ((p[4] + p[5]) + (p[6] + p[7]));
  };
  A s = total(sum);
  A log_sum = std::log(s);
  return {m, log_sum, log_sum - total(weighted) / s};
}

Status TokenLogProbsCpu(KernelContext& ctx) {
  Tensor logits = ctx.input(0).Contiguous(), targets = ctx.input(1).Contiguous();
  int64_t ignore = ctx.attrs().Int("ignore_index");
  int64_t vocab = logits.dim(-1), rows = targets.numel();
  WEIR_RETURN_IF_ERROR(CheckTargets(targets, vocab, ignore));
  return DispatchReadable(logits.dtype(), [&](auto tag) {
    using T = decltype(tag);
    using A = AccumulatorOf<T>;  // f32, or f64 for f64 logits: the outputs' dtype (LossType)
    const T* x = logits.data<T>();
    A* logp = ctx.output(0).data<A>();
    A* entropy = ctx.output(1).data<A>();
    ParallelFor(rows, kRowGrain, [&](int64_t b, int64_t e) {
      for (int64_t r = b; r < e; ++r) {
        int64_t t = TargetAt(targets, r);
        if (t == ignore) {
          logp[r] = A(0);
          entropy[r] = A(0);
          continue;
        }
        const T* row = x + r * vocab;
        RowSoftmax<A> s = Softmax(row, vocab);
        logp[r] = (Widen(row[t]) - s.max) - s.log_sum;
        entropy[r] = s.entropy;
      }
    });
    return Status();
  });
}

// dlogits = dlogp · (onehot(target) − softmax(logits)) per position; 0 where ignored.
Status TokenLogProbsGradCpu(KernelContext& ctx) {
  Tensor logits = ctx.input(0).Contiguous(), targets = ctx.input(1).Contiguous(),
         dlogp = ctx.input(2).Contiguous();
  int64_t ignore = ctx.attrs().Int("ignore_index");
  int64_t vocab = logits.dim(-1), rows = targets.numel();
  WEIR_RETURN_IF_ERROR(CheckTargets(targets, vocab, ignore));
  return DispatchReadable(logits.dtype(), [&](auto tag) {
    using T = decltype(tag);
    using A = AccumulatorOf<T>;
    const T* x = logits.data<T>();
    const A* g = dlogp.data<A>();
    T* dx = ctx.output(0).data<T>();
    ParallelFor(rows, kRowGrain, [&](int64_t b, int64_t e) {
      for (int64_t r = b; r < e; ++r) {
        T* drow = dx + r * vocab;
        int64_t t = TargetAt(targets, r);
        if (t == ignore || g[r] == A(0)) {
          std::fill(drow, drow + vocab, Narrow<T>(A(0)));
          continue;
        }
        const T* row = x + r * vocab;
        RowSoftmax<A> s = Softmax(row, vocab);
        A scale = -g[r];
        for (int64_t j = 0; j < vocab; ++j)
          drow[j] = Narrow<T>(scale * Exp((Widen(row[j]) - s.max) - s.log_sum));
        drow[t] = Narrow<T>(g[r] * (A(1) - Exp((Widen(row[t]) - s.max) - s.log_sum)));
      }
    });
    return Status();
  });
}

Status TokenLogProbsGrad(GradContext& g) {
  if (!g.needs_grad(0)) return Status();
  if (!g.grad(0).valid()) {  // only the entropy is used, and it carries no gradient
    WEIR_ASSIGN_OR_RETURN(ValueRef zeros, DetachedGradient(g, 0));
    g.set_input_grad(0, zeros);
    return Status();
  }
  WEIR_ASSIGN_OR_RETURN(ValueRef d, g.Op1("rl.TokenLogProbsGrad",
                                          {g.input(0), g.input(1), g.grad(0)}, g.attrs().values()));
  g.set_input_grad(0, d);
  return Status();
}

}  // namespace

void RegisterTokenLogProbs(Registrar& r) {
  r.TensorOp("rl.TokenLogProbs")
      .Doc(
          "Per position, the log-probability of the target token under softmax(logits) over the "
          "last dim (max-subtracted log-sum-exp), and the entropy −Σ p log p of the position's "
          "distribution. Positions whose target is ignore_index give 0 for both. The entropy is "
          "a metric (TRL's `entropy`): no gradient flows from it.")
      .Input("logits", "T", "[..., vocab] (f32, bf16, f16 or f64)")
      .Input("targets", "i64", "[...] token ids (i64 or i32)")
      .Output("logp", "f32", "[...] log p(target); f32, f64 for f64 logits")
      .Output("entropy", "f32", "[...] entropy in nats; f32, f64 for f64 logits")
      .Attr<int64_t>("ignore_index", -100, "target id whose position gives 0 (padding, prompts)")
      .Shape([](ShapeContext& c) {
        WEIR_RETURN_IF_ERROR(CheckTypes(c));
        TensorType out{LossType(c.input(0).dtype), c.input(1).shape};
        c.set_output(0, out);
        c.set_output(1, out);
        return Status();
      })
      .Kernel("cpu", TokenLogProbsCpu)
      .Gradient(TokenLogProbsGrad);
  r.TensorOp("rl.TokenLogProbsGrad")
      .Doc(
          "Gradient of rl.TokenLogProbs with respect to the logits: dlogp · (onehot(target) − "
          "softmax(logits)) per position, 0 where the target is ignore_index.")
      .Input("logits", "T", "[..., vocab]")
      .Input("targets", "i64", "[...] token ids (i64 or i32)")
      .Input("dlogp", "f32", "[...] gradient of logp (f64 for f64 logits)")
      .Output("dlogits", "T", "logits' type")
      .Attr<int64_t>("ignore_index", -100, "as in the forward op")
      .Shape([](ShapeContext& c) {
        WEIR_RETURN_IF_ERROR(CheckTypes(c));
        TensorType want{LossType(c.input(0).dtype), c.input(1).shape};
        if (c.input(2) != want) {
          return InvalidArgument("dlogp must be " + want.ToString() + ", got " +
                                 c.input(2).ToString());
        }
        c.set_output(0, c.input(0));
        return Status();
      })
      .Kernel("cpu", TokenLogProbsGradCpu, {DT_F32, DT_BF16, DT_F16, DT_F64});
}

}  // namespace weir::rl
