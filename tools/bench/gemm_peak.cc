// Measures the GEMM rate of the library weir uses (oneDNN, through weir::Gemm) on this machine:
// the ceiling the training benchmark compares its achieved FLOP/s against.
//   weir_gemm_peak [size]   prints "f32 GFLOP/s" and "bf16 GFLOP/s" lines
#include <chrono>
#include <cstdio>
#include <cstdlib>

#include "weir/gemm.h"

namespace {

double Rate(weir::DataType dtype, int64_t n) {
  weir::Tensor a = weir::Tensor::Full(dtype, {n, n}, 0.5);
  weir::Tensor b = weir::Tensor::Full(dtype, {n, n}, 0.25);
  weir::Tensor c = weir::Tensor::Empty(dtype, {n, n});
  auto run = [&] { CHECK(weir::Gemm(a, false, b, true, c).ok()); };
  run();  // builds and caches the primitive
  int reps = 0;
  auto start = std::chrono::steady_clock::now();
  double elapsed = 0;
  while (elapsed < 1.0 || reps < 5) {
    run();
    ++reps;
    elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  }
  return 2.0 * static_cast<double>(n * n * n) * reps / elapsed / 1e9;
}

}  // namespace

int main(int argc, char** argv) {
  int64_t n = argc > 1 ? std::atoll(argv[1]) : 1024;
  std::printf("f32 %.1f\n", Rate(weir::DT_F32, n));
  std::printf("bf16 %.1f\n", Rate(weir::DT_BF16, n));
  return 0;
}
