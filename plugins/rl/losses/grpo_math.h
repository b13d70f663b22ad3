// GRPO's outcome advantages (spec §7.1; TRL's GRPOTrainer): each completion's reward minus its
// group's mean, optionally divided by a std. Pure functions, so the stream op that turns scored
// groups into training batches stays thin and the numbers are tested alone. Thread-safe.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "weir/status.h"

namespace weir::rl {

// Added to the std before dividing, as TRL does, so near-constant groups stay finite.
inline constexpr double kAdvantageStdEpsilon = 1e-4;

struct GroupAdvantagesResult {
  std::vector<double> advantages;  // one per completion, in the rewards' order
  double reward_mean = 0;          // TRL's `reward`: the mean over all completions
  // TRL's `reward_std` as it logs it with scale "group" or "none": the mean of the per-group
  // stds. (TRL logs reward_batch_std under that name with scale "batch"; here it is always the
  // per-group mean, so the metric means one thing whatever the scale.)
  double reward_std = 0;
  double reward_batch_std = 0;  // the std of all rewards (what scale "batch" divides by)
  // TRL's `frac_reward_zero_std`: the share of groups whose rewards are all equal. Such a group
  // teaches nothing: its advantages are exactly 0.
  double frac_reward_zero_std = 0;
};

// `rewards` holds consecutive groups of `group_size` completions of one prompt each. `scale`:
//   "group": advantage = (r − group mean) / (group std + 1e-4)   (TRL's default, DeepSeekMath)
//   "batch": advantage = (r − group mean) / (batch std + 1e-4)   (Lite-PPO)
//   "none":  advantage = r − group mean                            (Dr. GRPO)
// Every std is the unbiased one (divides by n − 1), as torch.std computes it; the std of a single
// value is 0 (torch gives NaN; recent TRL uses 0). Errors (InvalidArgument): no rewards, a
// group_size below 1 or not dividing the number of rewards, a reward that is NaN or infinite, an
// unknown scale.
StatusOr<GroupAdvantagesResult> GroupAdvantages(const std::vector<double>& rewards,
                                                int64_t group_size, const std::string& scale);

}  // namespace weir::rl
