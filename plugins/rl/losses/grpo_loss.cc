// rl.GRPOLoss: GRPO's clipped-ratio policy loss with the k3 KL penalty (spec §7.1), per token
// and aggregated as TRL's loss types do (grpo, dapo, dr_grpo), with the kl and clip_ratio
// metrics TRL logs.
#include <algorithm>
#include <cmath>
#include <vector>

#include "losses/losses.h"
#include "weir/parallel.h"

namespace weir::rl {
namespace {

enum class Aggregation { kGrpo, kDapo, kDrGrpo };

struct LossKnobs {
  double epsilon_low = 0.2;
  double epsilon_high = 0.2;
  double beta = 0;
  Aggregation aggregation = Aggregation::kDapo;
  int64_t max_completion_length = 0;  // 0: the time dim

  static LossKnobs From(const Attrs& a) {
    LossKnobs k;
    k.epsilon_low = a.Float("epsilon");
    double high = a.Float("epsilon_high");
    k.epsilon_high = high > 0 ? high : k.epsilon_low;
    k.beta = a.Float("beta");
    const std::string& type = a.String("loss_type");
    k.aggregation = type == "grpo"      ? Aggregation::kGrpo
                    : type == "dr_grpo" ? Aggregation::kDrGrpo
                                        : Aggregation::kDapo;
    k.max_completion_length = a.Int("max_completion_length");
    return k;
  }
};

// One token's share of the loss before aggregation, its derivative in logp, its k3 KL estimate
// and whether the clip is what holds it.
struct TokenTerms {
  double loss = 0;
  double dloss_dlogp = 0;
  double kl = 0;
  bool clipped = false;
};

TokenTerms Token(double logp, double old_logp, double ref_logp, double advantage,
                 const LossKnobs& k) {
  TokenTerms out;
  double ratio = std::exp(logp - old_logp);
  double clipped_ratio = std::clamp(ratio, 1 - k.epsilon_low, 1 + k.epsilon_high);
  out.loss = -std::min(ratio * advantage, clipped_ratio * advantage);
  // The clipped term is the smaller one exactly here, and it is constant in logp. Elsewhere the
  // unclipped term r·A is the minimum (inside the clip range both terms equal r·A and torch's
  // min splits the gradient between them, which adds up to the same).
  out.clipped =
      (ratio < 1 - k.epsilon_low && advantage < 0) || (ratio > 1 + k.epsilon_high && advantage > 0);
  out.dloss_dlogp = out.clipped ? 0.0 : -advantage * ratio;
  // k3 = π_ref/π − log(π_ref/π) − 1: unbiased for KL(π‖π_ref) and never negative.
  double log_ref_ratio = ref_logp - logp;
  double ref_ratio = std::exp(log_ref_ratio);
  out.kl = ref_ratio - log_ref_ratio - 1;
  if (k.beta > 0) {
    out.loss += k.beta * out.kl;
    out.dloss_dlogp += k.beta * (1 - ref_ratio);
  }
  return out;
}

// The inputs as [batch, time] arrays (advantages [batch]); every input has logp's dtype.
template <typename T>
struct Rows {
  const T* logp;
  const T* old_logp;
  const T* ref_logp;
  const T* advantages;
  const T* mask;
  int64_t batch;
  int64_t time;

