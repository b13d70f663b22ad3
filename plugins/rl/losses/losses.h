// Helpers shared by the rl plugin's tensor ops (rl.TokenLogProbs, rl.GRPOLoss).
#pragma once

#include <string>

#include "weir/dispatch.h"
#include "weir/registrar.h"
#include "weir/tensor_op.h"

namespace weir::rl {

void RegisterTokenLogProbs(Registrar& r);
void RegisterGrpoLoss(Registrar& r);

// Losses and log-probabilities come out in f32 for f32/bf16/f16 inputs and in f64 for f64, as
// nn.CrossEntropy does: a narrow model still logs and differentiates its loss in f32.
inline DataType LossType(DataType t) { return t == DT_F64 ? DT_F64 : DT_F32; }

// The dtypes whose values these ops read: DispatchFloat's, plus f16 (a model stored in half
// precision still scores its tokens).
inline bool IsReadableFloat(DataType t) {
  return t == DT_F32 || t == DT_BF16 || t == DT_F16 || t == DT_F64;
}

// DispatchFloat with f16 added; f16 widens to float like bf16.
template <typename F>
Status DispatchReadable(DataType dtype, F&& f) {
  if (dtype == DT_F16) return f(f16{});
  return DispatchFloat(dtype, std::forward<F>(f));
}

inline Status ExpectReadableFloat(const TensorType& t, const std::string& what) {
  if (IsReadableFloat(t.dtype)) return Status();
  return InvalidArgument(what + " must be f32, bf16, f16 or f64, got " + t.ToString());
}

// The gradient of an input these ops treat as a constant (TRL detaches old and reference
// log-probabilities, advantages and masks; entropy is a metric): zeros of its type, so a graph
// where such an input happens to depend on a trained value still builds.
StatusOr<ValueRef> DetachedGradient(GradContext& g, int input);

}  // namespace weir::rl
