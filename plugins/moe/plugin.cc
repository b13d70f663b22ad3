#include "weir/plugin.h"

#include "moe_ops.h"
#ifdef WEIR_HAVE_CUDA
#include "cuda/register.h"
#endif

namespace {

void RegisterMoe(weir::Registrar& r) {
  weir::moe::RegisterRouter(r);
  weir::moe::RegisterBalanceLoss(r);
  weir::moe::RegisterBiasUpdate(r);
  weir::moe::RegisterExperts(r);
#ifdef WEIR_HAVE_CUDA
  weir::moe::RegisterMoeCuda(r);
#endif
}

}  // namespace

WEIR_PLUGIN("moe", "0.1.0", RegisterMoe)
