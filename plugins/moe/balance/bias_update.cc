// moe.BiasUpdate: DeepSeek-V3's auxiliary-loss-free balancing ([V3] Eq. 16, spec §3.3): after an
// optimizer step, each expert's selection bias moves by γ toward balance,
// b_i += γ · sign(mean_load − load_i), from the load of the whole (global) batch. No gradient.
#include <algorithm>
#include <cmath>

#include "moe_ops.h"

namespace weir::moe {
namespace {

Status BiasUpdateCpu(KernelContext& ctx) {
  Tensor bias = ctx.input(0).Contiguous(), load = ctx.input(1).Contiguous();
  int64_t experts = bias.numel();
  double gamma = ctx.attrs().Float("bias_update_speed");
  const float* l = load.data<float>();
  double total = 0, most = 0;
  for (int64_t e = 0; e < experts; ++e) {
    if (!(l[e] >= 0)) {
      return InvalidArgument("the load of expert " + std::to_string(e) + " is " +
                             std::to_string(l[e]) + "; loads are token counts");
    }
    total += l[e];
    most = std::max(most, static_cast<double>(l[e]));
  }
  double mean = total / static_cast<double>(experts);
  const float* b = bias.data<float>();
  float* out = ctx.output(0).data<float>();
  for (int64_t e = 0; e < experts; ++e) {
    double diff = mean - l[e];
    double sign = diff > 0 ? 1.0 : diff < 0 ? -1.0 : 0.0;
    out[e] = static_cast<float>(b[e] + gamma * sign);
  }
  ctx.output(1).data<float>()[0] = static_cast<float>(mean > 0 ? most / mean : 0.0);
  return Status();
}

}  // namespace

void RegisterBiasUpdate(Registrar& r) {
  r.TensorOp("moe.BiasUpdate")
      .Doc(
          "Auxiliary-loss-free load balancing (DeepSeek-V3): the new selection bias "
          "b + gamma * sign(mean load - load) per expert, from the load of the global batch, and "
          "the max/mean load ratio. Not differentiable: train.Step runs it after every "
          "optimizer step for a moe.Router with correction_bias=true.")
      .Input("bias", "f32", "[experts] the current e_score_correction_bias")
      .Input("load", "f32",
             "[experts] tokens routed to each expert (moe.Router's load, summed "
             "over the global batch)")
      .Output("new_bias", "f32", "[experts]")
      .Output("load_max_over_mean", "f32", "[] the busiest expert's load over the mean load")
      .Attr<double>("bias_update_speed", 0.001, "gamma (V3: 0.001, then 0)", Min(0.0))
      .Shape([](ShapeContext& c) {
        if (c.input(0).shape.size() != 1 || c.input(1).shape != c.input(0).shape) {
          return InvalidArgument("bias and load must both be [experts], got " +
                                 c.input(0).ToString() + " and " + c.input(1).ToString());
        }
        c.set_output(0, c.input(0));
        c.set_output(1, {DT_F32, {}});
        return Status();
      })
      .Kernel("cpu", BiasUpdateCpu);
}

}  // namespace weir::moe
