// The reward plugin's CUDA kernels, registered after the ops' declarations (Registrar::Kernel).
#pragma once

#include "weir/registrar.h"

namespace weir::reward {

void RegisterRewardCuda(Registrar& r);  // BradleyTerryLoss, BradleyTerryLossGrad

}  // namespace weir::reward
