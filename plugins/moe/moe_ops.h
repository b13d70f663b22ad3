// The moe plugin's ops.
#pragma once

#include "weir/registrar.h"
#include "weir/tensor_op.h"

namespace weir::moe {

void RegisterRouter(Registrar& r);
void RegisterBalanceLoss(Registrar& r);
void RegisterBiasUpdate(Registrar& r);
void RegisterExperts(Registrar& r);

}  // namespace weir::moe