  double Mask(int64_t b, int64_t t) const { return static_cast<double>(Widen(mask[b * time + t])); }
  TokenTerms At(int64_t b, int64_t t, const LossKnobs& k) const {
    int64_t i = b * time + t;
    return Token(static_cast<double>(Widen(logp[i])), static_cast<double>(Widen(old_logp[i])),
                 static_cast<double>(Widen(ref_logp[i])), static_cast<double>(Widen(advantages[b])),
                 k);
  }
};

template <typename T>
Rows<T> ReadRows(const std::vector<Tensor>& in) {
  return {in[0].data<T>(), in[1].data<T>(), in[2].data<T>(), in[3].data<T>(),
          in[4].data<T>(), in[0].dim(0),    in[0].dim(1)};
}

// Rows per parallel task: enough tokens that a task outweighs its scheduling.
int64_t RowGrain(int64_t time) { return std::max<int64_t>(1, 4096 / std::max<int64_t>(time, 1)); }

// The weight of each of row b's masked tokens in the loss: loss = Σ_b w_b Σ_t mask·per_token.
std::vector<double> RowWeights(const std::vector<double>& row_mask, int64_t time,
                               const LossKnobs& k) {
  size_t batch = row_mask.size();
  std::vector<double> w(batch, 0.0);
  if (batch == 0) return w;
  double b = static_cast<double>(batch);
  switch (k.aggregation) {
    case Aggregation::kGrpo:  // mean over sequences of each sequence's token mean
      for (size_t r = 0; r < batch; ++r) w[r] = 1.0 / (b * std::max(row_mask[r], 1.0));
      break;
    case Aggregation::kDapo: {  // one token mean over the batch
      double total = 0;
      for (double m : row_mask) total += m;
      std::fill(w.begin(), w.end(), 1.0 / std::max(total, 1.0));
      break;
    }
    case Aggregation::kDrGrpo: {  // a constant normalizer, so no length bias
      int64_t length = k.max_completion_length > 0 ? k.max_completion_length : time;
      if (length > 0) std::fill(w.begin(), w.end(), 1.0 / (b * static_cast<double>(length)));
      break;
    }
  }
  return w;
}

// Row sums over masked tokens. A token whose mask is 0 is skipped, not multiplied by 0, so
// padding that holds inf or NaN leaves the loss finite.
struct RowSums {
  double mask = 0;
  double loss = 0;  // Σ mask · per_token
  double kl = 0;
  double clipped = 0;
};

template <typename T>
std::vector<RowSums> SumRows(const Rows<T>& x, const LossKnobs& k) {
  std::vector<RowSums> sums(static_cast<size_t>(x.batch));
  ParallelFor(x.batch, RowGrain(x.time), [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      RowSums& s = sums[static_cast<size_t>(b)];
      for (int64_t t = 0; t < x.time; ++t) {
        double m = x.Mask(b, t);
        if (m == 0) continue;
        TokenTerms terms = x.At(b, t, k);
        s.mask += m;
        s.loss += m * terms.loss;
        s.kl += m * terms.kl;
        s.clipped += terms.clipped ? m : 0.0;
      }
    }
  });
  return sums;
}

std::vector<Tensor> ContiguousInputs(const KernelContext& ctx, int n) {
  std::vector<Tensor> in;
  for (int i = 0; i < n; ++i) in.push_back(ctx.input(i).Contiguous());
  return in;
}

Status GrpoLossCpu(KernelContext& ctx) {
  std::vector<Tensor> in = ContiguousInputs(ctx, 5);
  LossKnobs k = LossKnobs::From(ctx.attrs());
  return DispatchReadable(in[0].dtype(), [&](auto tag) {
    using T = decltype(tag);
    Rows<T> x = ReadRows<T>(in);
    std::vector<RowSums> sums = SumRows(x, k);
    std::vector<double> row_mask;
    for (const RowSums& s : sums) row_mask.push_back(s.mask);
    std::vector<double> w = RowWeights(row_mask, x.time, k);
    // Summed in row order, so the result does not depend on how the rows were split.
    double loss = 0, kl = 0, clipped = 0, tokens = 0;
    for (size_t b = 0; b < sums.size(); ++b) {
      loss += w[b] * sums[b].loss;
      kl += sums[b].kl;
      clipped += sums[b].clipped;
      tokens += sums[b].mask;
    }
    tokens = std::max(tokens, 1.0);
    StoreFromDouble(ctx.output(0).raw_data(), ctx.output(0).dtype(), 0, loss);
    StoreFromDouble(ctx.output(1).raw_data(), ctx.output(1).dtype(), 0, kl / tokens);
    StoreFromDouble(ctx.output(2).raw_data(), ctx.output(2).dtype(), 0, clipped / tokens);
    return Status();
  });
}

// dlogp = dloss · w_b · mask · d(per_token)/dlogp, where d(per_token)/dlogp is −A·ratio unless
// the clip holds (then 0), plus β(1 − π_ref/π) when β > 0.
Status GrpoLossGradCpu(KernelContext& ctx) {
  std::vector<Tensor> in = ContiguousInputs(ctx, 5);
  double dloss = ctx.input(5).At(0);
  LossKnobs k = LossKnobs::From(ctx.attrs());
  return DispatchReadable(in[0].dtype(), [&](auto tag) {
    using T = decltype(tag);
    Rows<T> x = ReadRows<T>(in);
    std::vector<double> row_mask(static_cast<size_t>(x.batch), 0.0);
    for (int64_t b = 0; b < x.batch; ++b)
      for (int64_t t = 0; t < x.time; ++t) row_mask[static_cast<size_t>(b)] += x.Mask(b, t);
    std::vector<double> w = RowWeights(row_mask, x.time, k);
    T* dlogp = ctx.output(0).data<T>();
    ParallelFor(x.batch, RowGrain(x.time), [&](int64_t begin, int64_t end) {
      for (int64_t b = begin; b < end; ++b) {
        double scale = dloss * w[static_cast<size_t>(b)];
        for (int64_t t = 0; t < x.time; ++t) {
          double m = x.Mask(b, t);
          double d = m == 0 ? 0.0 : scale * m * x.At(b, t, k).dloss_dlogp;
          dlogp[b * x.time + t] = Narrow<T>(static_cast<AccumulatorOf<T>>(d));
        }
      }
    });
    return Status();
  });
}

constexpr const char* kInputNames[] = {"logp", "old_logp", "ref_logp", "advantages", "mask"};

Status CheckTypes(const ShapeContext& c) {
  const TensorType& logp = c.input(0);
  WEIR_RETURN_IF_ERROR(ExpectReadableFloat(logp, "logp"));
  if (logp.shape.size() != 2) {
    return InvalidArgument("logp must be [batch, time], got " + logp.ToString());
  }
  for (int i = 1; i < 5; ++i) {
    TensorType want{logp.dtype, i == 3 ? Shape{logp.shape[0]} : logp.shape};
    if (c.input(i) != want) {
      return InvalidArgument(std::string(kInputNames[i]) + " must be " + want.ToString() +
                             " to match logp " + logp.ToString() + ", got " +
                             c.input(i).ToString());
    }
  }
  return Status();
}

Status GrpoLossGrad(GradContext& g) {
  for (int i = 1; i < 5; ++i) {
    if (!g.needs_grad(i)) continue;
    WEIR_ASSIGN_OR_RETURN(ValueRef zeros, DetachedGradient(g, i));
    g.set_input_grad(i, zeros);
  }
  if (!g.needs_grad(0)) return Status();
  if (!g.grad(0).valid()) {  // only kl or clip_ratio is used; they carry no gradient
    WEIR_ASSIGN_OR_RETURN(ValueRef zeros, DetachedGradient(g, 0));
    g.set_input_grad(0, zeros);
    return Status();
  }
  std::vector<ValueRef> in;
  for (int i = 0; i < 5; ++i) in.push_back(g.input(i));
  in.push_back(g.grad(0));
  WEIR_ASSIGN_OR_RETURN(ValueRef d, g.Op1("rl.GRPOLossGrad", in, g.attrs().values()));
  g.set_input_grad(0, d);
  return Status();
}

// The attrs of the loss and of its gradient op.
void LossAttrs(OpBuilder& op) {
  op.Attr<double>("epsilon", 0.2, "the ratio is clipped below at 1 − epsilon", Min(0.0), Max(1.0))
      .Attr<double>("epsilon_high", 0.0,
                    "the ratio is clipped above at 1 + epsilon_high; 0 means epsilon (DAPO "
                    "recommends 0.28)",
                    Min(0.0))
      .Attr<double>("beta", 0.0,
                    "weight of the k3 KL penalty against the reference policy; at 0 it is left "
                    "out of the loss (kl is still computed)",
                    Min(0.0))
      .Attr<std::string>("loss_type", "dapo",
                         "aggregation over tokens: grpo (mean over sequences of each sequence's "
                         "token mean; length-biased), dapo (token mean over the batch), dr_grpo "
                         "(token sum / (batch · max_completion_length))",
                         OneOf{"grpo", "dapo", "dr_grpo"})
      .Attr<int64_t>("max_completion_length", 0,
                     "dr_grpo's per-sequence normalizer; 0 means the time dim", Min(0));
}

}  // namespace

