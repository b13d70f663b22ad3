// GPU tests: they run for real where a CUDA device exists and skip with one clear message where
// none does (or where weir was built without CUDA). The conformance helpers compare an op's CUDA
// kernel with its CPU kernel and fail when the CUDA kernel was not compared at all.
#pragma once

#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "weir/testing/op_check.h"

namespace weir::testing {

// Whether device `cuda:0` can run programs; otherwise `why` says what is missing.
bool HaveCudaDevice(std::string* why);

// The float dtypes with the relative tolerance the GPU tests hold a kernel to: f32 1e-4, bf16
// 2e-2, f64 1e-9.
struct DtypeTolerance {
  DataType dtype;
  double tolerance;
};
const std::vector<DtypeTolerance>& GpuTolerances();

// "nn.RMSNorm [eps=1e-5] f32[3, 5]": a case, for failure messages.
std::string DescribeCase(const OpCase& c);
bool HasCudaKernel(const std::string& op);

// CheckDeviceConformance (every output relative to its own value), which must have compared cuda.
void ExpectCudaConformance(const OpCase& c, double tolerance);
// CheckDeviceGradients on cuda, which must have compared something.
void ExpectCudaGradients(const OpCase& c, double tolerance);
// For outputs that are sums whose terms may cancel (GEMMs, weight gradients): the devices sum in
// different orders, so an element is only as accurate as its output's scale. Each element must
// be within tolerance · max(|cpu|, floor · max |cpu| of that output); equal infinities match.
// `rows` limits output o to its first rows[o] rows (-1 or absent: all of them).
void ExpectCudaNearCpu(const OpCase& c, double tolerance, double floor = 1e-2,
                       const std::vector<int64_t>& rows = {});

}  // namespace weir::testing

// The first statement of a test that needs a GPU.
#define WEIR_REQUIRE_GPU()                                        \
  do {                                                            \
    std::string weir_why_no_gpu;                                  \
    if (!::weir::testing::HaveCudaDevice(&weir_why_no_gpu))       \
      GTEST_SKIP() << "needs a CUDA device: " << weir_why_no_gpu; \
  } while (0)
