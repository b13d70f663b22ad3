// The GEMM ops' CUDA kernels (nn.MatMul, nn.Linear, nn.HeadMatMul, nn.HeadMatMulGradW,
// nn.LoRALinear, all through cuda::Gemm and cuBLASLt) against their CPU kernels, forward and
// gradients, in f32, bf16 and f64 with odd shapes and every transpose; cuda::Gemm's bf16 -> f32
// path directly; and the FP8 tile quantizer and block-scaled GEMM against host references.
//
// f32 products of arbitrary values differ between oneDNN and cuBLAS in their last bits, and an
// output that cancels to nearly zero then differs by far more than a relative 1e-4. So the f32
// cases use dyadic values (multiples of 1/8 in [-1, 1]): every product and partial sum is then
// exact in f32 and both devices must agree exactly, whatever their summation order, which still
// catches any mixed-up layout, transpose or stride. One random-valued f32 case checks the error
// against the output's scale instead, which fails if TF32 sneaks in. Gradient cases reduce over
// random loss weights, so they keep their reductions short and use the f32 tolerance of 1e-3.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "weir/device.h"
#include "weir/testing/gpu.h"
#include "weir/testing/op_check.h"
#ifdef WEIR_HAVE_CUDA
#include "weir/cuda_gemm.h"
#endif

