// Helpers for weir's own unit tests, on top of the SDK's (weir/testing/test_util.h).
#pragma once

#include <string>

#include "weir/testing/test_util.h"

namespace weir::testing {

// tests/graphs/<name> in the source tree.
std::string TestGraph(const std::string& name);
// A path with the tests/graphs/ prefix removed, for stable messages.
std::string StripGraphDir(const std::string& text);

}  // namespace weir::testing
