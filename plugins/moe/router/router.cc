// moe.Router: DeepSeekMoE gating, as DeepSeek-V3's Gate.forward computes it
// (../shared/spec/deepseek.md §3.2): scores by softmax or sigmoid; a per-expert correction bias
// used for selection only; group-limited routing (group score = the group's max without a bias,
// the sum of its top-2 biased scores with one; keep topk_group groups); top-K experts; weights
// from the unbiased scores, renormalized when norm_topk_prob, times routed_scaling_factor.
#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <vector>

#include "moe_ops.h"
#include "weir/dispatch.h"

namespace weir::moe {
namespace {

struct Config {
  bool sigmoid;
  int64_t experts, groups, topk_group, k;
  bool normalize;
  double scale;
};

StatusOr<Config> GetConfig(const Attrs& a, int64_t experts) {
  Config c{a.String("scoring_func") == "sigmoid",
           experts,
           a.Int("n_group"),
           a.Int("topk_group"),
           a.Int("num_experts_per_tok"),
           a.Bool("norm_topk_prob"),
           a.Float("routed_scaling_factor")};
  if (c.experts % c.groups != 0) {
    return InvalidArgument(std::to_string(c.experts) + " experts do not split into n_group=" +
                           std::to_string(c.groups) + " groups");
  }
  if (c.topk_group > c.groups) {
    return InvalidArgument("topk_group=" + std::to_string(c.topk_group) +
                           " exceeds n_group=" + std::to_string(c.groups));
  }
  int64_t reachable = c.experts / c.groups * c.topk_group;
  if (c.k > reachable) {
    return InvalidArgument("num_experts_per_tok=" + std::to_string(c.k) + " exceeds the " +
                           std::to_string(reachable) + " experts of the kept groups");
  }
  return c;
}

// The scores of one row: softmax or sigmoid of its logits, in the accumulator type A.
template <typename T, typename A = AccumulatorOf<T>>
void Scores(const Config& c, const T* logits, A* s) {
  if (c.sigmoid) {
    for (int64_t e = 0; e < c.experts; ++e) s[e] = A(1) / (A(1) + std::exp(-Widen(logits[e])));
    return;
  }
  A m = -std::numeric_limits<A>::infinity(), sum = 0;
  for (int64_t e = 0; e < c.experts; ++e) m = std::max(m, Widen(logits[e]));
  for (int64_t e = 0; e < c.experts; ++e) sum += s[e] = std::exp(Widen(logits[e]) - m);
  for (int64_t e = 0; e < c.experts; ++e) s[e] /= sum;
}

// The selected experts of one row, best first (ties: the lower index).
template <typename A>
std::vector<int64_t> Select(const Config& c, const A* s, const float* bias) {
  std::vector<A> sel(s, s + c.experts);
  if (bias != nullptr)
    for (int64_t e = 0; e < c.experts; ++e) sel[static_cast<size_t>(e)] += static_cast<A>(bias[e]);
  if (c.groups > 1) {
    int64_t size = c.experts / c.groups;
    std::vector<A> group_score(static_cast<size_t>(c.groups));
    for (int64_t g = 0; g < c.groups; ++g) {
      std::vector<A> members(sel.begin() + g * size, sel.begin() + (g + 1) * size);
      std::sort(members.begin(), members.end(), std::greater<A>());
      group_score[static_cast<size_t>(g)] =
          bias != nullptr ? members[0] + (size > 1 ? members[1] : A(0)) : members[0];
    }
    std::vector<int64_t> order(static_cast<size_t>(c.groups));
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) {
      return group_score[static_cast<size_t>(a)] > group_score[static_cast<size_t>(b)];
    });
    for (size_t r = static_cast<size_t>(c.topk_group); r < order.size(); ++r)
      for (int64_t e = order[r] * size; e < (order[r] + 1) * size; ++e)
        sel[static_cast<size_t>(e)] = -std::numeric_limits<A>::infinity();
  }
  std::vector<int64_t> idx(static_cast<size_t>(c.experts));
  std::iota(idx.begin(), idx.end(), 0);
  std::stable_sort(idx.begin(), idx.end(), [&](int64_t a, int64_t b) {
    return sel[static_cast<size_t>(a)] > sel[static_cast<size_t>(b)];
  });
  idx.resize(static_cast<size_t>(c.k));
  return idx;
}

