// Learning-rate schedules, by 1-based optimizer step.
#pragma once

#include <algorithm>
#include <cmath>
#include <string>

namespace weir::train {

struct Schedule {
  std::string kind = "cosine";  // constant | cosine | wsd
  double lr = 1e-3;
  int64_t warmup = 0;
  int64_t total = 1;
  double min_ratio = 0.1;       // floor of cosine and wsd, as a fraction of lr
  double decay_fraction = 0.2;  // wsd: share of the steps spent decaying

  double At(int64_t step) const {
    if (warmup > 0 && step <= warmup)
      return lr * static_cast<double>(step) / static_cast<double>(warmup);
    double floor = lr * min_ratio;
    if (kind == "cosine") {
      double span = std::max<double>(1.0, static_cast<double>(total - warmup));
      double progress = std::clamp(static_cast<double>(step - warmup) / span, 0.0, 1.0);
      return floor + 0.5 * (lr - floor) * (1 + std::cos(M_PI * progress));
    }
    if (kind == "wsd") {
      double decay_steps = std::max(1.0, decay_fraction * static_cast<double>(total));
      double decay_start = static_cast<double>(total) - decay_steps;
      if (static_cast<double>(step) <= decay_start) return lr;
      double progress =
          std::clamp((static_cast<double>(step) - decay_start) / decay_steps, 0.0, 1.0);
      return lr + (floor - lr) * progress;
    }
    return lr;  // constant
  }
};

}  // namespace weir::train
