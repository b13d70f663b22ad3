// Calls a kernel template with the C++ type of a floating dtype, and the accumulator type to use
// with it: f32 and bf16 accumulate in float, f64 in double.
//
//   return DispatchFloat(x.dtype(), [&](auto tag) { return MyKernel<decltype(tag)>(ctx); });
#pragma once

#include <type_traits>

#include "weir/half.h"
#include "weir/status.h"
#include "weir/tensor.h"

namespace weir {

template <typename T>
using AccumulatorOf = std::conditional_t<std::is_same_v<T, double>, double, float>;

template <typename T>
inline AccumulatorOf<T> Widen(T v) {
  return static_cast<AccumulatorOf<T>>(v);
}

template <typename T>
inline T Narrow(AccumulatorOf<T> v) {
  return T(v);
}

// The dtypes tensor kernels implement: f32 and bf16 for models, f64 for gradient checks.
inline const std::vector<DataType>& KernelFloatTypes() {
  static const std::vector<DataType> types = {DT_F32, DT_BF16, DT_F64};
  return types;
}

template <typename F>
Status DispatchFloat(DataType dtype, F&& f) {
  switch (dtype) {
    case DT_F32:
      return f(float{});
    case DT_BF16:
      return f(bf16{});
    case DT_F64:
      return f(double{});
    default:
      return InvalidArgument(std::string("no kernel for dtype ") + DataTypeName(dtype) +
                             " (f32, bf16 and f64 are supported)");
  }
}

}  // namespace weir
