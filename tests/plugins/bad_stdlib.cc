// A plugin built with the other libstdc++ string ABI: std::string and friends differ in layout,
// so the host must refuse it before any C++ object crosses the boundary.
#include <stdexcept>

#include "weir/plugin.h"

namespace {
const char* MustNotBeCalled(void*) { throw std::logic_error("a refused plugin was called"); }
}  // namespace

extern "C" const WeirPluginDescriptor weir_test_stdlib_descriptor = {sizeof(WeirPluginDescriptor),
                                                                     WEIR_PLUGIN_ABI_MAJOR,
                                                                     WEIR_PLUGIN_ABI_MINOR,
                                                                     "old_strings",
                                                                     "1.0.0",
                                                                     __VERSION__,
                                                                     1 - _GLIBCXX_USE_CXX11_ABI,
                                                                     0,
                                                                     &MustNotBeCalled};
BOOST_DLL_ALIAS(weir_test_stdlib_descriptor, weir_plugin)
