// Registers the CUDA kernels of nn.Attention (the flash kernels of cuda/attention.cu, or the
// split-key kernel of cuda/attention_decode.cu for large head dims and decoding) and
// nn.AttentionGrad for the CPU kernels' dtypes.
#include "cuda/register.h"
#include "weir/dispatch.h"
#include "weir/tensor_op.h"

namespace weir::nn {

Status AttentionCuda(KernelContext& ctx);          // cuda/attention_decode.cu
Status AttentionBackwardCuda(KernelContext& ctx);  // cuda/attention.cu

void RegisterAttentionCuda(Registrar& r) {
  r.Kernel("nn.Attention", "cuda", AttentionCuda, KernelFloatTypes());
  r.Kernel("nn.AttentionGrad", "cuda", AttentionBackwardCuda, KernelFloatTypes());
}

}  // namespace weir::nn
