// GEMMs on blocks inside larger buffers (strides, transposes, accumulation, bf16 -> f32) against
// a double-precision loop, and the same bits from any thread.
#include "weir/gemm.h"

#include <gtest/gtest.h>
#include <tbb/parallel_for.h>

#include <cmath>
#include <map>
#include <random>
#include <utility>

#include "weir/half.h"

namespace weir {
namespace {

struct Case {
  int64_t m, n, k;
  bool ta, tb, accumulate;
};

template <typename T>
std::vector<T> Random(size_t n, std::mt19937& rng) {
  std::uniform_real_distribution<float> u(-1, 1);
  std::vector<T> v(n);
  for (T& x : v) x = T(u(rng));
  return v;
}

// Runs op(A)·op(B) with padded leading dimensions in type T (C in f32) and compares with f64.
template <typename T>
void CheckAgainstDouble(const Case& c, double tolerance) {
  std::mt19937 rng(static_cast<unsigned>(c.m * 131 + c.n * 17 + c.k));
  int64_t lda = (c.ta ? c.m : c.k) + 3, ldb = (c.tb ? c.k : c.n) + 5, ldc = c.n + 2;
  auto a = Random<T>(static_cast<size_t>((c.ta ? c.k : c.m) * lda), rng);
  auto b = Random<T>(static_cast<size_t>((c.tb ? c.n : c.k) * ldb), rng);
  auto cf = Random<float>(static_cast<size_t>(c.m * ldc), rng);
  auto widen = [](const auto& v) {
    std::vector<double> out;
    for (const auto& x : v) out.push_back(static_cast<double>(static_cast<float>(x)));
    return out;
  };
  std::vector<double> ad = widen(a), bd = widen(b), cd = widen(cf);
  ASSERT_TRUE(GemmBlock(DataTypeOf<T>(), DT_F32, c.m, c.n, c.k, {a.data(), lda, c.ta},
                        {b.data(), ldb, c.tb}, cf.data(), ldc, c.accumulate)
                  .ok());
  ASSERT_TRUE(GemmBlock(DT_F64, DT_F64, c.m, c.n, c.k, {ad.data(), lda, c.ta},
                        {bd.data(), ldb, c.tb}, cd.data(), ldc, c.accumulate)
                  .ok());
  for (int64_t i = 0; i < c.m; ++i)
    for (int64_t j = 0; j < c.n; ++j)
      ASSERT_NEAR(cf[static_cast<size_t>(i * ldc + j)], cd[static_cast<size_t>(i * ldc + j)],
                  tolerance)
          << "m" << c.m << " n" << c.n << " k" << c.k << " ta" << c.ta << " tb" << c.tb
          << " accumulate" << c.accumulate << " at (" << i << ", " << j << ")";
}

TEST(GemmBlock, StridedTransposedAndAccumulatingProductsMatchDouble) {
  for (int64_t m : {1, 7, 130})
    for (int64_t n : {1, 6, 200})
      for (int64_t k : {3, 64})
        for (bool ta : {false, true})
          for (bool tb : {false, true})
            for (bool accumulate : {false, true}) {
              // bf16 inputs are exact in the f64 reference: only f32 accumulation rounds.
              CheckAgainstDouble<float>({m, n, k, ta, tb, accumulate}, 1e-4);
              CheckAgainstDouble<bf16>({m, n, k, ta, tb, accumulate}, 1e-4);
            }
}

// Matrix-vector products (M = 1, f32) take weir's own loops, shared out among helper threads
// when large: odd sizes (a short last chunk, a masked tail), both layouts of B, a transposed A,
// accumulation; the same bits on one thread and on several.
TEST(GemmBlock, LargeMatrixVectorProductsMatchDoubleOnAnyThreadCount) {
  for (bool ta : {false, true})
    for (bool tb : {false, true})
      for (bool accumulate : {false, true}) {
        CheckAgainstDouble<float>({1, 1001, 301, ta, tb, accumulate}, 1e-4);
        CheckAgainstDouble<float>({1, 77, 1500, ta, tb, accumulate}, 1e-4);
      }
  std::mt19937 rng(9);
  const int64_t n = 1001, k = 517;
  auto a = Random<float>(static_cast<size_t>(k), rng);
  auto b = Random<float>(static_cast<size_t>(n * k), rng);
  for (bool tb : {false, true}) {
    int64_t ldb = tb ? k : n;
    std::vector<float> one_thread(static_cast<size_t>(n)), shared(one_thread.size());
    {
      SingleThreadedGemms one;
      ASSERT_TRUE(GemmBlock(DT_F32, DT_F32, 1, n, k, {a.data(), k}, {b.data(), ldb, tb},
                            one_thread.data(), n)
                      .ok());
    }
    for (int repeat = 0; repeat < 20; ++repeat) {
      ASSERT_TRUE(
          GemmBlock(DT_F32, DT_F32, 1, n, k, {a.data(), k}, {b.data(), ldb, tb}, shared.data(), n)
              .ok());
      ASSERT_EQ(shared, one_thread) << "tb " << tb << " repeat " << repeat;
    }
  }
}

// Undoes LimitGemvIsa when a test ends, whatever it asserted.
struct GemvIsaLimit {
  explicit GemvIsaLimit(GemvIsa isa) { LimitGemvIsa(isa); }
  ~GemvIsaLimit() { LimitGemvIsa(GemvIsa::kAvx512Bf16); }
};

// C[1, n] = op(A) · op(B) in bf16 (C f32 or bf16) with padded leading dimensions, into `c`.
struct Bf16Gemv {
  int64_t n, k;
  bool ta, tb;
  std::vector<bf16> a, b;
  int64_t lda, ldb;

