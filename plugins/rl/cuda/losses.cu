// The rl plugin's tensor ops on CUDA: rl.TokenLogProbs(+Grad), rl.GRPOLoss(+Grad) and
// rl.ZerosLike, as losses/*.cc compute them.
//
// The log-softmax ops run one block per position (a vocabulary-wide row): a max, then the sum of
// exp(x − max) and of its entropy term, each a block reduction in f32 (f64 for f64 logits). The
// GRPO loss computes per token in f64 like the CPU, sums each sequence in a block, and one block
// aggregates the sequences. All reductions have a fixed order: the results are deterministic.
//
// Errors the CPU reports from the data (a target outside the vocabulary) cannot be reported from
// the device without a wait; such a position's outputs come out NaN instead.
#include <string>

#include "cuda/register.h"
#include "losses/losses.h"
#include "weir/cuda_kernel.h"

namespace weir::rl {
namespace {

using weir::cuda::BlockMax;
using weir::cuda::Blocks;
using weir::cuda::BlockSum;
using weir::cuda::Check;
using weir::cuda::CheckLaunch;
using weir::cuda::Data;
using weir::cuda::DeviceT;
using weir::cuda::Exp;
using weir::cuda::Load;
using weir::cuda::Scratch;
using weir::cuda::Store;
using weir::cuda::Stream;

__device__ __forceinline__ float Log(float x) { return logf(x); }
__device__ __forceinline__ double Log(double x) { return log(x); }

// A scalar of dtype f32 or f64 (a loss gradient's seed) as double.
__device__ __forceinline__ double ScalarAsDouble(const void* p, DataType dtype) {
  if (dtype == DT_F64) return *static_cast<const double*>(p);
  return *static_cast<const float*>(p);
}

constexpr int kRowThreads = 512;

unsigned RowBlocks(int64_t rows) {
  return static_cast<unsigned>(std::clamp<int64_t>(rows, 1, int64_t{1} << 20));
}

// ---- rl.TokenLogProbs -----------------------------------------------------------------------

// The row's max and log Σ exp(x − max); with `entropy`, also the entropy
// log_sum − Σ e (x − max) / Σ e (a logit of −∞ adds 0, not NaN).
template <typename D, typename A>
struct RowSoftmax {
  A max, log_sum, entropy;
};

template <typename D, typename A>
__device__ RowSoftmax<D, A> Softmax(const D* row, int64_t vocab, bool entropy, A* shared) {
  A m = A(-INFINITY);
  for (int64_t j = threadIdx.x; j < vocab; j += blockDim.x) {
    A v = Load(row[j]);
    m = v > m ? v : m;
  }
  m = BlockMax(m, shared);
  A sum = 0, weighted = 0;
  for (int64_t j = threadIdx.x; j < vocab; j += blockDim.x) {
    A d = A(Load(row[j])) - m;
    A e = Exp(d);
    sum += e;
    if (entropy) weighted += e * (e > A(0) ? d : A(0));
  }
  sum = BlockSum(sum, shared);
  if (entropy) weighted = BlockSum(weighted, shared);
  A log_sum = Log(sum);
  return {m, log_sum, log_sum - weighted / sum};
}

template <typename D, typename A, typename Id>
__global__ void __launch_bounds__(kRowThreads)
    TokenLogProbsKernel(const D* logits, const Id* targets, int64_t rows, int64_t vocab,
                        int64_t ignore, A* logp, A* entropy) {
  __shared__ A shared[32];
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    int64_t t = targets[r];
    if (t == ignore || t < 0 || t >= vocab) {  // the same for the whole block
      if (threadIdx.x == 0) {
        A v = t == ignore ? A(0) : A(NAN);
        logp[r] = v;
        entropy[r] = v;
      }
      continue;
    }
    const D* row = logits + r * vocab;
    RowSoftmax<D, A> s = Softmax<D, A>(row, vocab, true, shared);
    if (threadIdx.x == 0) {
      logp[r] = (A(Load(row[t])) - s.max) - s.log_sum;
      entropy[r] = s.entropy;
    }
  }
}

// dlogits = dlogp · (onehot(target) − softmax(logits)); 0 where ignored or where dlogp is 0.
template <typename D, typename A, typename Id>
__global__ void __launch_bounds__(kRowThreads)
    TokenLogProbsGradKernel(const D* logits, const Id* targets, const A* dlogp, int64_t rows,
                            int64_t vocab, int64_t ignore, D* dlogits) {
  __shared__ A shared[32];
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    int64_t t = targets[r];
    A g = dlogp[r];
    D* drow = dlogits + r * vocab;
    if (t == ignore || g == A(0) || t < 0 || t >= vocab) {
      A fill = t == ignore || g == A(0) ? A(0) : A(NAN);
      for (int64_t j = threadIdx.x; j < vocab; j += blockDim.x) drow[j] = Store<D>(fill);
      continue;
    }
    const D* row = logits + r * vocab;
    RowSoftmax<D, A> s = Softmax<D, A>(row, vocab, false, shared);
    A scale = -g;
    for (int64_t j = threadIdx.x; j < vocab; j += blockDim.x) {
      A p = Exp((A(Load(row[j])) - s.max) - s.log_sum);
      drow[j] = Store<D>(j == t ? g * (A(1) - p) : scale * p);
    }
  }
}