void RegisterGrpoLoss(Registrar& r) {
  OpBuilder& loss = r.TensorOp("rl.GRPOLoss");
  loss.Doc(
          "GRPO's policy loss (DeepSeekMath; TRL's GRPOTrainer). Per token, with ratio = "
          "exp(logp − old_logp) and A the sequence's advantage: −min(ratio·A, clip(ratio, "
          "1 − epsilon, 1 + epsilon_high)·A), plus beta·(exp(ref_logp − logp) − (ref_logp − "
          "logp) − 1) when beta > 0. Tokens count by mask and are aggregated as loss_type says. "
          "Only logp is differentiated; kl and clip_ratio are metrics.")
      .Input("logp", "T", "[batch, time] log-probabilities of the sampled tokens under the policy")
      .Input("old_logp", "T", "[batch, time] the same under the policy that sampled them")
      .Input("ref_logp", "T", "[batch, time] the same under the reference policy")
      .Input("advantages", "T", "[batch] one advantage per sequence")
      .Input("mask", "T", "[batch, time] 1 on completion tokens that count, 0 elsewhere")
      .Output("loss", "f32", "scalar; f32, f64 for f64 inputs")
      .Output("kl", "f32", "scalar: mean k3 KL over masked tokens (also when beta is 0)")
      .Output("clip_ratio", "f32",
              "scalar: share of masked tokens the clip holds ((ratio < 1 − epsilon and A < 0) or "
              "(ratio > 1 + epsilon_high and A > 0))");
  LossAttrs(loss);
  loss.Shape([](ShapeContext& c) {
        WEIR_RETURN_IF_ERROR(CheckTypes(c));
        TensorType scalar{LossType(c.input(0).dtype), {}};
        for (int o = 0; o < 3; ++o) c.set_output(o, scalar);
        return Status();
      })
      .Kernel("cpu", GrpoLossCpu)
      .Gradient(GrpoLossGrad);

  OpBuilder& grad = r.TensorOp("rl.GRPOLossGrad");
  grad.Doc("Gradient of rl.GRPOLoss's loss with respect to logp.")
      .Input("logp", "T", "[batch, time]")
      .Input("old_logp", "T", "[batch, time]")
      .Input("ref_logp", "T", "[batch, time]")
      .Input("advantages", "T", "[batch]")
      .Input("mask", "T", "[batch, time]")
      .Input("dloss", "f32", "scalar gradient of the loss (f64 for f64 inputs)")
      .Output("dlogp", "T", "[batch, time], logp's type");
  LossAttrs(grad);
  grad.Shape([](ShapeContext& c) {
        WEIR_RETURN_IF_ERROR(CheckTypes(c));
        TensorType want{LossType(c.input(0).dtype), {}};
        if (c.input(5) != want) {
          return InvalidArgument("dloss must be " + want.ToString() + ", got " +
                                 c.input(5).ToString());
        }
        c.set_output(0, c.input(0));
        return Status();
      })
      .Kernel("cpu", GrpoLossGradCpu, {DT_F32, DT_BF16, DT_F16, DT_F64});
}

}  // namespace weir::rl
