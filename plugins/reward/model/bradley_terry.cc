// reward.BradleyTerryLoss: the reward model's objective on preference pairs (InstructGPT, TRL's
// RewardTrainer): the probability that the chosen completion beats the rejected one is
// σ(s_chosen − s_rejected), and the loss is its negative log-likelihood averaged over the pairs.
// The scores arrive as one vector, chosen rows first, because the model scores both halves of a
// batch in one forward pass.
#include <cmath>
#include <vector>

#include "model/reward_model.h"
#include "weir/tensor_op.h"

namespace weir::reward {
namespace {

// The loss and its metric come out in f32 for f32, bf16 and f16 scores and in f64 for f64, as
// nn.CrossEntropy does: a narrow model still logs and differentiates its loss in f32.
DataType LossType(DataType t) { return t == DT_F64 ? DT_F64 : DT_F32; }

bool IsScoreType(DataType t) { return t == DT_F32 || t == DT_BF16 || t == DT_F16 || t == DT_F64; }

// softplus(x) = log(1 + e^x), without overflow for large x or lost digits for very negative x.
double Softplus(double x) { return std::max(x, 0.0) + std::log1p(std::exp(-std::abs(x))); }

// σ(x), without overflow for either sign.
double Sigmoid(double x) {
  if (x >= 0) return 1.0 / (1.0 + std::exp(-x));
  double e = std::exp(x);
  return e / (1.0 + e);
}

// The margins s_chosen − s_rejected of the N pairs, in double.
std::vector<double> Margins(const Tensor& scores) {
  Tensor s = scores.Contiguous();
  int64_t n = s.numel() / 2;
  std::vector<double> margins(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) {
    margins[static_cast<size_t>(i)] =
        LoadAsDouble(s.raw_data(), s.dtype(), i) - LoadAsDouble(s.raw_data(), s.dtype(), n + i);
  }
  return margins;
}

Status CheckScores(const TensorType& scores) {
  if (!IsScoreType(scores.dtype)) {
    return InvalidArgument("scores must be f32, bf16, f16 or f64, got " + scores.ToString());
  }
  if (scores.shape.size() != 1) {
    return InvalidArgument(
        "scores must be a vector [2N]: the N chosen completions' scores, then the N rejected "
        "ones of the same pairs; got " +
        scores.ToString());
  }
  int64_t rows = scores.shape[0];
  if (rows == 0 || rows % 2 != 0) {
    return InvalidArgument(
        "scores must hold an even, non-zero number 2N of rows (N chosen, then "
        "N rejected), got " +
        scores.ToString());
  }
  return Status();
}

// loss = mean_i softplus(−(s_i − s_{N+i})) = −mean_i log σ(s_i − s_{N+i});
// accuracy = the share of pairs with s_i > s_{N+i} (a tie is not a win).
Status BradleyTerryCpu(KernelContext& ctx) {
  std::vector<double> margins = Margins(ctx.input(0));
  double loss = 0, wins = 0;
  for (double m : margins) {
    loss += Softplus(-m);
    wins += m > 0 ? 1.0 : 0.0;
  }
  double n = static_cast<double>(margins.size());
  StoreFromDouble(ctx.output(0).raw_data(), ctx.output(0).dtype(), 0, loss / n);
  StoreFromDouble(ctx.output(1).raw_data(), ctx.output(1).dtype(), 0, wins / n);
  return Status();
}

// d loss / d s_i = −σ(−m_i) / N and d loss / d s_{N+i} = +σ(−m_i) / N, times dloss; all zeros
// with `detached` (only the accuracy, which carries no gradient, was used).
Status BradleyTerryGradCpu(KernelContext& ctx) {
  Tensor& out = ctx.output(0);
  std::vector<double> margins = Margins(ctx.input(0));
  int64_t n = static_cast<int64_t>(margins.size());
  double scale = ctx.attrs().Bool("detached") ? 0.0 : ctx.input(1).At(0) / static_cast<double>(n);
  for (int64_t i = 0; i < n; ++i) {
    double d = scale * Sigmoid(-margins[static_cast<size_t>(i)]);
    StoreFromDouble(out.raw_data(), out.dtype(), i, -d);
    StoreFromDouble(out.raw_data(), out.dtype(), n + i, d);
  }
  return Status();
}

Status BradleyTerryGrad(GradContext& g) {
  if (!g.needs_grad(0)) return Status();
  // Only the accuracy flows into the loss being differentiated: a metric, so zeros. The loss
  // value stands in for dloss to give the gradient op its scalar input.
  bool detached = !g.grad(0).valid();
  WEIR_ASSIGN_OR_RETURN(ValueRef d, g.Op1("reward.BradleyTerryLossGrad",
                                          {g.input(0), detached ? g.output(0) : g.grad(0)},
                                          {{"detached", ToAttrValue(detached)}}));
  g.set_input_grad(0, d);
  return Status();
}

}  // namespace

void RegisterBradleyTerryLoss(Registrar& r) {
  r.TensorOp("reward.BradleyTerryLoss")
      .Doc(
          "The Bradley-Terry loss of a reward model on preference pairs (InstructGPT; TRL's "
          "RewardTrainer): scores [2N] hold the N chosen completions' scores, then the N rejected "
          "ones of the same pairs; loss = mean_i softplus(−(s_i − s_{N+i})) = −mean_i log "
          "σ(s_chosen − s_rejected), computed without overflow for any margin. accuracy, the "
          "share of pairs whose chosen completion scores strictly higher, is a metric and "
          "carries no gradient.")
      .Input("scores", "T", "[2N]: chosen rows first, then the rejected rows in the same order")
      .Output("loss", "f32", "scalar; f32, f64 for f64 scores")
      .Output("accuracy", "f32", "scalar: the share of pairs with s_chosen > s_rejected")
      .Shape([](ShapeContext& c) {
        WEIR_RETURN_IF_ERROR(CheckScores(c.input(0)));
        TensorType scalar{LossType(c.input(0).dtype), {}};
        c.set_output(0, scalar);
        c.set_output(1, scalar);
        return Status();
      })
      .Kernel("cpu", BradleyTerryCpu, {DT_F32, DT_F64})
      .Gradient(BradleyTerryGrad);

  r.TensorOp("reward.BradleyTerryLossGrad")
      .Doc("Gradient of reward.BradleyTerryLoss's loss with respect to the scores.")
      .Input("scores", "T", "[2N]")
      .Input("dloss", "f32", "scalar gradient of the loss (f64 for f64 scores)")
      .Output("dscores", "T", "[2N], the scores' type")
      .Attr("detached", false,
            "the loss was not used (only the accuracy): the gradient is zeros and dloss is "
            "ignored")
      .Shape([](ShapeContext& c) {
        WEIR_RETURN_IF_ERROR(CheckScores(c.input(0)));
        TensorType want{LossType(c.input(0).dtype), {}};
        if (c.input(1) != want) {
          return InvalidArgument("dloss must be " + want.ToString() + ", got " +
                                 c.input(1).ToString());
        }
        c.set_output(0, c.input(0));
        return Status();
      })
      .Kernel("cpu", BradleyTerryGradCpu, {DT_F32, DT_BF16, DT_F16, DT_F64});
}

}  // namespace weir::reward
