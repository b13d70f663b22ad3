#include "weir/runtime/launch.h"

#include <cerrno>
#include <cstdlib>
#include <limits>

namespace weir {
namespace {

struct LauncherVars {
  const char* name;
  const char* rank;
  std::vector<const char*> size;  // the first one set counts
  const char* local_rank;
};

// Closest to the process first (see launch.h for why).
const std::vector<LauncherVars>& Launchers() {
  static const std::vector<LauncherVars> kLaunchers = {
      {"openmpi", "OMPI_COMM_WORLD_RANK", {"OMPI_COMM_WORLD_SIZE"}, "OMPI_COMM_WORLD_LOCAL_RANK"},
      {"torchrun", "RANK", {"WORLD_SIZE"}, "LOCAL_RANK"},
      {"slurm", "SLURM_PROCID", {"SLURM_NTASKS", "SLURM_NPROCS"}, "SLURM_LOCALID"},
  };
  return kLaunchers;
}

const char* Env(const char* name) { return std::getenv(name); }

// A plain decimal integer in [min, max]: no sign other than '-', no spaces, no suffix.
StatusOr<int> ParseIntVar(const char* name, const char* text, int64_t min, int64_t max,
                          const std::string& context) {
  std::string where = "launch: " + std::string(name) + "=\"" + text + "\"" + context + ": ";
  std::string s = text;
  size_t digits_from = !s.empty() && s[0] == '-' ? 1 : 0;
  bool digits = s.size() > digits_from;
  for (size_t i = digits_from; i < s.size(); ++i) digits = digits && s[i] >= '0' && s[i] <= '9';
  if (!digits) return InvalidArgument(where + "not a decimal integer");
  errno = 0;
  long long v = std::strtoll(s.c_str(), nullptr, 10);
  if (errno == ERANGE || v < min || v > max) {
    return InvalidArgument(where + "expected an integer in [" + std::to_string(min) + ", " +
                           std::to_string(max) + "]");
  }
  return static_cast<int>(v);
}

}  // namespace

std::string LaunchInfo::ToString() const {
  std::string s = "rank " + std::to_string(rank) + " of " + std::to_string(world_size) +
                  " (local rank " + std::to_string(local_rank) + ")";
  if (launcher == "none") return s + ", no launcher";
  return s + " from " + launcher;
}

StatusOr<LaunchInfo> DetectLaunch() {
  LaunchInfo info;
  const LauncherVars* chosen = nullptr;
  for (const LauncherVars& l : Launchers()) {
    if (Env(l.rank) == nullptr) continue;
    if (chosen == nullptr) {
      chosen = &l;
    } else {
      info.also_set.push_back(l.name);
    }
  }
  constexpr int64_t kMaxInt = std::numeric_limits<int>::max();
  if (chosen != nullptr) {
    info.launcher = chosen->name;
    const char* size_var = nullptr;
    for (const char* v : chosen->size) {
      if (Env(v) != nullptr) {
        size_var = v;
        break;
      }
    }
    if (size_var == nullptr) {
      return InvalidArgument(std::string("launch: ") + chosen->rank + " is set (" + chosen->name +
                             ") but " + chosen->size[0] + " is not");
    }
    WEIR_ASSIGN_OR_RETURN(info.world_size, ParseIntVar(size_var, Env(size_var), 1, kMaxInt, ""));
    std::string of_size = " (with " + std::string(size_var) + "=" + Env(size_var) + ")";
    WEIR_ASSIGN_OR_RETURN(
        info.rank, ParseIntVar(chosen->rank, Env(chosen->rank), 0, info.world_size - 1, of_size));
    if (const char* local = Env(chosen->local_rank)) {
      WEIR_ASSIGN_OR_RETURN(
          info.local_rank, ParseIntVar(chosen->local_rank, local, 0, info.world_size - 1, of_size));
    }
  }
  if (const char* addr = Env("MASTER_ADDR")) {
    if (*addr == '\0') return InvalidArgument("launch: MASTER_ADDR is set but empty");
    info.master_addr = addr;
  }
  if (const char* port = Env("MASTER_PORT")) {
    WEIR_ASSIGN_OR_RETURN(info.master_port, ParseIntVar("MASTER_PORT", port, 1, 65535, ""));
  }
  return info;
}

}  // namespace weir
