#include "weir/plugin.h"

#include "nn_common.h"
#include "segments/segment_ids.h"
#ifdef WEIR_HAVE_CUDA
#include "cuda/register.h"
#endif

namespace {

void RegisterNn(weir::Registrar& r) {
  using namespace weir::nn;
  RegisterMatMul(r);
  RegisterLinear(r);
  RegisterLoraLinear(r);
  RegisterEmbedding(r);
  RegisterElementwise(r);
  RegisterRmsNorm(r);
  RegisterRope(r);
  RegisterAttention(r);
  RegisterPagedAttention(r);
  RegisterSegmentIds(r);
  RegisterCrossEntropy(r);
  RegisterShapeOps(r);
  RegisterDropout(r);
  RegisterSum(r);
#ifdef WEIR_HAVE_CUDA
  RegisterNnCuda(r);
#endif
}

}  // namespace

WEIR_PLUGIN("nn", "0.1.0", RegisterNn)
