// RoPE's rotation frequencies with YaRN's scaling (spec deepseek.md §2.1): one function for the
// CPU kernel and the CUDA kernel, which computes them on the host too, so both rotate by the same
// angles.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "weir/attrs.h"

namespace weir::nn {

// The rotation frequency of each of the d/2 pairs.
inline std::vector<double> Frequencies(const Attrs& a, int64_t d) {
  double theta = a.Float("theta");
  int64_t half = d / 2;
  std::vector<double> f(static_cast<size_t>(half));
  for (int64_t i = 0; i < half; ++i)
    f[static_cast<size_t>(i)] =
        std::pow(theta, -2.0 * static_cast<double>(i) / static_cast<double>(d));
  double factor = a.Float("rope_factor");
  if (factor <= 1.0) return f;
  double orig = static_cast<double>(a.Int("original_max_position"));
  auto correction = [&](double rotations) {
    return static_cast<double>(d) * std::log(orig / (rotations * 2 * M_PI)) / (2 * std::log(theta));
  };
  double low = std::max(std::floor(correction(a.Float("beta_fast"))), 0.0);
  double high = std::min(std::ceil(correction(a.Float("beta_slow"))), static_cast<double>(d - 1));
  if (low == high) high += 0.001;
  for (int64_t i = 0; i < half; ++i) {
    double ramp = std::clamp((static_cast<double>(i) - low) / (high - low), 0.0, 1.0);
    double& fi = f[static_cast<size_t>(i)];
    fi = fi / factor * ramp + fi * (1 - ramp);
  }
  return f;
}

}  // namespace weir::nn