namespace weir::testing {
namespace {

constexpr double kF64Tol = 1e-9, kF32Tol = 1e-4, kF32GradTol = 1e-3, kBf16Tol = 2e-2;

double Tolerance(DataType t) { return t == DT_F64 ? kF64Tol : t == DT_F32 ? kF32Tol : kBf16Tol; }
double GradTolerance(DataType t) {
  return t == DT_F64 ? kF64Tol : t == DT_F32 ? kF32GradTol : kBf16Tol;
}
const char* Name(DataType t) { return DataTypeName(t); }

// Multiples of 1/8 in [-1, 1], deterministic in the seed.
std::vector<double> Dyadic(int64_t count, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<double> v(static_cast<size_t>(count));
  for (double& x : v) x = static_cast<double>(static_cast<int>(rng() % 17) - 8) / 8.0;
  return v;
}

// The case with dyadic values for every input.
OpCase WithDyadicInputs(OpCase c) {
  for (size_t i = 0; i < c.inputs.size(); ++i)
    c.values[static_cast<int>(i)] = Dyadic(NumElements(c.inputs[i].shape), c.seed * 31 + i);
  return c;
}

std::string Flag(const char* name, bool value) {
  return std::string(name) + (value ? "=true" : "=false");
}

const DataType kTypes[] = {DT_F32, DT_BF16, DT_F64};

TEST(GemmConformance, MatMulEveryTransposeAndBatchLayout) {
  WEIR_REQUIRE_GPU();
  struct Shapes {
    int64_t m, k, n;
    Shape batch_a, batch_b;  // b's leading dims: a's, or none (a shared 2-D b)
  };
  const Shapes shapes[] = {
      {5, 37, 9, {}, {}},         // odd sizes, one matrix
      {67, 130, 33, {}, {}},      // more than one tile every way
      {1, 24, 17, {}, {}},        // a row vector (decoding)
      {13, 1, 1, {}, {}},         // k = 1, n = 1
      {6, 11, 7, {3}, {3}},       // a batch
      {4, 5, 3, {2, 3}, {2, 3}},  // two batch dims
      {7, 9, 5, {4}, {}},         // a 2-D b shared by the batch
  };
  for (DataType t : kTypes) {
    for (const Shapes& s : shapes) {
      for (bool ta : {false, true}) {
        for (bool tb : {false, true}) {
          Shape a = s.batch_a, b = s.batch_b;
          a.push_back(ta ? s.k : s.m);
          a.push_back(ta ? s.m : s.k);
          b.push_back(tb ? s.n : s.k);
          b.push_back(tb ? s.k : s.n);
          OpCase c{"nn.MatMul",
                   Flag("transpose_a", ta) + " " + Flag("transpose_b", tb),
                   {{t, a}, {t, b}}};
          c.seed = static_cast<uint64_t>(s.m * 1000 + s.k * 10 + s.n);
          ExpectCudaConformance(t == DT_F32 ? WithDyadicInputs(c) : c, Tolerance(t));
        }
      }
    }
  }
}

TEST(GemmConformance, MatMulFloat32IsFullPrecision) {
  WEIR_REQUIRE_GPU();
  // Random values and a long reduction: TF32 (10-bit mantissas) would be off by about 1e-4 of
  // the outputs' scale, f32 by about 1e-7.
  OpCase c{"nn.MatMul", "", {{DT_F32, {48, 512}}, {DT_F32, {512, 40}}}};
  auto cpu = RunOp(c, {}, nullptr, "cpu");
  auto gpu = RunOp(c, {}, nullptr, "cuda");
  ASSERT_TRUE(cpu.ok()) << cpu.status().ToString();
  ASSERT_TRUE(gpu.ok()) << gpu.status().ToString();
  std::vector<double> want = (*cpu)[0].ToVector(), got = (*gpu)[0].ToVector();
  ASSERT_EQ(got.size(), want.size());
  double scale = 0, worst = 0;
  for (size_t i = 0; i < want.size(); ++i) {
    scale = std::max(scale, std::abs(want[i]));
    worst = std::max(worst, std::abs(got[i] - want[i]));
  }
  EXPECT_LT(worst, 1e-5 * scale) << "worst error " << worst << " at scale " << scale;
}

TEST(GemmConformance, MatMulGradients) {
  WEIR_REQUIRE_GPU();
  for (DataType t : kTypes) {
    for (bool ta : {false, true}) {
      for (bool tb : {false, true}) {
        OpCase c{
            "nn.MatMul",
            Flag("transpose_a", ta) + " " + Flag("transpose_b", tb),
            {{t, ta ? Shape{2, 7, 5} : Shape{2, 5, 7}}, {t, tb ? Shape{2, 3, 7} : Shape{2, 7, 3}}}};
        ExpectCudaGradients(c, GradTolerance(t));
      }
    }
    // A shared 2-D b: its gradient sums over the batch.
    ExpectCudaGradients({"nn.MatMul", "", {{t, {3, 4, 6}}, {t, {6, 5}}}}, GradTolerance(t));
    ExpectCudaGradients({"nn.MatMul", "transpose_b=true", {{t, {2, 3, 6}}, {t, {5, 6}}}},
                        GradTolerance(t));
  }
}

TEST(GemmConformance, HeadMatMulForwardAndGradients) {
  WEIR_REQUIRE_GPU();
  struct Shapes {
    Shape x;  // [..., heads, n]
    int64_t m;
  };
  const Shapes shapes[] = {{{2, 3, 4, 5}, 3}, {{1, 5}, 7}, {{9, 2, 33}, 17}};
  for (DataType t : kTypes) {
    for (const Shapes& s : shapes) {
      for (bool tw : {false, true}) {
        int64_t heads = s.x[s.x.size() - 2], n = s.x.back();
        Shape w = tw ? Shape{heads, s.m, n} : Shape{heads, n, s.m};
        OpCase c{"nn.HeadMatMul", Flag("transpose_w", tw), {{t, s.x}, {t, w}}};
        c.seed = static_cast<uint64_t>(heads * 100 + n);
        ExpectCudaConformance(t == DT_F32 ? WithDyadicInputs(c) : c, Tolerance(t));
        if (NumElements(s.x) <= 200) ExpectCudaGradients(c, GradTolerance(t));
      }
    }
  }
}

TEST(GemmConformance, HeadMatMulGradW) {
  WEIR_REQUIRE_GPU();
  struct Shapes {
    Shape x;  // [..., heads, n]
    int64_t m;
  };
  const Shapes shapes[] = {{{2, 3, 4, 5}, 6}, {{1, 1, 7}, 1}, {{40, 3, 9}, 20}};
  for (DataType t : kTypes) {
    for (const Shapes& s : shapes) {
      for (bool tw : {false, true}) {
        Shape dy = s.x;
        dy.back() = s.m;
        OpCase c{"nn.HeadMatMulGradW", Flag("transpose_w", tw), {{t, s.x}, {t, dy}}};
        c.seed = static_cast<uint64_t>(NumElements(s.x) + s.m);
        ExpectCudaConformance(t == DT_F32 ? WithDyadicInputs(c) : c, Tolerance(t));
      }
    }
  }
}

// Runs `c` on the CPU and on cuda with the given parameters (dyadic, so f32 results are exact)
// and expects the same outputs.
void ExpectExactlyConforms(const OpCase& c, const ParamStore& params) {
  SCOPED_TRACE(DescribeCase(c));
  ParamStore cpu_params = params, cuda_params = params;
  auto cpu = RunOp(c, {}, &cpu_params, "cpu");
  auto gpu = RunOp(c, {}, &cuda_params, "cuda");
  ASSERT_TRUE(cpu.ok()) << cpu.status().ToString();
  ASSERT_TRUE(gpu.ok()) << gpu.status().ToString();
  ASSERT_EQ(gpu->size(), cpu->size());
  for (size_t o = 0; o < cpu->size(); ++o) {
    std::vector<double> want = (*cpu)[o].ToVector(), got = (*gpu)[o].ToVector();
    ASSERT_EQ(got.size(), want.size()) << "output " << o;
    for (size_t i = 0; i < want.size(); ++i)
      ASSERT_EQ(got[i], want[i]) << "output " << o << "[" << i << "]";
  }
}

Tensor DyadicTensor(DataType t, const Shape& shape, uint64_t seed) {
  return Tensor::FromValues(t, shape, Dyadic(NumElements(shape), seed));
}

TEST(GemmConformance, LinearForwardAndGradients) {
  WEIR_REQUIRE_GPU();
  struct Shapes {
    Shape x;
    int64_t out;
  };
  const Shapes shapes[] = {{{3, 5, 9}, 7}, {{1, 1}, 1}, {{70, 130}, 33}, {{2, 1, 4}, 300}};
  for (const Shapes& s : shapes) {
    std::string attrs = "out_features=" + std::to_string(s.out);
    for (DataType t : {DT_BF16, DT_F64})
      ExpectCudaConformance({"nn.Linear", attrs + " T=" + Name(t), {{t, s.x}}}, Tolerance(t));
    // f32 with dyadic inputs and weights: exact on both devices.
    OpCase c{"nn.Linear", attrs + " T=f32", {{DT_F32, s.x}}};
    c = WithDyadicInputs(c);
    ParamStore params;
    params.Set("op.weight", DyadicTensor(DT_F32, {s.out, s.x.back()}, 5));
    ExpectExactlyConforms(c, params);
  }
  for (DataType t : kTypes) {
    ExpectCudaGradients({"nn.Linear", std::string("out_features=4 T=") + Name(t), {{t, {2, 3, 6}}}},
                        GradTolerance(t));
  }
}

TEST(GemmConformance, LoraLinearForwardAndGradients) {
  WEIR_REQUIRE_GPU();
  struct Shapes {
    Shape x;
    int64_t out, rank;
  };
  const Shapes shapes[] = {{{2, 3, 10}, 6, 4}, {{1, 1}, 1, 1}, {{33, 65}, 17, 8}};
  for (const Shapes& s : shapes) {
    // lora_alpha / lora_rank is a power of two, so the f32 scaling stays exact.
    std::string attrs = "out_features=" + std::to_string(s.out) +
                        " lora_rank=" + std::to_string(s.rank) +
                        " lora_alpha=" + std::to_string(4 * s.rank);
    for (DataType t : {DT_BF16, DT_F64}) {
      OpCase c{"nn.LoRALinear", attrs + " T=" + Name(t), {{t, s.x}}};
      ExpectCudaConformance(c, Tolerance(t));
    }
    OpCase c{"nn.LoRALinear", attrs + " T=f32", {{DT_F32, s.x}}};
    c = WithDyadicInputs(c);
    int64_t in = s.x.back();
    ParamStore params;
    params.Set("op.weight", DyadicTensor(DT_F32, {s.out, in}, 11));
    params.Set("op.lora_a", DyadicTensor(DT_F32, {s.rank, in}, 12));
    params.Set("op.lora_b", DyadicTensor(DT_F32, {s.out, s.rank}, 13));
    ExpectExactlyConforms(c, params);
  }
  for (DataType t : kTypes) {
    ExpectCudaGradients({"nn.LoRALinear",
                         std::string("out_features=5 lora_rank=3 lora_alpha=6 T=") + Name(t),
                         {{t, {2, 3, 7}}}},
                        GradTolerance(t));
  }
}

// With dropout the devices draw different masks (each kernel counts its own calls), so the
// cuda kernel is checked against its own mask: h = (x ⊙ mask / (1 - rate)) · Aᵀ and
// y = x · Wᵀ + s · h · Bᵀ, exact with dyadic values and a keep factor of 2.
TEST(GemmConformance, LoraLinearDropoutFollowsItsMask) {
  WEIR_REQUIRE_GPU();
  const int64_t rows = 6, in = 64, out = 5, rank = 4;
  OpCase c{"nn.LoRALinear",
           "out_features=5 lora_rank=4 lora_alpha=8 lora_dropout=0.5 seed=3 T=f32",
           {{DT_F32, {rows, in}}}};
  c = WithDyadicInputs(c);
  ParamStore params;
  Tensor w = DyadicTensor(DT_F32, {out, in}, 21), a = DyadicTensor(DT_F32, {rank, in}, 22),
         b = DyadicTensor(DT_F32, {out, rank}, 23);
  params.Set("op.weight", w);
  params.Set("op.lora_a", a);
  params.Set("op.lora_b", b);
  std::vector<double> x = c.values[0];
  std::vector<double> first_mask;
  for (int call = 0; call < 2; ++call) {
    ParamStore run_params = params;
    auto got = RunOp(c, {}, &run_params, "cuda");
    ASSERT_TRUE(got.ok()) << got.status().ToString();
    ASSERT_EQ(got->size(), 3u);
    std::vector<double> y = (*got)[0].ToVector(), h = (*got)[1].ToVector(),
                        mask = (*got)[2].ToVector();
    ASSERT_EQ(mask.size(), static_cast<size_t>(rows * in));
    int kept = 0;
    for (double v : mask) {
      ASSERT_TRUE(v == 0 || v == 1) << v;
      kept += v == 1;
    }
    EXPECT_GT(kept, rows * in * 3 / 10);
    EXPECT_LT(kept, rows * in * 7 / 10);
    for (int64_t r = 0; r < rows; ++r) {
      for (int64_t j = 0; j < rank; ++j) {
        double want = 0;
        for (int64_t i = 0; i < in; ++i) {
          size_t xi = static_cast<size_t>(r * in + i);
          want += x[xi] * mask[xi] * 2 * a.At(j * in + i);
        }
        EXPECT_EQ(h[static_cast<size_t>(r * rank + j)], want) << "h[" << r << ", " << j << "]";
      }
      for (int64_t o = 0; o < out; ++o) {
        double want = 0;
        for (int64_t i = 0; i < in; ++i)
          want += x[static_cast<size_t>(r * in + i)] * w.At(o * in + i);
        for (int64_t j = 0; j < rank; ++j)
          want += 2 * h[static_cast<size_t>(r * rank + j)] * b.At(o * rank + j);
        EXPECT_EQ(y[static_cast<size_t>(r * out + o)], want) << "y[" << r << ", " << o << "]";
      }
    }
    if (call == 0)
      first_mask = mask;
    else
      EXPECT_NE(mask, first_mask) << "two calls drew the same dropout mask";
  }
}

#ifdef WEIR_HAVE_CUDA

// cuda:0 with a stream, scratch memory and host copies, released at the end of the test.
class Gpu {
 public:
  Gpu() {
    auto runtime = FindDeviceRuntime("cuda:0");
    EXPECT_TRUE(runtime.ok()) << runtime.status().ToString();
    if (!runtime.ok()) return;
    runtime_ = *runtime;
    auto stream = runtime_->AcquireStream();
    EXPECT_TRUE(stream.ok()) << stream.status().ToString();
    if (!stream.ok()) return;
    stream_ = *stream;
    context_ = std::make_unique<StreamContext>(runtime_, stream_);
    kernel_ = std::make_unique<KernelContext>(std::vector<const Tensor*>{}, std::vector<Tensor*>{},
                                              &attrs_, context_.get());
  }
  ~Gpu() {
    if (context_ != nullptr) {
      EXPECT_TRUE(runtime_->Synchronize(stream_).ok());
      runtime_->ReleaseStream(stream_);
    }
  }
  bool ok() const { return kernel_ != nullptr; }
  const KernelContext& ctx() const { return *kernel_; }

