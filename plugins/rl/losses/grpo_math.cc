#include "losses/grpo_math.h"

#include <algorithm>
#include <cmath>

namespace weir::rl {
namespace {

double Mean(const double* x, size_t n) {
  double sum = 0;
  for (size_t i = 0; i < n; ++i) sum += x[i];
  return sum / static_cast<double>(n);
}

// Unbiased (n − 1, as torch.std), in two passes so a large common offset does not cancel away
// the spread. Exactly 0 when every value is equal: the mean may not be (3 × 0.1 does not
// average to 0.1), which would leave rounding noise that 1e-4 then magnifies.
double UnbiasedStd(const double* x, size_t n, double mean) {
  if (n < 2 || std::all_of(x, x + n, [&](double v) { return v == x[0]; })) return 0;
  double squares = 0;
  for (size_t i = 0; i < n; ++i) squares += (x[i] - mean) * (x[i] - mean);
  return std::sqrt(squares / static_cast<double>(n - 1));
}

}  // namespace

StatusOr<GroupAdvantagesResult> GroupAdvantages(const std::vector<double>& rewards,
                                                int64_t group_size, const std::string& scale) {
  if (scale != "group" && scale != "batch" && scale != "none") {
    return InvalidArgument("scale must be group, batch or none, got '" + scale + "'");
  }
  if (group_size < 1) {
    return InvalidArgument("group_size must be at least 1, got " + std::to_string(group_size));
  }
  if (rewards.empty()) return InvalidArgument("no rewards to compute advantages from");
  size_t n = rewards.size(), g = static_cast<size_t>(group_size);
  if (n % g != 0) {
    return InvalidArgument(std::to_string(n) + " rewards do not split into groups of " +
                           std::to_string(group_size));
  }
  for (size_t i = 0; i < n; ++i) {
    if (!std::isfinite(rewards[i])) {
      return InvalidArgument("reward " + std::to_string(i) + " is " + std::to_string(rewards[i]));
    }
  }

  GroupAdvantagesResult out;
  out.advantages.resize(n);
  out.reward_mean = Mean(rewards.data(), n);
  out.reward_batch_std = UnbiasedStd(rewards.data(), n, out.reward_mean);
  size_t groups = n / g, constant_groups = 0;
  double std_sum = 0;
  for (size_t k = 0; k < groups; ++k) {
    const double* r = rewards.data() + k * g;
    double* a = out.advantages.data() + k * g;
    double mean = Mean(r, g), std = UnbiasedStd(r, g, mean);
    std_sum += std;
    if (std == 0) {  // a constant group: exactly 0, whatever the scale
      ++constant_groups;
      std::fill(a, a + g, 0.0);
      continue;
    }
    double divisor = scale == "group"   ? std + kAdvantageStdEpsilon
                     : scale == "batch" ? out.reward_batch_std + kAdvantageStdEpsilon
                                        : 1.0;
    for (size_t i = 0; i < g; ++i) a[i] = (r[i] - mean) / divisor;
  }
  out.reward_std = std_sum / static_cast<double>(groups);
  out.frac_reward_zero_std = static_cast<double>(constant_groups) / static_cast<double>(groups);
  return out;
}

}  // namespace weir::rl
