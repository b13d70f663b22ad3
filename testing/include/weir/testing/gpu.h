// GPU tests: they run for real where a CUDA device exists and skip with one clear message where
// none does (or where weir was built without CUDA).
#pragma once

#include <gtest/gtest.h>

#include <string>

namespace weir::testing {

// Whether device `cuda:0` can run programs; otherwise `why` says what is missing.
bool HaveCudaDevice(std::string* why);

}  // namespace weir::testing

// The first statement of a test that needs a GPU.
#define WEIR_REQUIRE_GPU()                                        \
  do {                                                            \
    std::string weir_why_no_gpu;                                  \
    if (!::weir::testing::HaveCudaDevice(&weir_why_no_gpu))       \
      GTEST_SKIP() << "needs a CUDA device: " << weir_why_no_gpu; \
  } while (0)
