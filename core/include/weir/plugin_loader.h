// Loads plugins with Boost.DLL and commits their registrations to the OpRegistry.
//
// Libraries stay loaded for the life of the process (CUDA fatbins and static state make
// unloading unsafe). Loading is idempotent per canonical path. Not thread-safe: load plugins
// before running graphs.
#pragma once

#include <filesystem>
#include <string>
#include <vector>

#include "weir/op_registry.h"
#include "weir/status.h"

namespace weir {

struct LoadedPlugin {
  std::filesystem::path file;
  std::string name;
  std::string version;
  std::string compiler;
  int abi_major = 0;
  int abi_minor = 0;
};

class PluginLoader {
 public:
  explicit PluginLoader(OpRegistry* registry) : registry_(registry) {}
  // The loader that fills OpRegistry::Global().
  static PluginLoader& Global();

  // Loads one plugin file. Errors name the file: missing, not a shared library, no descriptor,
  // ABI mismatch, registration failure or duplicate ops. Never crashes on a bad file.
  Status Load(const std::filesystem::path& file);

  // The folders searched for plugins, in order: the plugin folder beside the weir binaries
  // (<prefix>/lib/weir/plugins), then each folder of $WEIR_PLUGIN_PATH (':'-separated).
  static std::vector<std::filesystem::path> SearchPath();

  // Loads every plugin file (weir_*.so) of every folder on the search path.
  Status LoadDefaults();

  // Loads the plugin a graph names: a path (relative to `graph_dir`) or a name that finds
  // weir_<name>.so (or <name>.so) on the search path.
  Status LoadByName(const std::string& entry, const std::filesystem::path& graph_dir);

  const std::vector<LoadedPlugin>& loaded() const { return loaded_; }

 private:
  OpRegistry* registry_;
  std::vector<LoadedPlugin> loaded_;
};

}  // namespace weir
