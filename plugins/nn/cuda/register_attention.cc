// Registers the CUDA kernels of nn.Attention (the flash kernels of cuda/attention.cu, or the
// split-key kernel of cuda/attention_decode.cu for large head dims and decoding) and
// nn.AttentionGrad, and nn.PagedLatentAttention's (split-key over the paged cache), for the CPU
// kernels' dtypes.
#include "cuda/register.h"
#include "weir/dispatch.h"
#include "weir/tensor_op.h"

namespace weir::nn {

Status AttentionCuda(KernelContext& ctx);             // cuda/attention_decode.cu
Status AttentionBackwardCuda(KernelContext& ctx);     // cuda/attention.cu
Status PagedLatentAttentionCuda(KernelContext& ctx);  // cuda/attention_decode.cu

void RegisterAttentionCuda(Registrar& r) {
  r.Kernel("nn.Attention", "cuda", AttentionCuda, KernelFloatTypes());
  r.Kernel("nn.AttentionGrad", "cuda", AttentionBackwardCuda, KernelFloatTypes());
  r.Kernel("nn.PagedLatentAttention", "cuda", PagedLatentAttentionCuda, KernelFloatTypes());
}

}  // namespace weir::nn
