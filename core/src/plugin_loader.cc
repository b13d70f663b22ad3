#include "weir/plugin_loader.h"

#include <dlfcn.h>

#include <algorithm>
#include <boost/dll/runtime_symbol_info.hpp>
#include <boost/dll/shared_library.hpp>
#include <cstddef>
#include <cstdlib>
#include <memory>

#include "weir/plugin.h"

namespace weir {
namespace fs = std::filesystem;

namespace {

// Plugins are never unloaded: their code may still be referenced by kernels, static state and
// (for CUDA) registered fatbins.
std::vector<boost::dll::shared_library>& KeptLibraries() {
  static auto* libs = new std::vector<boost::dll::shared_library>();
  return *libs;
}

Status PluginError(const fs::path& file, const std::string& message) {
  return FailedPrecondition("plugin " + file.string() + ": " + message);
}

std::string AbiText(uint32_t major, uint32_t minor) {
  return std::to_string(major) + "." + std::to_string(minor);
}

}  // namespace

PluginLoader& PluginLoader::Global() {
  static auto* loader = new PluginLoader(&OpRegistry::Global());
  return *loader;
}

Status PluginLoader::Load(const fs::path& file) {
  std::error_code ec;
  if (!fs::is_regular_file(file, ec)) return NotFound("plugin " + file.string() + " not found");
  fs::path canon = fs::canonical(file, ec);
  if (ec) return NotFound("plugin " + file.string() + ": " + ec.message());
  for (const LoadedPlugin& p : loaded_)
    if (p.file == canon) return Status();

  dlerror();  // clear
  boost::dll::shared_library lib;
  boost::dll::fs::error_code load_error;
  lib.load(canon, load_error, boost::dll::load_mode::rtld_lazy | boost::dll::load_mode::rtld_local);
  if (load_error || !lib.is_loaded()) {
    const char* why = dlerror();
    return PluginError(canon, std::string("cannot be loaded as a shared library: ") +
                                  (why ? why : load_error.message()));
  }
  KeptLibraries().push_back(lib);
  if (!lib.has("weir_plugin")) {
    return PluginError(canon,
                       "exports no weir plugin descriptor (alias 'weir_plugin'); a plugin declares "
                       "one with WEIR_PLUGIN(name, version, RegisterFunction)");
  }
  const auto& d = lib.get_alias<const WeirPluginDescriptor>("weir_plugin");
  if (d.struct_size < offsetof(WeirPluginDescriptor, abi_minor) + sizeof(uint32_t)) {
    return PluginError(canon, "descriptor is too small (" + std::to_string(d.struct_size) +
                                  " bytes) to be a weir plugin descriptor");
  }
  std::string plugin_abi = AbiText(d.abi_major, d.abi_minor);
  std::string host_abi = AbiText(WEIR_PLUGIN_ABI_MAJOR, WEIR_PLUGIN_ABI_MINOR);
  if (d.abi_major != WEIR_PLUGIN_ABI_MAJOR) {
    return PluginError(canon, "built for weir plugin ABI " + plugin_abi + ", this weir has ABI " +
                                  host_abi + "; rebuild the plugin against this weir's SDK");
  }
  if (d.abi_minor > WEIR_PLUGIN_ABI_MINOR) {
    return PluginError(canon, "needs weir plugin ABI " + plugin_abi + ", this weir has ABI " +
                                  host_abi + "; upgrade weir");
  }
  if (d.struct_size < offsetof(WeirPluginDescriptor, register_fn) + sizeof(d.register_fn)) {
    return PluginError(canon, "descriptor is too small (" + std::to_string(d.struct_size) +
                                  " bytes) for ABI " + plugin_abi);
  }
  if (d.cxx11_abi != _GLIBCXX_USE_CXX11_ABI) {
    return PluginError(canon, "built with _GLIBCXX_USE_CXX11_ABI=" + std::to_string(d.cxx11_abi) +
                                  ", this weir with " + std::to_string(_GLIBCXX_USE_CXX11_ABI) +
                                  "; rebuild the plugin with the same standard library ABI");
  }
  if (d.register_fn == nullptr) return PluginError(canon, "descriptor has no register function");
  std::string compiler = d.compiler ? d.compiler : "";
  if (compiler != __VERSION__) {
    LOG(WARNING) << "plugin " << canon.string() << " was built with compiler " << compiler
                 << ", weir with " << __VERSION__;
  }

  Registrar registrar;
  const char* error = nullptr;
  try {
    error = d.register_fn(&registrar);
  } catch (...) {
    error = "registration threw through the ABI boundary";
  }
  if (error != nullptr) return PluginError(canon, std::string("registration failed: ") + error);
  WEIR_RETURN_IF_ERROR(registry_->Commit(registrar, canon.string()));

  LoadedPlugin info;
  info.file = canon;
  info.name = d.name ? d.name : "";
  info.version = d.version ? d.version : "";
  info.compiler = compiler;
  info.abi_major = static_cast<int>(d.abi_major);
  info.abi_minor = static_cast<int>(d.abi_minor);
  loaded_.push_back(std::move(info));
  VLOG(1) << "loaded plugin " << canon.string();
  return Status();
}

std::vector<fs::path> PluginLoader::SearchPath() {
  std::vector<fs::path> dirs;
  boost::dll::fs::error_code ec;
  fs::path core = boost::dll::this_line_location(ec);
  if (!ec) dirs.push_back(core.parent_path() / "weir" / "plugins");
  if (const char* env = std::getenv("WEIR_PLUGIN_PATH")) {
    std::string list = env;
    size_t start = 0;
    while (start <= list.size()) {
      size_t end = list.find(':', start);
      if (end == std::string::npos) end = list.size();
      if (end > start) dirs.emplace_back(list.substr(start, end - start));
      start = end + 1;
    }
  }
  return dirs;
}

Status PluginLoader::LoadDefaults() {
  std::vector<Status> errors;
  for (const fs::path& dir : SearchPath()) {
    std::error_code ec;
    if (!fs::is_directory(dir, ec)) continue;
    std::vector<fs::path> files;
    for (const auto& entry : fs::directory_iterator(dir, ec)) {
      std::string name = entry.path().filename().string();
      if (name.rfind("weir_", 0) == 0 && entry.path().extension() == ".so")
        files.push_back(entry.path());
    }
    std::sort(files.begin(), files.end());
    for (const fs::path& f : files) errors.push_back(Load(f));
  }
  return Status::Join(errors);
}

Status PluginLoader::LoadByName(const std::string& entry, const fs::path& graph_dir) {
  bool is_path = entry.find('/') != std::string::npos || fs::path(entry).extension() == ".so";
  if (is_path) {
    fs::path p(entry);
    return Load(p.is_absolute() ? p : graph_dir / p);
  }
  std::string searched;
  for (const fs::path& dir : SearchPath()) {
    for (const std::string& name :
         {"weir_" + entry + ".so", entry + ".so", "lib" + entry + ".so"}) {
      std::error_code ec;
      if (fs::is_regular_file(dir / name, ec)) return Load(dir / name);
    }
    searched += (searched.empty() ? "" : ", ") + dir.string();
  }
  return NotFound("plugin '" + entry + "' not found (looked for weir_" + entry + ".so in " +
                  (searched.empty() ? "no folder" : searched) + "; set WEIR_PLUGIN_PATH)");
}

}  // namespace weir
