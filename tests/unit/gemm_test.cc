// GEMMs on blocks inside larger buffers (strides, transposes, accumulation, bf16 -> f32) against
// a double-precision loop, and the same bits from any thread.
#include "weir/gemm.h"

#include <gtest/gtest.h>
#include <tbb/parallel_for.h>

#include <random>

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
