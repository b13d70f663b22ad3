// A plugin built for a future weir plugin ABI: the host must refuse it without calling it.
#include <stdexcept>

#include "weir/plugin.h"

namespace {
const char* MustNotBeCalled(void*) { throw std::logic_error("a refused plugin was called"); }
}  // namespace

extern "C" const WeirPluginDescriptor weir_test_future_descriptor = {sizeof(WeirPluginDescriptor),
                                                                     WEIR_PLUGIN_ABI_MAJOR + 1,
                                                                     0,
                                                                     "future",
                                                                     "9.0.0",
                                                                     __VERSION__,
                                                                     _GLIBCXX_USE_CXX11_ABI,
                                                                     0,
                                                                     &MustNotBeCalled};
BOOST_DLL_ALIAS(weir_test_future_descriptor, weir_plugin)
