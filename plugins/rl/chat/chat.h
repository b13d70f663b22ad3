// The chat template every post-training stage shares: a prompt is written as the template with
// `{prompt}` replaced, and a training example continues it with the completion and the end
// token. The role markers are special tokens of the tokenizer, so a user's text cannot forge them.
#pragma once

#include <algorithm>
#include <string>
#include <vector>

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

// Where the first of the stop strings `stops` begins in `text` (npos: none): a completion is cut
// there.
inline size_t FirstStop(const std::string& text, const std::vector<std::string>& stops) {
  size_t first = std::string::npos;
  for (const std::string& s : stops) first = std::min(first, text.find(s));
  return first;
}

}  // namespace weir::rl
