#include "cuda/register.h"

namespace weir::nn {

void RegisterNnCuda(Registrar& r) {
  RegisterPointwiseCuda(r);
  RegisterNormCuda(r);
  RegisterGemmCuda(r);
  RegisterAttentionCuda(r);
}

}  // namespace weir::nn