Status CheckLogitsAndTargets(const Tensor& logits, const Tensor& targets) {
  if (!IsReadableFloat(logits.dtype()) || logits.shape().empty())
    return InvalidArgument("logits must be [..., vocab] floats, got " + logits.DebugString());
  Shape rows(logits.shape().begin(), logits.shape().end() - 1);
  if (targets.shape() != rows || (targets.dtype() != DT_I64 && targets.dtype() != DT_I32)) {
    return InvalidArgument("targets must be integer ids of shape " + ShapeString(rows) +
                           " for logits " + logits.DebugString() + ", got " +
                           targets.DebugString());
  }
  return Status();
}

// Calls f with the targets' C++ type.
template <typename F>
Status DispatchIds(DataType dtype, F&& f) {
  if (dtype == DT_I32) return f(int32_t{});
  return f(int64_t{});
}

Status TokenLogProbsCuda(KernelContext& ctx) {
  const Tensor &logits = ctx.input(0), &targets = ctx.input(1);
  WEIR_RETURN_IF_ERROR(CheckLogitsAndTargets(logits, targets));
  int64_t ignore = ctx.attrs().Int("ignore_index");
  int64_t vocab = logits.dim(-1), rows = targets.numel();
  if (rows == 0) return Status();
  return DispatchReadable(logits.dtype(), [&](auto tag) {
    using T = decltype(tag);
    using A = AccumulatorOf<T>;
    return DispatchIds(targets.dtype(), [&](auto id) {
      using Id = decltype(id);
      TokenLogProbsKernel<DeviceT<T>, A, Id><<<RowBlocks(rows), kRowThreads, 0, Stream(ctx)>>>(
          Data<T>(logits), targets.data<Id>(), rows, vocab, ignore, ctx.output(0).data<A>(),
          ctx.output(1).data<A>());
      return CheckLaunch("rl.TokenLogProbs");
    });
  });
}

Status TokenLogProbsGradCuda(KernelContext& ctx) {
  const Tensor &logits = ctx.input(0), &targets = ctx.input(1), &dlogp = ctx.input(2);
  WEIR_RETURN_IF_ERROR(CheckLogitsAndTargets(logits, targets));
  int64_t ignore = ctx.attrs().Int("ignore_index");
  int64_t vocab = logits.dim(-1), rows = targets.numel();
  if (dlogp.dtype() != LossType(logits.dtype()) || dlogp.numel() != rows) {
    return InvalidArgument("dlogp must be " + std::string(DataTypeName(LossType(logits.dtype()))) +
                           ShapeString(targets.shape()) + ", got " + dlogp.DebugString());
  }
  if (rows == 0) return Status();
  return DispatchReadable(logits.dtype(), [&](auto tag) {
    using T = decltype(tag);
    using A = AccumulatorOf<T>;
    return DispatchIds(targets.dtype(), [&](auto id) {
      using Id = decltype(id);
      TokenLogProbsGradKernel<DeviceT<T>, A, Id><<<RowBlocks(rows), kRowThreads, 0, Stream(ctx)>>>(
          Data<T>(logits), targets.data<Id>(), dlogp.data<A>(), rows, vocab, ignore,
          Data<T>(ctx.output(0)));
      return CheckLaunch("rl.TokenLogProbsGrad");
    });
  });
}

// ---- rl.GRPOLoss ----------------------------------------------------------------------------

enum Aggregation : int { kGrpo, kDapo, kDrGrpo };