  Bf16Gemv(int64_t n_, int64_t k_, bool ta_, bool tb_, unsigned seed)
      : n(n_), k(k_), ta(ta_), tb(tb_), lda(ta_ ? 3 : k_ + 3), ldb((tb_ ? k_ : n_) + 5) {
    std::mt19937 rng(seed);
    a = Random<bf16>(static_cast<size_t>(ta ? k * lda : lda), rng);
    b = Random<bf16>(static_cast<size_t>((tb ? n : k) * ldb), rng);
  }
  template <typename C>
  void Run(std::vector<C>& c, bool accumulate) const {
    ASSERT_TRUE(GemmBlock(DT_BF16, DataTypeOf<C>(), 1, n, k, {a.data(), lda, ta},
                          {b.data(), ldb, tb}, c.data(), n, accumulate)
                    .ok());
  }
  // The exact product (bf16 inputs are exact in double), plus `initial` when accumulating.
  std::vector<double> Reference(const std::vector<double>& initial) const {
    std::vector<double> out(initial);
    for (int64_t j = 0; j < n; ++j)
      for (int64_t l = 0; l < k; ++l)
        out[static_cast<size_t>(j)] +=
            static_cast<double>(static_cast<float>(a[static_cast<size_t>(ta ? l * lda : l)])) *
            static_cast<double>(
                static_cast<float>(b[static_cast<size_t>(tb ? j * ldb + l : l * ldb + j)]));
    return out;
  }
};

// bf16 matrix-vector products (decoding in bf16) take weir's own loops too: AVX512_BF16's dot
// products where the CPU has them, AVX-512F, AVX2 and plain fallbacks otherwise (all of them run
// here, as far as the CPU goes). Sizes cover every part of a dot product (steps of four blocks of
// 32, single blocks, an odd tail) and of the row-sum layout (masked last columns); f32 results lie
// within f32 rounding of the exact product, bf16 ones within one bf16 rounding of it.
TEST(GemmBlock, Bf16MatrixVectorProductsMatchDoubleOnEveryInstructionSet) {
  for (GemvIsa isa : {GemvIsa::kAvx512Bf16, GemvIsa::kAvx512, GemvIsa::kAvx2, GemvIsa::kPlain}) {
    GemvIsaLimit limit(isa);
    for (auto [n, k] : {std::pair<int64_t, int64_t>{1, 1},
                        {7, 31},
                        {33, 129},
                        {200, 517},
                        {1001, 301},
                        {77, 1500},
                        {64, 64}})
      for (bool ta : {false, true})
        for (bool tb : {false, true})
          for (bool accumulate : {false, true}) {
            Bf16Gemv g(n, k, ta, tb, static_cast<unsigned>(n * 31 + k));
            std::mt19937 rng(3);
            auto c32 = Random<float>(static_cast<size_t>(n), rng);
            auto c16 = Random<bf16>(static_cast<size_t>(n), rng);
            std::vector<double> init32(c32.begin(), c32.end()), init16, zeros(c32.size());
            for (bf16 v : c16) init16.push_back(static_cast<float>(v));
            std::vector<double> want32 = g.Reference(accumulate ? init32 : zeros);
            std::vector<double> want16 = g.Reference(accumulate ? init16 : zeros);
            g.Run(c32, accumulate);
            g.Run(c16, accumulate);
            for (int64_t j = 0; j < n; ++j) {
              auto at = static_cast<size_t>(j);
              ASSERT_NEAR(c32[at], want32[at], 1e-4)
                  << "isa " << static_cast<int>(isa) << " n" << n << " k" << k << " ta" << ta
                  << " tb" << tb << " accumulate" << accumulate << " at " << j;
              // Rounded once to 8 significant bits (plus f32's error, far smaller).
              ASSERT_NEAR(static_cast<float>(c16[at]), want16[at],
                          std::abs(want16[at]) / 256 + 1e-4)
                  << "isa " << static_cast<int>(isa) << " n" << n << " k" << k << " ta" << ta
                  << " tb" << tb << " accumulate" << accumulate << " at " << j;
            }
          }
  }
}

// Each output is one sum in a fixed order on any thread count, on every instruction set; the
// AVX-512F, AVX2 and plain loops take the same steps, so they agree to the bit.
TEST(GemmBlock, Bf16MatrixVectorProductsGiveTheSameBitsOnAnyThreadCount) {
  std::map<bool, std::vector<float>> plain;  // by tb
  for (GemvIsa isa : {GemvIsa::kPlain, GemvIsa::kAvx2, GemvIsa::kAvx512, GemvIsa::kAvx512Bf16}) {
    GemvIsaLimit limit(isa);
    for (bool tb : {false, true}) {
      Bf16Gemv g(1001, 517, false, tb, 9);
      std::vector<float> one_thread(1001), shared(1001);
      std::vector<bf16> one_thread16(1001), shared16(1001);
      {
        SingleThreadedGemms one;
        g.Run(one_thread, false);
        g.Run(one_thread16, false);
      }
      if (isa == GemvIsa::kPlain) plain[tb] = one_thread;
      if (isa == GemvIsa::kAvx2 || isa == GemvIsa::kAvx512) {
        EXPECT_EQ(one_thread, plain[tb]) << "isa " << static_cast<int>(isa) << " tb " << tb;
      }
      for (int repeat = 0; repeat < 20; ++repeat) {
        g.Run(shared, false);
        g.Run(shared16, false);
        ASSERT_EQ(shared, one_thread) << "isa " << static_cast<int>(isa) << " tb " << tb;
        for (size_t j = 0; j < shared16.size(); ++j)
          ASSERT_EQ(shared16[j].bits, one_thread16[j].bits) << "isa " << static_cast<int>(isa);
      }
    }
  }
}

TEST(GemmBlock, PaddingBetweenRowsIsNotWritten) {
  std::vector<float> a = {1, 2, 3, 4}, b = {1, 0, 0, 1}, c(2 * 3, -7.0f);
  ASSERT_TRUE(GemmBlock(DT_F32, DT_F32, 2, 2, 2, {a.data(), 2}, {b.data(), 2}, c.data(), 3).ok());
  EXPECT_EQ(c, (std::vector<float>{1, 2, -7, 3, 4, -7}));
}

TEST(GemmBlock, UnsupportedTypesAreRefused) {
  std::vector<float> x(4);
  Status s = GemmBlock(DT_F32, DT_BF16, 2, 2, 2, {x.data(), 2}, {x.data(), 2}, x.data(), 2);
  EXPECT_FALSE(s.ok());
  EXPECT_NE(s.ToString().find("f32 -> bf16"), std::string::npos) << s.ToString();
}

// A cached primitive run from many TBB threads at once, single-threaded inside, gives the bits
// of a serial run: no shared scratchpad, no dependence on which thread created the primitive.
TEST(GemmBlock, ConcurrentRunsFromAnyThreadAreBitwiseEqual) {
  std::mt19937 rng(5);
  const int64_t m = 96, n = 80, k = 300;
  auto a = Random<float>(static_cast<size_t>(m * k), rng);
  auto b = Random<float>(static_cast<size_t>(k * n), rng);
  std::vector<float> want(static_cast<size_t>(m * n));
  {
    SingleThreadedGemms one;
    ASSERT_TRUE(
        GemmBlock(DT_F32, DT_F32, m, n, k, {a.data(), k}, {b.data(), n}, want.data(), n).ok());
  }
  const int runs = 64;
  std::vector<std::vector<float>> got(runs, std::vector<float>(want.size()));
  std::atomic<int> failures{0};
  tbb::parallel_for(0, runs, [&](int r) {
    SingleThreadedGemms one;
    Status s = GemmBlock(DT_F32, DT_F32, m, n, k, {a.data(), k}, {b.data(), n},
                         got[static_cast<size_t>(r)].data(), n);
    if (!s.ok()) ++failures;
  });
  EXPECT_EQ(failures.load(), 0);
  for (int r = 0; r < runs; ++r) EXPECT_EQ(got[static_cast<size_t>(r)], want) << "run " << r;
}

}  // namespace
}  // namespace weir
