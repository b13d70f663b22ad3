// FastExp against libm's double exp over the float range, and its edge cases.
#include "weir/vec_math.h"

#include <gtest/gtest.h>

#include <cmath>
#include <limits>

namespace weir {
namespace {

TEST(FastExp, RelativeErrorIsWithinAFewUlpOverTheRange) {
  double worst = 0;
  float worst_x = 0;
  for (float x = -87.0f; x < 88.0f; x += 0.000731f) {
    double want = std::exp(static_cast<double>(x));
    double rel = std::abs(static_cast<double>(FastExp(x)) - want) / want;
    if (rel > worst) {
      worst = rel;
      worst_x = x;
    }
  }
  EXPECT_LT(worst, 2.5e-7) << "at x = " << worst_x;  // 2 ulp of float is 2.4e-7
}

TEST(FastExp, EdgeCases) {
  EXPECT_EQ(FastExp(0.0f), 1.0f);
  EXPECT_EQ(FastExp(-std::numeric_limits<float>::infinity()), 0.0f);  // masked scores
  EXPECT_EQ(FastExp(-100.0f), 0.0f);
  EXPECT_EQ(FastExp(100.0f), std::numeric_limits<float>::infinity());
  EXPECT_EQ(FastExp(std::numeric_limits<float>::infinity()),
            std::numeric_limits<float>::infinity());
  EXPECT_TRUE(std::isnan(FastExp(std::numeric_limits<float>::quiet_NaN())));
  EXPECT_EQ(Exp(1.0), std::exp(1.0));  // double keeps libm's exp
}

}  // namespace
}  // namespace weir