struct LossKnobs {
  double epsilon_low, epsilon_high, beta;
  int aggregation;
  int64_t max_completion_length;  // 0: the time dim
};

LossKnobs KnobsFrom(const Attrs& a) {
  LossKnobs k;
  k.epsilon_low = a.Float("epsilon");
  double high = a.Float("epsilon_high");
  k.epsilon_high = high > 0 ? high : k.epsilon_low;
  k.beta = a.Float("beta");
  const std::string& type = a.String("loss_type");
  k.aggregation = type == "grpo" ? kGrpo : type == "dr_grpo" ? kDrGrpo : kDapo;
  k.max_completion_length = a.Int("max_completion_length");
  return k;
}

// One token's share of the loss before aggregation, its derivative in logp, its k3 KL estimate
// and whether the clip holds it (grpo_loss.cc's Token, in f64).
struct TokenTerms {
  double loss, dloss_dlogp, kl;
  bool clipped;
};

__device__ TokenTerms Token(double logp, double old_logp, double ref_logp, double advantage,
                            const LossKnobs& k) {
  TokenTerms out;
  double ratio = exp(logp - old_logp);
  double low = 1 - k.epsilon_low, high = 1 + k.epsilon_high;
  double clipped_ratio = ratio < low ? low : high < ratio ? high : ratio;  // std::clamp
  double a = ratio * advantage, b = clipped_ratio * advantage;
  out.loss = -(b < a ? b : a);  // std::min
  out.clipped = (ratio < low && advantage < 0) || (ratio > high && advantage > 0);
  out.dloss_dlogp = out.clipped ? 0.0 : -advantage * ratio;
  double log_ref_ratio = ref_logp - logp;
  double ref_ratio = exp(log_ref_ratio);
  out.kl = ref_ratio - log_ref_ratio - 1;
  if (k.beta > 0) {
    out.loss += k.beta * out.kl;
    out.dloss_dlogp += k.beta * (1 - ref_ratio);
  }
  return out;
}

// The inputs as [batch, time] arrays (advantages [batch]).
template <typename D>
struct Rows {
  const D *logp, *old_logp, *ref_logp, *advantages, *mask;
  int64_t batch, time;

  __device__ double Mask(int64_t i) const { return static_cast<double>(Load(mask[i])); }
  __device__ TokenTerms At(int64_t b, int64_t t, const LossKnobs& k) const {
    int64_t i = b * time + t;
    return Token(static_cast<double>(Load(logp[i])), static_cast<double>(Load(old_logp[i])),
                 static_cast<double>(Load(ref_logp[i])), static_cast<double>(Load(advantages[b])),
                 k);
  }
};

// Per sequence: Σ mask, Σ mask·loss, Σ mask·kl, Σ mask over clipped tokens. A token whose mask
// is 0 is skipped, so padding holding inf or NaN leaves the sums finite.
template <typename D>
__global__ void GrpoRowSums(Rows<D> x, LossKnobs k, double* sums) {
  __shared__ double shared[32];
  for (int64_t b = blockIdx.x; b < x.batch; b += gridDim.x) {
    double mask = 0, loss = 0, kl = 0, clipped = 0;
    for (int64_t t = threadIdx.x; t < x.time; t += blockDim.x) {
      double m = x.Mask(b * x.time + t);
      if (m == 0) continue;
      TokenTerms terms = x.At(b, t, k);
      mask += m;
      loss += m * terms.loss;
      kl += m * terms.kl;
      clipped += terms.clipped ? m : 0.0;
    }
    mask = BlockSum(mask, shared);
    loss = BlockSum(loss, shared);
    kl = BlockSum(kl, shared);
    clipped = BlockSum(clipped, shared);
    if (threadIdx.x == 0) {
      double* s = sums + 4 * b;
      s[0] = mask;
      s[1] = loss;
      s[2] = kl;
      s[3] = clipped;
    }
  }
}

// The weight of each of row b's masked tokens: loss = Σ_b w_b Σ_t mask·per_token.
__device__ double RowWeight(double row_mask, double total_mask, int64_t batch, int64_t time,
                            const LossKnobs& k) {
  double b = static_cast<double>(batch);
  switch (k.aggregation) {
    case kGrpo:  // mean over sequences of each sequence's token mean
      return 1.0 / (b * (row_mask < 1.0 ? 1.0 : row_mask));  // std::max
    case kDrGrpo: {                                          // a constant normalizer
      int64_t length = k.max_completion_length > 0 ? k.max_completion_length : time;
      return length > 0 ? 1.0 / (b * static_cast<double>(length)) : 0.0;
    }
    default:  // dapo: one token mean over the batch
      return 1.0 / (total_mask < 1.0 ? 1.0 : total_mask);
  }
}

