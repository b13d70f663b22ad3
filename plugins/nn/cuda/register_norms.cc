// Registers the CUDA kernels of the normalization, rotary, embedding, loss, dropout and segment
// ops (norms.cu, rope.cu, embedding.cu, dropout.cu). Each takes the dtypes its CPU kernel takes
// (an empty list: any, as for the CPU's nn.Embedding and nn.CrossEntropy).
#include "cuda/register.h"
#include "weir/dispatch.h"
#include "weir/tensor_op.h"

namespace weir::nn {

// norms.cu
Status RmsNormCuda(KernelContext& ctx);
Status RmsNormGradXCuda(KernelContext& ctx);
Status RmsNormGradWCuda(KernelContext& ctx);
Status CrossEntropyCuda(KernelContext& ctx);
Status CrossEntropyGradCuda(KernelContext& ctx);
Status ArgmaxMatchCuda(KernelContext& ctx);
Status SegmentIdsCuda(KernelContext& ctx);
// rope.cu
Status RopeCuda(KernelContext& ctx);
// embedding.cu
Status EmbeddingCuda(KernelContext& ctx);
Status EmbeddingGradCuda(KernelContext& ctx);
// dropout.cu
Status DropoutCuda(KernelContext& ctx);
Status DropoutGradCuda(KernelContext& ctx);

void RegisterNormCuda(Registrar& r) {
  r.Kernel("nn.RMSNorm", "cuda", RmsNormCuda, KernelFloatTypes());
  r.Kernel("nn.RMSNormGradX", "cuda", RmsNormGradXCuda, KernelFloatTypes());
  r.Kernel("nn.RMSNormGradW", "cuda", RmsNormGradWCuda, KernelFloatTypes());
  r.Kernel("nn.RoPE", "cuda", RopeCuda, KernelFloatTypes());
  r.Kernel("nn.Embedding", "cuda", EmbeddingCuda);  // copies rows of any dtype
  r.Kernel("nn.EmbeddingGrad", "cuda", EmbeddingGradCuda, KernelFloatTypes());
  // Looked up by the loss's dtype (f32, f64); the logits' dtype is checked by the kernel.
  r.Kernel("nn.CrossEntropy", "cuda", CrossEntropyCuda);
  r.Kernel("nn.CrossEntropyGrad", "cuda", CrossEntropyGradCuda, KernelFloatTypes());
  r.Kernel("nn.ArgmaxMatch", "cuda", ArgmaxMatchCuda, KernelFloatTypes());
  r.Kernel("nn.Dropout", "cuda", DropoutCuda, KernelFloatTypes());
  r.Kernel("nn.DropoutGrad", "cuda", DropoutGradCuda, KernelFloatTypes());
  r.Kernel("nn.SegmentIds", "cuda", SegmentIdsCuda, {DT_I64});
}

}  // namespace weir::nn
