// moe.BiasUpdate: DeepSeek-V3's auxiliary-loss-free balancing ([V3] Eq. 16, spec §3.3): after an
// optimizer step, each expert's selection bias moves by γ toward balance,
// b_i += γ · sign(mean_load − load_i), from the load of the whole (global) batch. No gradient.
#include <cmath>

#include "moe_ops.h"

namespace weir::moe {
namespace {

Status BiasUpdateCpu(KernelContext& ctx) {
  Tensor bias = ctx.input(0).Contiguous(), indices = ctx.input(1).Contiguous();
  int64_t experts = bias.numel();
  double gamma = ctx.attrs().Float("gamma");
  std::vector<double> load(static_cast<size_t>(experts), 0.0);
  const int64_t* idx = indices.data<int64_t>();
  for (int64_t i = 0; i < indices.numel(); ++i) {
    if (idx[i] < 0 || idx[i] >= experts) {
      return InvalidArgument("expert index " + std::to_string(idx[i]) + " is outside [0, " +
                             std::to_string(experts) + ")");
    }
    load[static_cast<size_t>(idx[i])] += 1;
  }
  double mean = static_cast<double>(indices.numel()) / static_cast<double>(experts);
  const float* b = bias.data<float>();
  float* out = ctx.output(0).data<float>();
  float* l = ctx.output(1).data<float>();
  for (int64_t e = 0; e < experts; ++e) {
    double diff = mean - load[static_cast<size_t>(e)];
    double sign = diff > 0 ? 1.0 : diff < 0 ? -1.0 : 0.0;
    out[e] = static_cast<float>(b[e] + gamma * sign);
    l[e] = static_cast<float>(load[static_cast<size_t>(e)]);
  }
  return Status();
}

}  // namespace

void RegisterBiasUpdate(Registrar& r) {
  r.TensorOp("moe.BiasUpdate")
      .Doc(
          "Auxiliary-loss-free load balancing (DeepSeek-V3): the new selection bias "
          "b + gamma * sign(mean load - load) per expert, from the experts chosen in a batch "
          "(pass the global batch's indices), and the load itself. Not differentiable: run it "
          "after the optimizer step.")
      .Input("bias", "f32", "[experts] the current e_score_correction_bias")
      .Input("indices", "i64", "[..., K] the experts moe.Router chose")
      .Output("new_bias", "f32", "[experts]")
      .Output("load", "f32", "[experts] tokens routed to each expert")
      .Attr<double>("gamma", 0.001, "the bias update speed (V3: 0.001, then 0)", Min(0.0))
      .Shape([](ShapeContext& c) {
        if (c.input(0).shape.size() != 1)
          return InvalidArgument("bias must be [experts], got " + c.input(0).ToString());
        c.set_output(0, c.input(0));
        c.set_output(1, c.input(0));
        return Status();
      })
      .Kernel("cpu", BiasUpdateCpu);
}

}  // namespace weir::moe