// One block: the loss and the metrics from the rows' sums (stride `stride` doubles per row, the
// mask first; the other sums only with `finish`), or, for the gradient, w_b per row.
__global__ void GrpoAggregate(const double* sums, int stride, int64_t batch, int64_t time,
                              LossKnobs k, void* loss, void* kl, void* clip_ratio,
                              DataType out_type, double* row_weights) {
  __shared__ double shared[32];
  double total_mask = 0;
  for (int64_t b = threadIdx.x; b < batch; b += blockDim.x) total_mask += sums[b * stride];
  total_mask = BlockSum(total_mask, shared);
  if (row_weights != nullptr) {
    for (int64_t b = threadIdx.x; b < batch; b += blockDim.x)
      row_weights[b] = RowWeight(sums[b * stride], total_mask, batch, time, k);
    return;
  }
  double l = 0, kls = 0, clipped = 0;
  for (int64_t b = threadIdx.x; b < batch; b += blockDim.x) {
    const double* s = sums + b * stride;
    l += RowWeight(s[0], total_mask, batch, time, k) * s[1];
    kls += s[2];
    clipped += s[3];
  }
  l = BlockSum(l, shared);
  kls = BlockSum(kls, shared);
  clipped = BlockSum(clipped, shared);
  if (threadIdx.x == 0) {
    double tokens = total_mask < 1.0 ? 1.0 : total_mask;
    double values[3] = {l, kls / tokens, clipped / tokens};
    void* outs[3] = {loss, kl, clip_ratio};
    for (int o = 0; o < 3; ++o) {
      if (out_type == DT_F64)
        *static_cast<double*>(outs[o]) = values[o];
      else
        *static_cast<float*>(outs[o]) = static_cast<float>(values[o]);
    }
  }
}

// Σ_t mask per sequence (the gradient's row masks; grpo_loss.cc sums every mask value).
template <typename D>
__global__ void GrpoRowMasks(const D* mask, int64_t batch, int64_t time, double* sums) {
  __shared__ double shared[32];
  for (int64_t b = blockIdx.x; b < batch; b += gridDim.x) {
    double m = 0;
    for (int64_t t = threadIdx.x; t < time; t += blockDim.x)
      m += static_cast<double>(Load(mask[b * time + t]));
    m = BlockSum(m, shared);
    if (threadIdx.x == 0) sums[b] = m;
  }
}

// dlogp = dloss · w_b · mask · d(per_token)/dlogp; 0 where the mask is 0.
template <typename D, typename A>
__global__ void GrpoGradKernel(Rows<D> x, LossKnobs k, const double* row_weights, const void* dloss,
                               DataType dloss_type, D* dlogp) {
  double seed = ScalarAsDouble(dloss, dloss_type);
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
       i < x.batch * x.time; i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    int64_t b = i / x.time, t = i % x.time;
    double m = x.Mask(i);
    double d = m == 0 ? 0.0 : seed * row_weights[b] * m * x.At(b, t, k).dloss_dlogp;
    dlogp[i] = Store<D>(static_cast<A>(d));
  }
}

Status CheckGrpoInputs(const KernelContext& ctx) {
  const Tensor& logp = ctx.input(0);
  if (!IsReadableFloat(logp.dtype()) || logp.shape().size() != 2)
    return InvalidArgument("logp must be [batch, time] floats, got " + logp.DebugString());
  for (int i = 1; i < 5; ++i) {
    Shape want = i == 3 ? Shape{logp.dim(0)} : logp.shape();
    if (ctx.input(i).dtype() != logp.dtype() || ctx.input(i).shape() != want) {
      return InvalidArgument("input " + std::to_string(i) + " " + ctx.input(i).DebugString() +
                             " does not match logp " + logp.DebugString());
    }
  }
  return Status();
}

template <typename T>
Rows<DeviceT<T>> ReadRows(const KernelContext& ctx) {
  return {Data<T>(ctx.input(0)), Data<T>(ctx.input(1)), Data<T>(ctx.input(2)),
          Data<T>(ctx.input(3)), Data<T>(ctx.input(4)), ctx.input(0).dim(0),
          ctx.input(0).dim(1)};
}

