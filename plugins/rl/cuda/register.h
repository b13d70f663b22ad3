// The rl plugin's CUDA kernels, registered after the ops' declarations (Registrar::Kernel).
#pragma once

#include "weir/registrar.h"

namespace weir::rl {

// TokenLogProbs(+Grad), GRPOLoss(+Grad), ZerosLike.
void RegisterRlCuda(Registrar& r);

}  // namespace weir::rl
