// The optim plugin's CUDA kernels, registered after the ops' declarations (Registrar::Kernel).
#pragma once

#include "weir/registrar.h"

namespace weir::optim {

void RegisterOptimCuda(Registrar& r);  // AdamW, SGD

}  // namespace weir::optim