  Tensor Upload(const Tensor& host) {
    auto device = context_->Empty(host.dtype(), host.shape());
    EXPECT_TRUE(device.ok()) << device.status().ToString();
    if (!device.ok()) return Tensor();
    EXPECT_TRUE(
        runtime_->CopyToDevice(device->raw_data(), host.raw_data(), host.nbytes(), stream_).ok());
    return *device;
  }
  Tensor Empty(DataType dtype, const Shape& shape) {
    auto device = context_->Empty(dtype, shape);
    EXPECT_TRUE(device.ok()) << device.status().ToString();
    return device.ok() ? *device : Tensor();
  }
  Tensor Download(const Tensor& device) {
    Tensor host = Tensor::Empty(device.dtype(), device.shape());
    EXPECT_TRUE(
        runtime_->CopyToHost(host.raw_data(), device.raw_data(), host.nbytes(), stream_).ok());
    Status waited = runtime_->Synchronize(stream_);
    EXPECT_TRUE(waited.ok()) << waited.ToString();
    return host;
  }

 private:
  DeviceRuntime* runtime_ = nullptr;
  StreamId stream_{};
  Attrs attrs_;
  std::unique_ptr<StreamContext> context_;
  std::unique_ptr<KernelContext> kernel_;
};

TEST(CudaGemm, Bf16InputsWithF32OutputAlphaAndBeta) {
  WEIR_REQUIRE_GPU();
  Gpu gpu;
  ASSERT_TRUE(gpu.ok());
  const int64_t m = 33, n = 17, k = 40;
  Tensor a = DyadicTensor(DT_BF16, {m, k}, 1), b = DyadicTensor(DT_BF16, {n, k}, 2);
  Tensor c0 = DyadicTensor(DT_F32, {m, n}, 3);
  Tensor da = gpu.Upload(a), db = gpu.Upload(b), dc = gpu.Upload(c0);
  cuda::GemmArgs g;
  g.type = DT_BF16;
  g.c_type = DT_F32;
  g.m = m;
  g.n = n;
  g.k = k;
  g.trans_b = true;
  g.a = da.raw_data();
  g.lda = k;
  g.b = db.raw_data();
  g.ldb = k;
  g.c = dc.raw_data();
  g.ldc = n;
  g.alpha = 0.5;
  g.beta = 2;
  Status s = cuda::Gemm(gpu.ctx(), g);
  ASSERT_TRUE(s.ok()) << s.ToString();
  Tensor c = gpu.Download(dc);
  for (int64_t i = 0; i < m; ++i) {
    for (int64_t j = 0; j < n; ++j) {
      double want = 2 * c0.At(i * n + j);
      for (int64_t l = 0; l < k; ++l) want += 0.5 * a.At(i * k + l) * b.At(j * k + l);
      EXPECT_EQ(c.At(i * n + j), want) << i << ", " << j;
    }
  }
}

// e4m3: 1 sign, 4 exponent (bias 7), 3 mantissa bits; 0x7f/0xff are NaN, ±448 the largest.
double E4m3Value(uint8_t code) {
  static const std::vector<double> table = [] {
    std::vector<double> values(256);
    for (int c = 0; c < 256; ++c) {
      int exponent = (c >> 3) & 15, mantissa = c & 7;
      double v = exponent == 0 ? std::ldexp(mantissa / 8.0, -6)
                               : std::ldexp(1 + mantissa / 8.0, exponent - 7);
      if (exponent == 15 && mantissa == 7) v = std::numeric_limits<double>::quiet_NaN();
      values[static_cast<size_t>(c)] = (c & 0x80) != 0 ? -v : v;
    }
    return values;
  }();
  return table[code];
}

// Round to nearest, ties to even (the even code), saturating at ±448.
uint8_t E4m3Encode(float x) {
  uint8_t sign = std::signbit(x) ? 0x80 : 0;
  double a = std::abs(static_cast<double>(x));
  // The finite magnitudes ascend with the code: find the first code at or above a.
  uint8_t above = 0;
  while (above < 0x7e && E4m3Value(above) < a) ++above;
  uint8_t best = above;
  if (above > 0) {
    double down = a - E4m3Value(static_cast<uint8_t>(above - 1)), up = E4m3Value(above) - a;
    if (down < up || (down == up && ((above - 1) & 1) == 0)) best = static_cast<uint8_t>(above - 1);
    if (up < 0) best = above;  // past 448: saturate
  }
  return sign | best;
}

struct Quantized {
  std::vector<uint8_t> q;
  std::vector<float> scales;
};

// Quantizes x [rows, k] in blocks of block_rows × 128 (1 for activations, 128 for weights) the
// way the spec (and QuantizeFp8Tiles) does: s = max(amax, 1e-4) / 448, q = x / s.
Quantized QuantizeOnHost(const std::vector<float>& x, int64_t rows, int64_t k, int64_t block_rows) {
  int64_t row_blocks = (rows + block_rows - 1) / block_rows, tiles = (k + 127) / 128;
  Quantized out{std::vector<uint8_t>(x.size()),
                std::vector<float>(static_cast<size_t>(row_blocks * tiles))};
  for (int64_t rb = 0; rb < row_blocks; ++rb) {
    for (int64_t tile = 0; tile < tiles; ++tile) {
      int64_t r_end = std::min(rows, (rb + 1) * block_rows), c_end = std::min(k, (tile + 1) * 128);
      float amax = 0;
      for (int64_t r = rb * block_rows; r < r_end; ++r)
        for (int64_t c = tile * 128; c < c_end; ++c)
          amax = std::max(amax, std::abs(x[static_cast<size_t>(r * k + c)]));
      float scale = std::max(amax, 1e-4f) / 448.0f;
      out.scales[static_cast<size_t>(rb * tiles + tile)] = scale;
      for (int64_t r = rb * block_rows; r < r_end; ++r)
        for (int64_t c = tile * 128; c < c_end; ++c) {
          size_t i = static_cast<size_t>(r * k + c);
          out.q[i] = E4m3Encode(x[i] / scale);
        }
    }
  }
  return out;
}

// Values spread over several orders of magnitude by row and by 128-column tile, with a tile of
// zeros, so scales differ between tiles and blocks.
std::vector<float> SpreadValues(int64_t rows, int64_t k, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> normal(0, 1);
  std::vector<float> x(static_cast<size_t>(rows * k));
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < k; ++c) {
      float magnitude = std::ldexp(1.0f, static_cast<int>((r * 7 + (c / 128) * 3) % 9) - 4);
      x[static_cast<size_t>(r * k + c)] = (r == 1 && c < 128) ? 0.0f : normal(rng) * magnitude;
    }
  return x;
}

Tensor HostBytes(const std::vector<uint8_t>& bytes, const Shape& shape) {
  Tensor t = Tensor::Empty(DT_U8, shape);
  std::copy(bytes.begin(), bytes.end(), t.data<uint8_t>());
  return t;
}

Tensor HostFloats(const std::vector<float>& values, const Shape& shape) {
  Tensor t = Tensor::Empty(DT_F32, shape);
  std::copy(values.begin(), values.end(), t.data<float>());
  return t;
}

TEST(CudaFp8, QuantizeTilesMatchesTheHost) {
  WEIR_REQUIRE_GPU();
  Gpu gpu;
  ASSERT_TRUE(gpu.ok());
  struct Case {
    DataType dtype;
    int64_t rows, k;
  };
  for (const Case& c : {Case{DT_F32, 5, 300}, Case{DT_BF16, 3, 256}, Case{DT_F32, 1, 128},
                        Case{DT_BF16, 130, 384}}) {
    SCOPED_TRACE(std::string(Name(c.dtype)) + " [" + std::to_string(c.rows) + ", " +
                 std::to_string(c.k) + "]");
    std::vector<float> values = SpreadValues(c.rows, c.k, 7);
    // The quantizer sees bf16 inputs widened: the host reference starts from the same values.
    Tensor x = HostFloats(values, {c.rows, c.k}).To(c.dtype);
    std::vector<double> widened = x.ToVector();
    for (size_t i = 0; i < values.size(); ++i) values[i] = static_cast<float>(widened[i]);
    Quantized want = QuantizeOnHost(values, c.rows, c.k, 1);
    int64_t tiles = (c.k + 127) / 128;
    Tensor dx = gpu.Upload(x);
    Tensor q = gpu.Empty(DT_U8, {c.rows, c.k}), scales = gpu.Empty(DT_F32, {c.rows, tiles});
    Status s = cuda::QuantizeFp8Tiles(gpu.ctx(), dx, q.raw_data(), scales.data<float>());
    ASSERT_TRUE(s.ok()) << s.ToString();
    Tensor got_q = gpu.Download(q), got_scales = gpu.Download(scales);
    for (int64_t i = 0; i < c.rows * tiles; ++i)
      EXPECT_EQ(got_scales.At(i), want.scales[static_cast<size_t>(i)]) << "scale " << i;
    int mismatches = 0;
    for (int64_t i = 0; i < c.rows * c.k; ++i) {
      double got = E4m3Value(got_q.data<uint8_t>()[i]);
      double expected = E4m3Value(want.q[static_cast<size_t>(i)]);
      if (got != expected && mismatches++ < 10)
        ADD_FAILURE() << "q[" << i << "] = " << got << ", expected " << expected << " (x "
                      << values[static_cast<size_t>(i)] << ")";
    }
    EXPECT_EQ(mismatches, 0);
  }
}

TEST(CudaFp8, BlockScaledGemmMatchesTheDequantizedProduct) {
  WEIR_REQUIRE_GPU();
  Gpu gpu;
  ASSERT_TRUE(gpu.ok());
  struct Case {
    int64_t m, n, k;
    DataType c_type;
  };
  for (const Case& c :
       {Case{5, 70, 256, DT_BF16}, Case{130, 200, 384, DT_F32}, Case{1, 1, 128, DT_F32},
        Case{257, 129, 1024, DT_BF16}, Case{64, 128, 128, DT_BF16}, Case{3, 5, 0, DT_F32}}) {
    SCOPED_TRACE("[" + std::to_string(c.m) + ", " + std::to_string(c.n) + ", " +
                 std::to_string(c.k) + "] -> " + Name(c.c_type));
    Quantized a = QuantizeOnHost(SpreadValues(c.m, c.k, 11), c.m, c.k, 1);
    Quantized b = QuantizeOnHost(SpreadValues(c.n, c.k, 12), c.n, c.k, 128);
    int64_t slices = c.k / 128, n_blocks = (c.n + 127) / 128;
    Tensor da = gpu.Upload(HostBytes(a.q, {c.m, c.k}));
    Tensor db = gpu.Upload(HostBytes(b.q, {c.n, c.k}));
    Tensor da_scales = gpu.Upload(HostFloats(a.scales, {c.m, slices}));
    Tensor db_scales = gpu.Upload(HostFloats(b.scales, {n_blocks, slices}));
    Tensor dc = gpu.Empty(c.c_type, {c.m, c.n});
    cuda::Fp8GemmArgs g;
    g.m = c.m;
    g.n = c.n;
    g.k = c.k;
    g.a = da.raw_data();
    g.a_scales = c.k > 0 ? da_scales.data<float>() : nullptr;
    g.b = db.raw_data();
    g.b_scales = c.k > 0 ? db_scales.data<float>() : nullptr;
    g.c = dc.raw_data();
    g.c_type = c.c_type;
    Status s = cuda::GemmFp8BlockScaled(gpu.ctx(), g);
    ASSERT_TRUE(s.ok()) << s.ToString();
    Tensor got = gpu.Download(dc);
    std::vector<double> a_values(a.q.size()), b_values(b.q.size());
    for (int64_t i = 0; i < c.m * c.k; ++i) {
      a_values[static_cast<size_t>(i)] =
          E4m3Value(a.q[static_cast<size_t>(i)]) *
          a.scales[static_cast<size_t>((i / c.k) * slices + (i % c.k) / 128)];
    }
    for (int64_t i = 0; i < c.n * c.k; ++i) {
      b_values[static_cast<size_t>(i)] =
          E4m3Value(b.q[static_cast<size_t>(i)]) *
          b.scales[static_cast<size_t>((i / c.k / 128) * slices + (i % c.k) / 128)];
    }
    int failures = 0;
    for (int64_t i = 0; i < c.m; ++i) {
      for (int64_t j = 0; j < c.n; ++j) {
        double want = 0, magnitude = 0;
        for (int64_t l = 0; l < c.k; ++l) {
          double p = a_values[static_cast<size_t>(i * c.k + l)] *
                     b_values[static_cast<size_t>(j * c.k + l)];
          want += p;
          magnitude += std::abs(p);
        }
        // f32 sums of 128 products per slice (tensor cores may keep fewer bits), then the
        // output's rounding. A wrong layout or scale is off by about `magnitude`.
        double rounding = c.c_type == DT_BF16 ? std::ldexp(1.0, -8) : 1e-6;
        double tolerance = 5e-4 * magnitude + rounding * std::abs(want);
        double value = got.At(i * c.n + j);
        if (!(std::abs(value - want) <= tolerance) && failures++ < 10)
          ADD_FAILURE() << "C[" << i << ", " << j << "] = " << value << ", expected " << want;
      }
    }
    EXPECT_EQ(failures, 0);
  }
}

#else

TEST(CudaGemm, DirectTestsNeedLibweirCuda) {
  WEIR_REQUIRE_GPU();
  GTEST_SKIP() << "the direct cuda::Gemm and FP8 tests need weir_gpu_tests linked with weir::cuda";
}

#endif  // WEIR_HAVE_CUDA

}  // namespace
}  // namespace weir::testing