Status GrpoLossCuda(KernelContext& ctx) {
  WEIR_RETURN_IF_ERROR(CheckGrpoInputs(ctx));
  LossKnobs k = KnobsFrom(ctx.attrs());
  int64_t batch = ctx.input(0).dim(0), time = ctx.input(0).dim(1);
  WEIR_ASSIGN_OR_RETURN(Tensor sums, Scratch(ctx, DT_F64, {batch, 4}));
  return DispatchReadable(ctx.input(0).dtype(), [&](auto tag) {
    using T = decltype(tag);
    if (batch > 0) {
      GrpoRowSums<DeviceT<T>>
          <<<RowBlocks(batch), 256, 0, Stream(ctx)>>>(ReadRows<T>(ctx), k, sums.data<double>());
      WEIR_RETURN_IF_ERROR(CheckLaunch("rl.GRPOLoss rows"));
    }
    GrpoAggregate<<<1, 1024, 0, Stream(ctx)>>>(
        sums.data<double>(), 4, batch, time, k, ctx.output(0).raw_data(), ctx.output(1).raw_data(),
        ctx.output(2).raw_data(), ctx.output(0).dtype(), nullptr);
    return CheckLaunch("rl.GRPOLoss");
  });
}

Status GrpoLossGradCuda(KernelContext& ctx) {
  WEIR_RETURN_IF_ERROR(CheckGrpoInputs(ctx));
  const Tensor& dloss = ctx.input(5);
  if (dloss.numel() != 1 || (dloss.dtype() != DT_F32 && dloss.dtype() != DT_F64))
    return InvalidArgument("dloss must be an f32 or f64 scalar, got " + dloss.DebugString());
  LossKnobs k = KnobsFrom(ctx.attrs());
  int64_t batch = ctx.input(0).dim(0), time = ctx.input(0).dim(1);
  if (batch * time == 0) return Status();
  WEIR_ASSIGN_OR_RETURN(Tensor masks, Scratch(ctx, DT_F64, {batch}));
  WEIR_ASSIGN_OR_RETURN(Tensor weights, Scratch(ctx, DT_F64, {batch}));
  return DispatchReadable(ctx.input(0).dtype(), [&](auto tag) {
    using T = decltype(tag);
    using A = AccumulatorOf<T>;
    Rows<DeviceT<T>> x = ReadRows<T>(ctx);
    GrpoRowMasks<<<RowBlocks(batch), 256, 0, Stream(ctx)>>>(x.mask, batch, time,
                                                            masks.data<double>());
    WEIR_RETURN_IF_ERROR(CheckLaunch("rl.GRPOLossGrad masks"));
    GrpoAggregate<<<1, 1024, 0, Stream(ctx)>>>(masks.data<double>(), 1, batch, time, k, nullptr,
                                               nullptr, nullptr, DT_F64, weights.data<double>());
    WEIR_RETURN_IF_ERROR(CheckLaunch("rl.GRPOLossGrad weights"));
    GrpoGradKernel<DeviceT<T>, A><<<Blocks(batch * time), 256, 0, Stream(ctx)>>>(
        x, k, weights.data<double>(), dloss.raw_data(), dloss.dtype(), Data<T>(ctx.output(0)));
    return CheckLaunch("rl.GRPOLossGrad");
  });
}

// ---- rl.ZerosLike ---------------------------------------------------------------------------

Status ZerosLikeCuda(KernelContext& ctx) {
  Tensor& out = ctx.output(0);
  if (out.nbytes() == 0) return Status();
  return Check(cudaMemsetAsync(out.raw_data(), 0, out.nbytes(), Stream(ctx)), "rl.ZerosLike");
}

}  // namespace

void RegisterRlCuda(Registrar& r) {
  // The dtype lists are the CPU kernels': none (any) where the CPU's has none.
  r.Kernel("rl.ZerosLike", "cuda", ZerosLikeCuda);
  r.Kernel("rl.TokenLogProbs", "cuda", TokenLogProbsCuda);
  r.Kernel("rl.TokenLogProbsGrad", "cuda", TokenLogProbsGradCuda,
           {DT_F32, DT_BF16, DT_F16, DT_F64});
  r.Kernel("rl.GRPOLoss", "cuda", GrpoLossCuda);
  r.Kernel("rl.GRPOLossGrad", "cuda", GrpoLossGradCuda, {DT_F32, DT_BF16, DT_F16, DT_F64});
}

}  // namespace weir::rl
