// LoRA (Hu et al. 2021): low-rank adapters on chosen Linear layers of a model, trained while the
// base weights stay frozen. A model resource with `lora_targets` rewrites those nn.Linear nodes
// into nn.LoRALinear (the base weight keeps its name, the adapters are `<node>.lora_a` [rank, in]
// and `<node>.lora_b` [out, rank]) and trains only the adapters. Adapters are saved on their own
// (`adapter.safetensors` and Hugging Face PEFT's `adapter_config.json`) and either kept separate
// or merged into the base weights: W + (alpha / rank) · B · A.
#pragma once

#include <filesystem>
#include <map>
#include <string>
#include <vector>

#include "weir/runtime/program.h"

namespace weir {

inline constexpr const char* kAdapterStem = "adapter";  // adapter.safetensors
inline constexpr const char* kAdapterConfigFile = "adapter_config.json";

struct LoraConfig {
  // nn.Linear nodes by the end of their path (MatchesPathSuffix): `attn.wq_b`, `wkv_b`.
  std::vector<std::string> targets;
  int64_t rank = 8;
  double alpha = 16;
  double dropout = 0;
  int64_t seed = 0;

  bool enabled() const { return !targets.empty(); }
  // The rewrites that put adapters on the targets, and the patterns that train them alone.
  void AddTo(ProgramOptions& options) const;
  // PEFT's adapter_config.json for these settings.
  std::string ConfigJson() const;
};

// The settings in `dir`'s adapter_config.json (PEFT's): r, lora_alpha, target_modules and, when
// present, lora_dropout; an error names the file and the missing field.
StatusOr<LoraConfig> ReadLoraConfig(const std::filesystem::path& dir);

// Whether a parameter name is an adapter's.
bool IsLoraParam(const std::string& name);

// `params` with every adapter merged into its base weight: `<node>.weight` becomes
// W + (alpha / rank) · B · A, the rank read from A, and the adapters are left out. An adapter
// without its pair or base weight, or of shapes that do not fit, is an error naming it.
StatusOr<std::map<std::string, Tensor>> MergeLora(const std::map<std::string, Tensor>& params,
                                                  double alpha);

}  // namespace weir
