// Helpers shared by the nn plugin's ops.
#pragma once

#include <tbb/parallel_for.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>
#include <limits>
#include <map>
#include <string>
#include <vector>

#include "weir/dispatch.h"
#include "weir/parallel.h"
#include "weir/registrar.h"
#include "weir/tensor_op.h"
#include "weir/vec_math.h"

namespace weir::nn {

void RegisterMatMul(Registrar& r);
void RegisterLinear(Registrar& r);
void RegisterLoraLinear(Registrar& r);
void RegisterEmbedding(Registrar& r);
void RegisterElementwise(Registrar& r);
void RegisterRmsNorm(Registrar& r);
void RegisterRope(Registrar& r);
void RegisterAttention(Registrar& r);
void RegisterPagedAttention(Registrar& r);
void RegisterCrossEntropy(Registrar& r);
void RegisterShapeOps(Registrar& r);
void RegisterDropout(Registrar& r);
void RegisterSum(Registrar& r);

inline AttrValue Bool(bool v) {
  AttrValue a;
  a.set_b(v);
  return a;
}
inline AttrValue Int(int64_t v) {
  AttrValue a;
  a.set_i(v);
  return a;
}
inline AttrValue Float(double v) {
  AttrValue a;
  a.set_f(v);
  return a;
}
inline AttrValue Ints(const std::vector<int64_t>& v) { return ToAttrValue(v); }

// The weight W [out_features, in_features] of nn.Linear and its adapted form nn.LoRALinear,
// N(0, init_std²): one definition, so a base checkpoint loads into either.
inline OpBuilder& LinearWeightParam(OpBuilder& op) {
  return op.Param(
      "weight",
      [](const ShapeContext& c) -> StatusOr<weir::Shape> {
        if (c.input(0).shape.empty()) return InvalidArgument("x has no dims");
        return weir::Shape{c.attrs().Int("out_features"), c.input(0).shape.back()};
      },
      [](const Attrs& a, const weir::Shape&) { return Init::Normal(a.Float("init_std")); });
}

// Rows of a [..., d] tensor.
inline int64_t Rows(const Shape& s) { return s.empty() ? 1 : NumElements(s) / s.back(); }

// Row reductions in eight partial results, so the loops vectorize: one running max or sum is a
// serial dependency the compiler may not reorder.

// max over row[0, n) in the accumulator type (−∞ when n is 0).
template <typename T>
AccumulatorOf<T> RowMax(const T* row, int64_t n) {
  using A = AccumulatorOf<T>;
  A part[8];
  std::fill(part, part + 8, -std::numeric_limits<A>::infinity());
  int64_t j = 0;
  for (; j + 8 <= n; j += 8)
    for (int l = 0; l < 8; ++l) part[l] = std::max(part[l], Widen(row[j + l]));
  for (; j < n; ++j) part[0] = std::max(part[0], Widen(row[j]));
  return *std::max_element(part, part + 8);
}

template <bool kStore, typename T, typename O>
AccumulatorOf<T> ExpSumLoop(const T* row, int64_t n, AccumulatorOf<T> scale, AccumulatorOf<T> shift,
                            O* out) {
  using A = AccumulatorOf<T>;
  A part[8] = {};
  int64_t j = 0;
  for (; j + 8 <= n; j += 8) {
    for (int l = 0; l < 8; ++l) {
      A e = Exp(Widen(row[j + l]) * scale - shift);
      if constexpr (kStore) out[j + l] = Narrow<O>(e);
      part[l] += e;
    }
  }
  for (; j < n; ++j) {
    A e = Exp(Widen(row[j]) * scale - shift);
    if constexpr (kStore) out[j] = Narrow<O>(e);
    part[0] += e;
  }
  return ((part[0] + part[1]) + (part[2] + part[3])) + ((part[4] + part[5]) + (part[6] + part[7]));
}

// Σ exp(row[j]·scale − shift) over [0, n); also stores each term in out (narrowed to O) unless
// out is null.
template <typename T, typename O>
AccumulatorOf<T> ExpSum(const T* row, int64_t n, AccumulatorOf<T> scale, AccumulatorOf<T> shift,
                        O* out) {
  return out != nullptr ? ExpSumLoop<true>(row, n, scale, shift, out)
                        : ExpSumLoop<false>(row, n, scale, shift, out);
}

// One row of a flash-attention block's online softmax: folds the scores row[0, n) (unscaled,
// scale > 0) into the row's running max m and sum l, stores exp(row·scale − m) to p[0, n), and
// returns the factor the row's earlier output must be multiplied by.
template <typename T, typename A>
A OnlineSoftmaxStep(const A* row, int64_t n, A scale, A& m, A& l, T* p) {
  A mn = std::max(m, RowMax(row, n) * scale);
  A sum = ExpSum(row, n, scale, mn, p);
  A corr = Exp(m - mn);
  l = l * corr + sum;
  m = mn;
  return corr;
}

// The gradient of an op whose output is its input (a shared weight, a marker).
inline Status IdentityGradient(GradContext& g) {
  if (g.needs_grad(0)) g.set_input_grad(0, g.grad(0));
  return Status();
}

// Shape function helper: the output has the type of input `i`.
inline ShapeFn SameAsInput(int i = 0, int outputs = 1) {
  return [i, outputs](ShapeContext& ctx) {
    for (int o = 0; o < outputs; ++o) ctx.set_output(o, ctx.input(i));
    return Status();
  };
}

inline Status ExpectSameType(const ShapeContext& ctx, int a, int b) {
  if (ctx.input(a) == ctx.input(b)) return Status();
  return InvalidArgument("inputs " + std::to_string(a) + " and " + std::to_string(b) +
                         " must have the same type, got " + ctx.input(a).ToString() + " and " +
                         ctx.input(b).ToString());
}

// The op's T attr must match the input a parameter meets: "input is bf16[..], T is f32".
inline Status ExpectDtype(const ShapeContext& ctx, int input, DataType t) {
  if (ctx.input(input).dtype == t) return Status();
  return InvalidArgument("input " + std::to_string(input) + " is " + ctx.input(input).ToString() +
                         ", the op computes in " + DataTypeName(t) + " (attr T)");
}

}  // namespace weir::nn
