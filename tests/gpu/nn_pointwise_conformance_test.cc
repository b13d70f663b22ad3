// The nn plugin's CUDA kernels for elementwise ops, casts, sums and shape ops, against the CPU
// kernels: forward outputs in f32, bf16 and f64 (and other dtypes where the op takes any) over
// edge-case shapes (size 1, sizes that are no multiple of a 16-byte pack or of a block, more than
// one block, the tiled transpose and the flat strided copy, word-widened copies), and gradients
// differentiated on cuda against the CPU, which also runs the Grad ops' cuda kernels.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <utility>
#include <vector>

#include "weir/testing/gpu.h"
#include "weir/testing/op_check.h"

namespace weir::testing {
namespace {

// Copies and casts move or convert each element the same way on both devices: exact (the check's
// absolute floor of 1e-12 aside).
constexpr double kExact = 0;

// The dtypes of every element size a copy handles (1, 2, 4, 8 bytes), integers included.
const std::vector<DataType>& CopyTypes() {
  static const std::vector<DataType> types = {DT_F32, DT_BF16, DT_F64, DT_U8, DT_I32, DT_I64};
  return types;
}

TensorType F32(Shape s) { return {DT_F32, std::move(s)}; }
TensorType F64(Shape s) { return {DT_F64, std::move(s)}; }

std::string Name(DataType t) { return DataTypeName(t); }

// Distinct values that every dtype holds exactly (small integers), so that integer copies are
// not all zeros; random values in [-1, 1] otherwise.
std::vector<double> Distinct(const Shape& s) {
  std::vector<double> v(static_cast<size_t>(NumElements(s)));
  for (size_t i = 0; i < v.size(); ++i) v[i] = static_cast<double>(i % 97);
  return v;
}

OpCase Case(std::string op, std::string attrs, std::vector<TensorType> inputs) {
  OpCase c{std::move(op), std::move(attrs), std::move(inputs)};
  for (size_t i = 0; i < c.inputs.size(); ++i) {
    if (!IsFloating(c.inputs[i].dtype)) c.values[static_cast<int>(i)] = Distinct(c.inputs[i].shape);
  }
  return c;
}

// One element, fewer than a 16-byte pack, a tail after whole packs, one element past a block of
// 256 threads, a size no pack divides, many blocks.
const std::vector<Shape>& ElementwiseShapes() {
  static const std::vector<Shape> shapes = {{1}, {7}, {3, 5}, {257}, {3, 1001}, {257, 1031}};
  return shapes;
}

// ---- elementwise ----

TEST(NnPointwiseCuda, ElementwiseForward) {
  WEIR_REQUIRE_GPU();
  for (const DtypeTolerance& f : GpuTolerances()) {
    for (const Shape& s : ElementwiseShapes()) {
      TensorType t{f.dtype, s};
      ExpectCudaConformance({"nn.Add", "", {t, t}}, f.tolerance);
      ExpectCudaConformance({"nn.Mul", "", {t, t}}, f.tolerance);
      ExpectCudaConformance({"nn.Scale", "factor=-2.5", {t}}, f.tolerance);
      ExpectCudaConformance({"nn.Scale", "factor=0.1", {t}}, f.tolerance);
      ExpectCudaConformance({"nn.SiLU", "", {t}}, f.tolerance);
      ExpectCudaConformance({"nn.SiLUGrad", "", {t, t}}, f.tolerance);
      ExpectCudaConformance({"nn.SwiGLU", "", {t, t}}, f.tolerance);
      OpCase grad{"nn.SwiGLUGrad", "", {t, t, t}};
      ExpectCudaConformance(grad, f.tolerance);  // both outputs
    }
  }
}

// Inputs far from [-1, 1]: sigmoid saturates at both ends.
TEST(NnPointwiseCuda, SiluSaturates) {
  WEIR_REQUIRE_GPU();
  std::vector<double> x = {-80, -30, -10, -3, -0.5, 0, 0.5, 3, 10, 30, 80};
  Shape s = {static_cast<int64_t>(x.size())};
  for (DataType t : {DT_F32, DT_F64}) {
    double tolerance = t == DT_F32 ? 1e-4 : 1e-9;
    ExpectCudaConformance({"nn.SiLU", "", {{t, s}}, {{0, x}}}, tolerance);
    ExpectCudaConformance({"nn.SwiGLU", "", {{t, s}, {t, s}}, {{0, x}}}, tolerance);
  }
}

TEST(NnPointwiseCuda, ElementwiseGradients) {
  WEIR_REQUIRE_GPU();
  for (const Shape& s : {Shape{1}, Shape{3, 5}, Shape{4, 300}}) {
    ExpectCudaGradients({"nn.Add", "", {F64(s), F64(s)}}, 1e-9);
    ExpectCudaGradients({"nn.Mul", "", {F64(s), F64(s)}}, 1e-9);
    ExpectCudaGradients({"nn.Scale", "factor=-2.5", {F64(s)}}, 1e-9);
    ExpectCudaGradients({"nn.SiLU", "", {F64(s)}}, 1e-9);
    ExpectCudaGradients({"nn.SwiGLU", "", {F64(s), F64(s)}}, 1e-9);
  }
  ExpectCudaGradients({"nn.SiLU", "", {F32({5, 77})}}, 1e-4);
  ExpectCudaGradients({"nn.SwiGLU", "", {F32({5, 77}), F32({5, 77})}}, 1e-4);
  ExpectCudaGradients({"nn.Mul", "", {F32({5, 77}), F32({5, 77})}}, 1e-4);
}

// ---- nn.Cast ----

TEST(NnPointwiseCuda, CastBetweenFloats) {
  WEIR_REQUIRE_GPU();
  const std::vector<DataType> floats = {DT_F32, DT_BF16, DT_F64, DT_F16, DT_F8E4M3, DT_F8E5M2};
  for (DataType from : floats) {
    for (DataType to : floats) {
      for (const Shape& s : {Shape{1}, Shape{3, 7}, Shape{300, 301}}) {
        ExpectCudaConformance({"nn.Cast", "dtype=" + Name(to), {{from, s}}}, kExact);
      }
    }
  }
}

// Values past the fp8 and f16 ranges, halfway cases, and integers with fractions and signs.
TEST(NnPointwiseCuda, CastEdgeValues) {
  WEIR_REQUIRE_GPU();
  std::vector<double> x = {0,     -0.0,  0.5,   1.5,        2.5,       -3.7,   127.9,  128,
                           255.5, 300.5, -129,  448,        449,       464,    465,    1000,
                           61439, 61440, 65519, 65520,      1e5,       -1e5,   1e-3,   1e-5,
                           6e-8,  3e-8,  1e-8,  0.0625,     0.09375,   2.0e-3, 1.0e10, -7,
                           1e-40, 3e38,  -3e38, 1.00390625, 1.01171875};
  const std::vector<DataType> all = {DT_F32, DT_BF16, DT_F16, DT_F8E4M3, DT_F8E5M2, DT_I8,
                                     DT_I32, DT_I64,  DT_U8,  DT_BOOL,   DT_F64};
  for (DataType to : all) {
    // f16 and e5m2 overflow to infinity, which the comparison cannot take: keep what stays finite.
    double finite = to == DT_F16 ? 65520 : to == DT_F8E5M2 ? 61440 : 1e300;
    std::vector<double> kept;
    for (double v : x)
      if (std::abs(v) < finite) kept.push_back(v);
    Shape s = {static_cast<int64_t>(kept.size())};
    for (DataType from : {DT_F32, DT_F64}) {
      ExpectCudaConformance({"nn.Cast", "dtype=" + Name(to), {{from, s}}, {{0, kept}}}, kExact);
    }
  }
  // From integers and bools.
  std::vector<double> ints = {0, 1, -1, 5, -128, 127, 255, 1000, -100000, 16777217};
  Shape n = {static_cast<int64_t>(ints.size())};
  for (DataType to : {DT_F32, DT_BF16, DT_F64, DT_I32, DT_U8, DT_BOOL}) {
    ExpectCudaConformance({"nn.Cast", "dtype=" + Name(to), {{DT_I64, n}}, {{0, ints}}}, kExact);
    ExpectCudaConformance({"nn.Cast", "dtype=" + Name(to), {{DT_I32, n}}, {{0, ints}}}, kExact);
    ExpectCudaConformance({"nn.Cast", "dtype=" + Name(to), {{DT_BOOL, {4}}}, {{0, {0, 1, 1, 0}}}},
                          kExact);
  }
}

TEST(NnPointwiseCuda, CastGradients) {
  WEIR_REQUIRE_GPU();
  ExpectCudaGradients({"nn.Cast", "dtype=f64", {F64({3, 5})}}, 1e-9);
  ExpectCudaGradients({"nn.Cast", "dtype=f32", {F64({3, 5})}}, 1e-6);
  ExpectCudaGradients({"nn.Cast", "dtype=bf16", {F32({4, 33})}}, 2e-2);
}

// ---- nn.Sum, nn.SumGrad ----

TEST(NnPointwiseCuda, SumForward) {
  WEIR_REQUIRE_GPU();
  // One block, a block and one, several blocks, more elements than the partial sums' grid covers
  // at one element per thread.
  const std::vector<Shape> shapes = {{1}, {255}, {256}, {257}, {3, 700}, {70000}, {1100, 1000}};
  for (const DtypeTolerance& f : GpuTolerances()) {
    for (const Shape& s : shapes) {
      double tolerance = f.dtype == DT_F32 ? 1e-3 : f.tolerance;  // a long reduction
      ExpectCudaConformance({"nn.Sum", "", {{f.dtype, s}}}, tolerance);
    }
    ExpectCudaConformance({"nn.SumGrad", "shape=[1]", {{f.dtype, {}}}}, kExact);
    ExpectCudaConformance({"nn.SumGrad", "shape=[3, 5, 7]", {{f.dtype, {}}}}, kExact);
    ExpectCudaConformance({"nn.SumGrad", "shape=[300, 1001]", {{f.dtype, {}}}}, kExact);
  }
}

TEST(NnPointwiseCuda, SumGradients) {
  WEIR_REQUIRE_GPU();
  ExpectCudaGradients({"nn.Sum", "", {F64({3, 4})}}, 1e-9);
  ExpectCudaGradients({"nn.Sum", "", {F64({100, 700})}}, 1e-9);
  ExpectCudaGradients({"nn.Sum", "", {F32({1000})}}, 1e-4);
}

// ---- copies: nn.Reshape, nn.Cached, nn.Weight ----

TEST(NnPointwiseCuda, ReshapeCachedWeight) {
  WEIR_REQUIRE_GPU();
  for (DataType t : CopyTypes()) {
    ExpectCudaConformance(Case("nn.Reshape", "shape=[0, -1]", {{t, {2, 3, 2}}}), kExact);
    ExpectCudaConformance(Case("nn.Reshape", "shape=[-1]", {{t, {1}}}), kExact);
    ExpectCudaConformance(Case("nn.Reshape", "shape=[7, -1, 3]", {{t, {21, 50}}}), kExact);
    ExpectCudaConformance(Case("nn.Cached", "", {{t, {2, 3, 2}}}), kExact);
    ExpectCudaConformance(Case("nn.Cached", "", {{t, {1, 1}}}), kExact);
  }
  for (const DtypeTolerance& f : GpuTolerances()) {
    ExpectCudaConformance({"nn.Weight", "shape=[3, 5] T=" + Name(f.dtype), {}}, kExact);
    ExpectCudaConformance({"nn.Weight", "shape=[1] T=" + Name(f.dtype), {}}, kExact);
    ExpectCudaConformance({"nn.Weight", "shape=[300, 77] T=" + Name(f.dtype), {}}, kExact);
  }
}

TEST(NnPointwiseCuda, ReshapeCachedWeightGradients) {
  WEIR_REQUIRE_GPU();
  ExpectCudaGradients({"nn.Reshape", "shape=[0, -1]", {F64({2, 3, 2})}}, 1e-9);
  ExpectCudaGradients({"nn.Cached", "", {F64({2, 3, 2})}}, 1e-9);
  ExpectCudaGradients({"nn.Weight", "shape=[3, 2] T=f64", {}}, 1e-9);
  ExpectCudaGradients({"nn.Weight", "shape=[30, 20] T=f32", {}}, 1e-4);
}

// ---- nn.Transpose ----

TEST(NnPointwiseCuda, TransposeForward) {
  WEIR_REQUIRE_GPU();
  struct Perm {
    Shape shape;
    std::string perm;
  };
  const std::vector<Perm> perms = {
      {{1}, "[0]"},
      {{2, 3, 4}, "[2, 0, 1]"},
      {{1, 1, 5}, "[2, 0, 1]"},
      {{3, 1, 4}, "[1, 2, 0]"},
      // The innermost dim stays: a flat copy, in wider words where the row is even.
      {{4, 5, 6, 8}, "[0, 2, 1, 3]"},
      {{3, 5, 7, 9}, "[2, 0, 1, 3]"},
      // The two innermost dims swap: shared-memory tiles, sizes no tile divides.
      {{33, 70}, "[1, 0]"},
      {{64, 32}, "[1, 0]"},
      {{3, 40, 17}, "[0, 2, 1]"},
      // A batched tile transpose with batch dims on both sides of a tiled dim.
      {{2, 40, 3, 50}, "[0, 3, 2, 1]"},
      // Narrow dims: the flat copy with strided reads.
      {{100, 2}, "[1, 0]"},
      {{5, 6, 7, 3, 2}, "[4, 3, 2, 1, 0]"},
  };
  for (DataType t : CopyTypes()) {
    for (const Perm& p : perms)
      ExpectCudaConformance(Case("nn.Transpose", "perm=" + p.perm, {{t, p.shape}}), kExact);
  }
}

TEST(NnPointwiseCuda, TransposeGradients) {
  WEIR_REQUIRE_GPU();
  ExpectCudaGradients({"nn.Transpose", "perm=[2, 0, 1]", {F64({2, 3, 4})}}, 1e-9);
  ExpectCudaGradients({"nn.Transpose", "perm=[1, 0]", {F64({40, 33})}}, 1e-9);
}

// ---- nn.Concat, nn.Split ----

TEST(NnPointwiseCuda, ConcatForward) {
  WEIR_REQUIRE_GPU();
  for (DataType t : CopyTypes()) {
    ExpectCudaConformance(Case("nn.Concat", "axis=1", {{t, {2, 1, 3}}, {t, {2, 2, 3}}}), kExact);
    ExpectCudaConformance(Case("nn.Concat", "axis=0", {{t, {1, 4}}, {t, {3, 4}}, {t, {2, 4}}}),
                          kExact);
    ExpectCudaConformance(Case("nn.Concat", "axis=-1", {{t, {5, 3}}, {t, {5, 8}}}), kExact);
    // An empty part (a decoding cache before the first token).
    ExpectCudaConformance(Case("nn.Concat", "axis=1", {{t, {2, 0, 3}}, {t, {2, 2, 3}}}), kExact);
    // Long rows (word-widened copies) and many of them.
    ExpectCudaConformance(Case("nn.Concat", "axis=1", {{t, {4, 64, 128}}, {t, {4, 1, 128}}}),
                          kExact);
    ExpectCudaConformance(Case("nn.Concat", "axis=-1", {{t, {300, 127}}, {t, {300, 129}}}), kExact);
  }
}

TEST(NnPointwiseCuda, SplitForward) {
  WEIR_REQUIRE_GPU();
  for (DataType t : CopyTypes()) {
    ExpectCudaConformance(Case("nn.Split", "num=3 axis=1", {{t, {2, 6, 2}}}), kExact);
    ExpectCudaConformance(Case("nn.Split", "num=3 sizes=[2, 0, 3] axis=-1", {{t, {2, 5}}}), kExact);
    ExpectCudaConformance(Case("nn.Split", "num=2 axis=0", {{t, {2, 7}}}), kExact);
    ExpectCudaConformance(Case("nn.Split", "num=1 axis=0", {{t, {1}}}), kExact);
    ExpectCudaConformance(Case("nn.Split", "num=3 sizes=[128, 64, 1] axis=-1", {{t, {300, 193}}}),
                          kExact);
  }
}

TEST(NnPointwiseCuda, ConcatSplitGradients) {
  WEIR_REQUIRE_GPU();
  ExpectCudaGradients({"nn.Concat", "axis=1", {F64({2, 1, 3}), F64({2, 2, 3})}}, 1e-9);
  ExpectCudaGradients({"nn.Concat", "axis=1", {F64({2, 0, 3}), F64({2, 2, 3})}}, 1e-9);
  OpCase all{"nn.Split", "num=3 axis=1", {F64({2, 6, 2})}};
  all.output = -1;  // every part used: the gradient is a Concat
  ExpectCudaGradients(all, 1e-9);
  OpCase one{"nn.Split", "num=3 sizes=[1, 4, 1] axis=1", {F64({2, 6, 2})}};
  one.output = 1;  // one part used: SliceGrad pads it with zeros
  ExpectCudaGradients(one, 1e-9);
  OpCase two{"nn.Split", "num=3 sizes=[100, 50, 43] axis=-1", {F32({30, 193})}};
  two.output = -1;
  ExpectCudaGradients(two, 1e-4);
}

// ---- nn.Slice, nn.SliceGrad ----

TEST(NnPointwiseCuda, SliceForward) {
  WEIR_REQUIRE_GPU();
  for (DataType t : CopyTypes()) {
    ExpectCudaConformance(Case("nn.Slice", "axis=1 begin=1 end=3", {{t, {2, 4, 2}}}), kExact);
    ExpectCudaConformance(Case("nn.Slice", "axis=1 begin=0 end=-1", {{t, {2, 4, 2}}}), kExact);
    ExpectCudaConformance(Case("nn.Slice", "axis=1 begin=1", {{t, {2, 4, 2}}}), kExact);
    ExpectCudaConformance(Case("nn.Slice", "axis=1 begin=-1", {{t, {2, 4, 2}}}), kExact);
    ExpectCudaConformance(Case("nn.Slice", "axis=0 begin=0 end=1", {{t, {1}}}), kExact);
    ExpectCudaConformance(Case("nn.Slice", "axis=-1 begin=5 end=260", {{t, {64, 300}}}), kExact);
    ExpectCudaConformance(Case("nn.Slice", "axis=0 begin=3 end=40", {{t, {64, 3, 33}}}), kExact);
  }
}

TEST(NnPointwiseCuda, SliceGradForward) {
  WEIR_REQUIRE_GPU();
  for (const DtypeTolerance& f : GpuTolerances()) {
    DataType t = f.dtype;
    ExpectCudaConformance({"nn.SliceGrad", "axis=1 begin=2 size=9", {{t, {3, 4, 5}}}}, kExact);
    ExpectCudaConformance({"nn.SliceGrad", "axis=0 begin=0 size=1", {{t, {1}}}}, kExact);
    ExpectCudaConformance({"nn.SliceGrad", "axis=2 begin=7 size=300", {{t, {2, 30, 255}}}}, kExact);
    ExpectCudaConformance({"nn.SliceGrad", "axis=0 begin=0 size=5", {{t, {3, 1000}}}}, kExact);
  }
  ExpectCudaConformance(Case("nn.SliceGrad", "axis=1 begin=1 size=4", {{DT_I64, {2, 2, 3}}}),
                        kExact);
}

TEST(NnPointwiseCuda, SliceGradients) {
  WEIR_REQUIRE_GPU();
  ExpectCudaGradients({"nn.Slice", "axis=1 begin=1 end=3", {F64({2, 4, 2})}}, 1e-9);
  ExpectCudaGradients({"nn.Slice", "axis=1 begin=-1", {F64({2, 4, 2})}}, 1e-9);
  ExpectCudaGradients({"nn.Slice", "axis=-1 begin=5 end=260", {F32({6, 300})}}, 1e-4);
}

// ---- nn.Expand, nn.ExpandGrad ----

TEST(NnPointwiseCuda, ExpandForward) {
  WEIR_REQUIRE_GPU();
  for (DataType t : CopyTypes()) {
    ExpectCudaConformance(Case("nn.Expand", "axis=-2 size=3", {{t, {2, 2, 1, 4}}}), kExact);
    ExpectCudaConformance(Case("nn.Expand", "axis=0 size=5", {{t, {1, 7}}}), kExact);
    ExpectCudaConformance(Case("nn.Expand", "axis=-1 size=9", {{t, {3, 1}}}), kExact);
    ExpectCudaConformance(Case("nn.Expand", "axis=1 size=1", {{t, {3, 1, 2}}}), kExact);
    // MLA's shared RoPE key, one per head.
    ExpectCudaConformance(Case("nn.Expand", "axis=-2 size=128", {{t, {2, 9, 1, 64}}}), kExact);
  }
}

TEST(NnPointwiseCuda, ExpandGradForward) {
  WEIR_REQUIRE_GPU();
  for (const DtypeTolerance& f : GpuTolerances()) {
    DataType t = f.dtype;
    ExpectCudaConformance({"nn.ExpandGrad", "axis=-2", {{t, {2, 2, 3, 4}}}}, f.tolerance);
    ExpectCudaConformance({"nn.ExpandGrad", "axis=0", {{t, {5, 7}}}}, f.tolerance);
    ExpectCudaConformance({"nn.ExpandGrad", "axis=-1", {{t, {3, 9}}}}, f.tolerance);
    ExpectCudaConformance({"nn.ExpandGrad", "axis=1", {{t, {3, 1, 2}}}}, f.tolerance);
    ExpectCudaConformance({"nn.ExpandGrad", "axis=-2", {{t, {2, 9, 128, 64}}}}, f.tolerance);
  }
}

TEST(NnPointwiseCuda, ExpandGradients) {
  WEIR_REQUIRE_GPU();
  ExpectCudaGradients({"nn.Expand", "axis=-2 size=3", {F64({2, 2, 1, 4})}}, 1e-9);
  ExpectCudaGradients({"nn.Expand", "axis=-2 size=16", {F32({2, 5, 1, 64})}}, 1e-4);
}

}  // namespace
}  // namespace weir::testing
