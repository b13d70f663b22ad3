#include "cuda/register.h"

namespace weir::moe {

void RegisterMoeCuda(Registrar& r) {
  RegisterRouterCuda(r);
  RegisterBalanceCuda(r);
  RegisterExpertsCuda(r);
  RegisterExpertsParallelCuda(r);
}

}  // namespace weir::moe
