// The chat template every post-training stage shares: a prompt is written as the template with
// `{prompt}` replaced, and a training example continues it with the completion and the end
// token. The role markers are special tokens of the tokenizer, so a user's text cannot forge them.
#pragma once

#include <string>

#include "weir/status.h"

namespace weir::rl {

inline constexpr char kDefaultTemplate[] = "<|user|>{prompt}<|assistant|>";
inline constexpr char kDefaultEnd[] = "<|eos|>";

// `tmpl` must hold `{prompt}` exactly once.
inline StatusOr<std::string> FormatPrompt(const std::string& tmpl, const std::string& prompt) {
  size_t at = tmpl.find("{prompt}");
  if (at == std::string::npos || tmpl.find("{prompt}", at + 1) != std::string::npos)
    return InvalidArgument("template '" + tmpl + "' must hold {prompt} exactly once");
  return tmpl.substr(0, at) + prompt + tmpl.substr(at + 8);
}

}  // namespace weir::rl
