// The moe plugin's CUDA kernels, registered after the ops' declarations (Registrar::Kernel).
#pragma once

#include "weir/registrar.h"

namespace weir::moe {

void RegisterMoeCuda(Registrar& r);

// By family, each in its own files under cuda/.
void RegisterRouterCuda(Registrar& r);           // Router, RouterGrad
void RegisterBalanceCuda(Registrar& r);          // BalanceLoss, BalanceLossGrad, BiasUpdate
void RegisterExpertsCuda(Registrar& r);          // Experts, ExpertsGrad, ExpertsWeightGrad
void RegisterExpertsParallelCuda(Registrar& r);  // ExpertsParallel, ExpertsParallelGrad

}  // namespace weir::moe