Status RouterShape(ShapeContext& ctx) {
  const TensorType& logits = ctx.input(0);
  if (logits.shape.empty()) return InvalidArgument("logits need an expert dim");
  int64_t experts = logits.shape.back();
  WEIR_RETURN_IF_ERROR(GetConfig(ctx.attrs(), experts).status());
  if (ctx.num_inputs() > 2) {
    return InvalidArgument(
        "the bias is given twice: as an input and as the state of correction_bias=true");
  }
  if (ctx.num_inputs() > 1) {
    const TensorType& bias = ctx.input(1);
    if (bias.dtype != DT_F32 || bias.shape != Shape{experts}) {
      return InvalidArgument("bias must be f32[" + std::to_string(experts) + "], got " +
                             bias.ToString());
    }
  }
  Shape out = logits.shape;
  out.back() = ctx.attrs().Int("num_experts_per_tok");
  ctx.set_output(0, {logits.dtype, out});
  ctx.set_output(1, {DT_I64, out});
  ctx.set_output(2, {DT_F32, {experts}});
  return Status();
}

Status RouterCpu(KernelContext& ctx) {
  Tensor logits = ctx.input(0).Contiguous();
  Tensor bias;
  bool has_bias = ctx.num_inputs() > 1;
  if (has_bias) bias = ctx.input(1).Contiguous();
  int64_t experts = logits.dim(-1), rows = logits.numel() / experts;
  WEIR_ASSIGN_OR_RETURN(Config c, GetConfig(ctx.attrs(), experts));
  return DispatchFloat(logits.dtype(), [&](auto tag) {
    using T = decltype(tag);
    using A = AccumulatorOf<T>;
    const T* x = logits.data<T>();
    T* w = ctx.output(0).data<T>();
    int64_t* ids = ctx.output(1).data<int64_t>();
    float* load = ctx.output(2).data<float>();
    std::fill(load, load + experts, 0.0f);
    std::vector<A> s(static_cast<size_t>(experts));
    for (int64_t r = 0; r < rows; ++r) {
      Scores(c, x + r * experts, s.data());
      std::vector<int64_t> idx = Select(c, s.data(), has_bias ? bias.data<float>() : nullptr);
      A total = 0;
      for (int64_t e : idx) total += s[static_cast<size_t>(e)];
      for (int64_t k = 0; k < c.k; ++k) {
        A v = s[static_cast<size_t>(idx[static_cast<size_t>(k)])];
        if (c.normalize) v /= total;
        w[r * c.k + k] = Narrow<T>(v * static_cast<A>(c.scale));
        ids[r * c.k + k] = idx[static_cast<size_t>(k)];
        load[idx[static_cast<size_t>(k)]] += 1.0f;
      }
    }
    return Status();
  });
}

// Inputs: logits, indices, dweights. dlogits through the scores of the selected experts (the
// selection itself has no gradient).
Status RouterGradCpu(KernelContext& ctx) {
  Tensor logits = ctx.input(0).Contiguous(), indices = ctx.input(1).Contiguous(),
         dw = ctx.input(2).Contiguous();
  int64_t experts = logits.dim(-1), rows = logits.numel() / experts;
  WEIR_ASSIGN_OR_RETURN(Config c, GetConfig(ctx.attrs(), experts));
  return DispatchFloat(logits.dtype(), [&](auto tag) {
    using T = decltype(tag);
    using A = AccumulatorOf<T>;
    const T* x = logits.data<T>();
    const int64_t* ids = indices.data<int64_t>();
    const T* g = dw.data<T>();
    T* dx = ctx.output(0).data<T>();
    std::vector<A> s(static_cast<size_t>(experts)), ds(static_cast<size_t>(experts));
    A scale = static_cast<A>(c.scale);
    for (int64_t r = 0; r < rows; ++r) {
      Scores(c, x + r * experts, s.data());
      std::fill(ds.begin(), ds.end(), A(0));
      const int64_t* idx = ids + r * c.k;
      A total = 0, dot = 0;  // Σ s_sel and Σ g·s_sel over the selected experts
      for (int64_t k = 0; k < c.k; ++k) {
        A sk = s[static_cast<size_t>(idx[k])];
        total += sk;
        dot += Widen(g[r * c.k + k]) * sk;
      }
      for (int64_t k = 0; k < c.k; ++k) {
        A gk = Widen(g[r * c.k + k]);
        // w_k = scale · s_k / total (normalized) or scale · s_k.
        ds[static_cast<size_t>(idx[k])] +=
            c.normalize ? scale * (gk / total - dot / (total * total)) : scale * gk;
      }
      T* out = dx + r * experts;
      if (c.sigmoid) {
        for (int64_t e = 0; e < experts; ++e) {
          A se = s[static_cast<size_t>(e)];
          out[e] = Narrow<T>(ds[static_cast<size_t>(e)] * se * (A(1) - se));
        }
      } else {
        A sum = 0;
        for (int64_t e = 0; e < experts; ++e)
          sum += s[static_cast<size_t>(e)] * ds[static_cast<size_t>(e)];
        for (int64_t e = 0; e < experts; ++e)
          out[e] = Narrow<T>(s[static_cast<size_t>(e)] * (ds[static_cast<size_t>(e)] - sum));
      }
    }
    return Status();
  });
}

