// The nn plugin's CUDA kernels, registered after the ops' declarations (Registrar::Kernel).
#pragma once

#include "weir/registrar.h"

namespace weir::nn {

void RegisterNnCuda(Registrar& r);

// By family, each in its own files under cuda/.
void RegisterPointwiseCuda(Registrar& r);  // elementwise, shape ops, sums, casts
void RegisterNormCuda(Registrar& r);  // RMSNorm, RoPE, embedding, cross-entropy, dropout, segments
void RegisterGemmCuda(Registrar& r);  // MatMul, Linear, HeadMatMul, LoRALinear (cuBLASLt)
void RegisterAttentionCuda(Registrar& r);  // flash-style attention forward and backward

}  // namespace weir::nn
