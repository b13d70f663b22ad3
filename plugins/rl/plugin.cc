// The rl plugin: GRPO's tensor ops (rl.TokenLogProbs, rl.GRPOLoss) and its stream ops.
#include "weir/plugin.h"

#include "weir/registrar.h"
#ifdef WEIR_HAVE_CUDA
#include "cuda/register.h"
#endif

namespace weir::rl {

void RegisterLosses(Registrar& r);
void RegisterGenerate(Registrar& r);
void RegisterGroupBatch(Registrar& r);
void RegisterChatTokens(Registrar& r);
void RegisterSummary(Registrar& r);

void RegisterRl(Registrar& r) {
  RegisterLosses(r);
  RegisterGenerate(r);
  RegisterGroupBatch(r);
  RegisterChatTokens(r);
  RegisterSummary(r);
#ifdef WEIR_HAVE_CUDA
  RegisterRlCuda(r);
#endif
}

}  // namespace weir::rl

WEIR_PLUGIN("rl", "0.1.0", weir::rl::RegisterRl)
