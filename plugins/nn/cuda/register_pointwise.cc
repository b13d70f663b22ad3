// Registers the CUDA kernels of the nn plugin's elementwise ops, casts, sums and shape ops
// (pointwise.cu, shape_ops.cu). Each takes the dtypes of the op's CPU kernel: the float types for
// arithmetic, any dtype for the ops that only move or convert elements.
#include "cuda/register.h"
#include "weir/dispatch.h"
#include "weir/tensor_op.h"

namespace weir::nn {
namespace pointwise_cuda {

// pointwise.cu
Status AddCuda(KernelContext& ctx);
Status MulCuda(KernelContext& ctx);
Status ScaleCuda(KernelContext& ctx);
Status SiluCuda(KernelContext& ctx);
Status SiluGradCuda(KernelContext& ctx);
Status SwigluCuda(KernelContext& ctx);
Status SwigluGradCuda(KernelContext& ctx);
Status CastCuda(KernelContext& ctx);
Status SumCuda(KernelContext& ctx);
Status SumGradCuda(KernelContext& ctx);

// shape_ops.cu
Status CopyCuda(KernelContext& ctx);
Status TransposeCuda(KernelContext& ctx);
Status ConcatCuda(KernelContext& ctx);
Status SplitCuda(KernelContext& ctx);
Status SliceCuda(KernelContext& ctx);
Status SliceGradCuda(KernelContext& ctx);
Status ExpandCuda(KernelContext& ctx);
Status ExpandGradCuda(KernelContext& ctx);

}  // namespace pointwise_cuda

void RegisterPointwiseCuda(Registrar& r) {
  namespace k = pointwise_cuda;
  const std::vector<DataType>& floats = KernelFloatTypes();
  const std::vector<DataType> any;  // the CPU kernels of these ops take every dtype
  r.Kernel("nn.Add", "cuda", k::AddCuda, floats);
  r.Kernel("nn.Mul", "cuda", k::MulCuda, floats);
  r.Kernel("nn.Scale", "cuda", k::ScaleCuda, floats);
  r.Kernel("nn.SiLU", "cuda", k::SiluCuda, floats);
  r.Kernel("nn.SiLUGrad", "cuda", k::SiluGradCuda, floats);
  r.Kernel("nn.SwiGLU", "cuda", k::SwigluCuda, floats);
  r.Kernel("nn.SwiGLUGrad", "cuda", k::SwigluGradCuda, floats);
  r.Kernel("nn.Cast", "cuda", k::CastCuda, any);
  r.Kernel("nn.Sum", "cuda", k::SumCuda, floats);
  r.Kernel("nn.SumGrad", "cuda", k::SumGradCuda, floats);

  r.Kernel("nn.Reshape", "cuda", k::CopyCuda, any);
  r.Kernel("nn.Cached", "cuda", k::CopyCuda, any);
  r.Kernel("nn.Weight", "cuda", k::CopyCuda, any);
  r.Kernel("nn.Transpose", "cuda", k::TransposeCuda, any);
  r.Kernel("nn.Concat", "cuda", k::ConcatCuda, any);
  r.Kernel("nn.Split", "cuda", k::SplitCuda, any);
  r.Kernel("nn.Slice", "cuda", k::SliceCuda, any);
  r.Kernel("nn.SliceGrad", "cuda", k::SliceGradCuda, any);
  r.Kernel("nn.Expand", "cuda", k::ExpandCuda, any);
  r.Kernel("nn.ExpandGrad", "cuda", k::ExpandGradCuda, floats);
}

}  // namespace weir::nn
