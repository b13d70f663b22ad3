#include "weir/plugin.h"

#include "moe_ops.h"

namespace {

void RegisterMoe(weir::Registrar& r) {
  weir::moe::RegisterRouter(r);
  weir::moe::RegisterBalanceLoss(r);
  weir::moe::RegisterBiasUpdate(r);
  weir::moe::RegisterExperts(r);
}

}  // namespace

WEIR_PLUGIN("moe", "0.1.0", RegisterMoe)