Status RouterGrad(GradContext& g) {
  if (g.needs_grad(0) && g.grad(0).valid()) {
    WEIR_ASSIGN_OR_RETURN(ValueRef d, g.Op1("moe.RouterGrad", {g.input(0), g.output(1), g.grad(0)},
                                            g.attrs().values()));
    g.set_input_grad(0, d);
  }
  if (g.num_inputs() > 1 && g.needs_grad(1)) {
    // The bias steers selection only and takes no gradient (it is balanced by load instead).
    AttrValue zero;
    zero.set_f(0.0);
    WEIR_ASSIGN_OR_RETURN(ValueRef d, g.Op1("nn.Scale", {g.input(1)}, {{"factor", zero}}));
    g.set_input_grad(1, d);
  }
  return Status();
}

OpBuilder& RouterAttrs(OpBuilder& op) {
  return op
      .Attr<std::string>("scoring_func", "sigmoid", "sigmoid (V3) or softmax (V2)",
                         OneOf{"sigmoid", "softmax"})
      .Attr<int64_t>("n_group", 1, "expert groups (nodes or devices)", Min(1))
      .Attr<int64_t>("topk_group", 1, "groups a token may route to", Min(1))
      .RequiredAttr<int64_t>("num_experts_per_tok", "experts per token (K)", Min(1))
      .Attr("norm_topk_prob", true, "renormalize the K weights to sum to 1")
      .Attr<double>("routed_scaling_factor", 1.0, "multiplies the weights (2.5 in V3)");
}

}  // namespace

void RegisterRouter(Registrar& r) {
  OpBuilder& op = r.TensorOp("moe.Router");
  op.Doc(
        "DeepSeekMoE gating (DeepSeek-V3's Gate): scores = sigmoid or softmax of the logits; "
        "experts chosen by scores + bias (bias for selection only) within the topk_group best "
        "groups (group score: max, or with a bias the sum of the top-2 biased scores); weights "
        "from the unbiased scores of the chosen experts, renormalized when norm_topk_prob, "
        "times routed_scaling_factor. Computes in f32 for f32 and bf16 logits.")
      .Input("logits", "T", "[..., experts] router logits (x · W_gᵀ)")
      .OptionalInput("bias", "f32", "[experts] correction bias (e_score_correction_bias)")
      .Output("weights", "T", "[..., K] routing weights")
      .Output("indices", "i64", "[..., K] chosen experts, best first")
      .Output("load", "f32", "[experts] tokens routed to each expert in this batch")
      .Attr("correction_bias", false,
            "own the bias as a state parameter `bias` (f32 [experts], zeros), moved by "
            "moe.BiasUpdate from the load after every optimizer step (DeepSeek-V3's "
            "auxiliary-loss-free balancing; HF topk_method noaux_tc)")
      .Attr<double>("bias_update_speed", 0.001, "gamma of the bias update (V3: 0.001, then 0)",
                    Min(0.0))
      .State(
          "bias",
          [](const ShapeContext& c) -> StatusOr<weir::Shape> {
            if (c.input(0).shape.empty()) return InvalidArgument("logits need an expert dim");
            return weir::Shape{c.input(0).shape.back()};
          },
          Init::Zeros(), "load", "moe.BiasUpdate", "correction_bias")
      .Shape(RouterShape)
      .Kernel("cpu", RouterCpu, KernelFloatTypes())
      .Gradient(RouterGrad);
  RouterAttrs(op);
  OpBuilder& grad = r.TensorOp("moe.RouterGrad");
  grad.Doc("Gradient of moe.Router's weights with respect to its logits.")
      .Input("logits", "T")
      .Input("indices", "i64")
      .Input("dweights", "T")
      .Output("dlogits", "T")
      .Shape([](ShapeContext& c) {
        c.set_output(0, c.input(0));
        return Status();
      })
      .Kernel("cpu", RouterGradCpu, KernelFloatTypes());
  RouterAttrs(grad);
}

}  // namespace weir::moe
