// Registers the CUDA kernels of the nn plugin's matrix products (gemm_ops.cu, cuBLASLt through
// cuda::Gemm), with the dtypes of their CPU kernels.
#include "cuda/register.h"
#include "weir/dispatch.h"
#include "weir/tensor_op.h"

namespace weir::nn {

namespace gemm_cuda {
// Defined in gemm_ops.cu.
Status MatMulCuda(KernelContext& ctx);
Status LinearCuda(KernelContext& ctx);
Status HeadMatMulCuda(KernelContext& ctx);
Status HeadMatMulGradWCuda(KernelContext& ctx);
Status LoraLinearCuda(KernelContext& ctx);
}  // namespace gemm_cuda

void RegisterGemmCuda(Registrar& r) {
  r.Kernel("nn.MatMul", "cuda", gemm_cuda::MatMulCuda, KernelFloatTypes());
  r.Kernel("nn.Linear", "cuda", gemm_cuda::LinearCuda, KernelFloatTypes());
  r.Kernel("nn.HeadMatMul", "cuda", gemm_cuda::HeadMatMulCuda, KernelFloatTypes());
  r.Kernel("nn.HeadMatMulGradW", "cuda", gemm_cuda::HeadMatMulGradWCuda, KernelFloatTypes());
  r.Kernel("nn.LoRALinear", "cuda", gemm_cuda::LoraLinearCuda, KernelFloatTypes());
}

}  // namespace weir::nn
