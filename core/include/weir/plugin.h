// The plugin ABI: what a weir plugin exports and what the host checks before calling anything.
//
// A plugin is a shared library exporting one C descriptor under the Boost.DLL alias
// "weir_plugin". The host reads the descriptor first and refuses the plugin, with a message naming
// the file and the difference, when its ABI major differs, its ABI minor is newer than the host's,
// or it was built against a different C++ standard-library ABI. Only then does it call
// `register_fn`, which fills a weir::Registrar with the plugin's ops.
//
// Because registration passes C++ objects (schemas, std::function kernels) across the boundary,
// a plugin must be built with the same C++ standard library ABI as the host; the descriptor's
// build facts let the host check that instead of crashing.
//
// Plugin authors write:
//   void RegisterMyOps(weir::Registrar& r) { r.StreamOp("my.Op")... }
//   WEIR_PLUGIN("my", "0.1.0", RegisterMyOps)
#pragma once

#include <boost/config.hpp>
#include <boost/dll/alias.hpp>
#include <cstdint>
#include <exception>
#include <string>

#include "weir/registrar.h"

// Bump the major for any change that breaks existing plugins (a changed struct layout, a changed
// virtual interface); bump the minor for additions.
#define WEIR_PLUGIN_ABI_MAJOR 1
#define WEIR_PLUGIN_ABI_MINOR 1
#define WEIR_PLUGIN_ALIAS weir_plugin

#ifndef WEIR_CUDA_VERSION
#define WEIR_CUDA_VERSION 0
#endif

extern "C" {
struct WeirPluginDescriptor {
  uint32_t struct_size;  // sizeof(WeirPluginDescriptor) when the plugin was built
  uint32_t abi_major;
  uint32_t abi_minor;
  const char* name;
  const char* version;
  const char* compiler;  // __VERSION__ of the plugin's compiler
  int32_t cxx11_abi;     // _GLIBCXX_USE_CXX11_ABI
  int32_t cuda_version;  // CUDA runtime version the plugin was built with; 0 without CUDA
  // Fills the weir::Registrar at `registrar`. Returns nullptr on success, or an error message
  // that stays valid until the next call on the same thread. Never throws.
  const char* (*register_fn)(void* registrar);
};
}

namespace weir::plugin_detail {

template <void (*Register)(Registrar&)>
const char* RegisterTrampoline(void* registrar) {
  static thread_local std::string error;
  try {
    Register(*static_cast<Registrar*>(registrar));
    return nullptr;
  } catch (const std::exception& e) {
    error = std::string("registration threw: ") + e.what();
  } catch (...) {
    error = "registration threw an exception that is not a std::exception";
  }
  return error.c_str();
}

}  // namespace weir::plugin_detail

#define WEIR_PLUGIN(NAME, VERSION, REGISTER_FN)                     \
  extern "C" const WeirPluginDescriptor weir_plugin_descriptor_ = { \
      sizeof(WeirPluginDescriptor),                                 \
      WEIR_PLUGIN_ABI_MAJOR,                                        \
      WEIR_PLUGIN_ABI_MINOR,                                        \
      NAME,                                                         \
      VERSION,                                                      \
      __VERSION__,                                                  \
      _GLIBCXX_USE_CXX11_ABI,                                       \
      WEIR_CUDA_VERSION,                                            \
      &::weir::plugin_detail::RegisterTrampoline<REGISTER_FN>};     \
  BOOST_DLL_ALIAS(weir_plugin_descriptor_, weir_plugin)
