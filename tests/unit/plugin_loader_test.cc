// Plugin loading: every way a plugin file can be wrong is an error naming the file, never a crash,
// and a failed plugin registers nothing.
#include <gtest/gtest.h>

#include <fstream>

#include "test_util.h"
#include "weir/plugin.h"

namespace weir::testing {
namespace {

std::string Broken(const std::string& name) {
  return std::string(WEIR_BROKEN_PLUGIN_DIR) + "/weir_" + name + ".so";
}
std::string IoPlugin() { return std::string(WEIR_PLUGIN_DIR) + "/weir_io.so"; }

TEST(PluginLoader, LoadsAPluginAndRecordsWhereEachOpCameFrom) {
  OpRegistry registry;
  PluginLoader loader(&registry);
  ASSERT_TRUE(loader.Load(IoPlugin()).ok());
  const OpEntry* head = registry.Find("io.Head");
  ASSERT_NE(head, nullptr);
  EXPECT_EQ(head->def.plugin(), std::filesystem::canonical(IoPlugin()).string());
  ASSERT_EQ(loader.loaded().size(), 1u);
  EXPECT_EQ(loader.loaded()[0].name, "io");
  EXPECT_EQ(loader.loaded()[0].abi_major, WEIR_PLUGIN_ABI_MAJOR);
  // Loading the same file again is a no-op, not a duplicate.
  EXPECT_TRUE(loader.Load(IoPlugin()).ok());
  EXPECT_EQ(loader.loaded().size(), 1u);
}

TEST(PluginLoader, MissingFile) {
  OpRegistry registry;
  PluginLoader loader(&registry);
  Status s = loader.Load("/nonexistent/weir_nothing.so");
  EXPECT_EQ(s.code(), StatusCode::kNotFound);
  EXPECT_EQ(s.ToString(), "plugin /nonexistent/weir_nothing.so not found");
}

TEST(PluginLoader, NotASharedLibrary) {
  OpRegistry registry;
  PluginLoader loader(&registry);
  std::string path = ::testing::TempDir() + "/weir_text.so";
  std::ofstream(path) << "not an ELF file";
  Status s = loader.Load(path);
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.ToString().find("plugin " + std::filesystem::canonical(path).string() +
                              ": cannot be loaded as a shared library"),
            std::string::npos)
      << s.ToString();
}

TEST(PluginLoader, NoDescriptor) {
  OpRegistry registry;
  PluginLoader loader(&registry);
  Status s = loader.Load(Broken("no_descriptor"));
  EXPECT_EQ(s.ToString(), "plugin " + Broken("no_descriptor") +
                              ": exports no weir plugin descriptor (alias 'weir_plugin'); a plugin "
                              "declares one with WEIR_PLUGIN(name, version, RegisterFunction)");
}

TEST(PluginLoader, AbiMajorMismatchIsRefusedBeforeAnythingIsCalled) {
  OpRegistry registry;
  PluginLoader loader(&registry);
  Status s = loader.Load(Broken("bad_abi"));
  std::string host =
      std::to_string(WEIR_PLUGIN_ABI_MAJOR) + "." + std::to_string(WEIR_PLUGIN_ABI_MINOR);
  std::string plugin = std::to_string(WEIR_PLUGIN_ABI_MAJOR + 1) + ".0";
  EXPECT_EQ(s.ToString(), "plugin " + Broken("bad_abi") + ": built for weir plugin ABI " + plugin +
                              ", this weir has ABI " + host +
                              "; rebuild the plugin against this weir's SDK");
  EXPECT_TRUE(registry.OpNames().empty());
}

TEST(PluginLoader, AnotherStandardLibraryAbiIsRefusedBeforeAnythingIsCalled) {
  OpRegistry registry;
  PluginLoader loader(&registry);
  Status s = loader.Load(Broken("bad_stdlib"));
  EXPECT_EQ(s.ToString(), "plugin " + Broken("bad_stdlib") +
                              ": built with _GLIBCXX_USE_CXX11_ABI=" +
                              std::to_string(1 - _GLIBCXX_USE_CXX11_ABI) + ", this weir with " +
                              std::to_string(_GLIBCXX_USE_CXX11_ABI) +
                              "; rebuild the plugin with the same standard library ABI");
  EXPECT_TRUE(registry.OpNames().empty());
}

TEST(PluginLoader, DuplicateOpNamesBothPluginsAndRegistersNothing) {
  OpRegistry registry;
  PluginLoader loader(&registry);
  ASSERT_TRUE(loader.Load(IoPlugin()).ok());
  size_t before = registry.OpNames().size();
  Status s = loader.Load(Broken("dup_op"));
  ASSERT_FALSE(s.ok());
  std::string text = s.ToString();
  EXPECT_NE(text.find("plugin " + Broken("dup_op") + " registers nothing because:"),
            std::string::npos)
      << text;
  EXPECT_NE(text.find("op 'io.Head' is already registered by plugin " +
                      std::filesystem::canonical(IoPlugin()).string()),
            std::string::npos)
      << text;
  EXPECT_EQ(registry.OpNames().size(), before);
  EXPECT_EQ(registry.Find("test.Unique"), nullptr);
}

TEST(PluginLoader, RegistrationThatThrowsRegistersNothing) {
  OpRegistry registry;
  PluginLoader loader(&registry);
  Status s = loader.Load(Broken("throws"));
  EXPECT_EQ(s.ToString(), "plugin " + Broken("throws") +
                              ": registration failed: registration threw: the plugin's "
                              "registration blew up");
  EXPECT_EQ(registry.Find("test.Half"), nullptr);
}

TEST(PluginLoader, DeclarationMistakesAreReported) {
  OpRegistry registry;
  PluginLoader loader(&registry);
  Status s = loader.Load(Broken("bad_schema"));
  std::string text = s.ToString();
  EXPECT_NE(text.find("op name 'NoNamespace' must be namespaced"), std::string::npos) << text;
  EXPECT_NE(text.find("op 'test.BadDefault': default of attr 'k' expects int >= 1, got 0"),
            std::string::npos)
      << text;
  EXPECT_NE(text.find("op 'test.TpuOnly': kernel for unknown device 'tpu' (weir runs kernels on: "
                      "cpu, cuda)"),
            std::string::npos)
      << text;
  EXPECT_TRUE(registry.OpNames().empty());
}

TEST(PluginLoader, SearchPathFindsPluginsByName) {
  OpRegistry registry;
  PluginLoader loader(&registry);
  setenv("WEIR_PLUGIN_PATH", WEIR_TEST_PLUGIN_DIR, 1);
  Status s = loader.LoadByName("test_ops", "/");
  unsetenv("WEIR_PLUGIN_PATH");
  ASSERT_TRUE(s.ok()) << s.ToString();
  EXPECT_NE(registry.Find("test.Count"), nullptr);
  Status missing = loader.LoadByName("no_such_plugin", "/");
  EXPECT_EQ(missing.code(), StatusCode::kNotFound);
  EXPECT_NE(missing.message().find("plugin 'no_such_plugin' not found"), std::string::npos);
}

TEST(PluginLoader, TheDefaultFolderIsBesideTheCoreLibrary) {
  auto dirs = PluginLoader::SearchPath();
  ASSERT_FALSE(dirs.empty());
  EXPECT_EQ(std::filesystem::canonical(dirs[0]), std::filesystem::canonical(WEIR_PLUGIN_DIR));
}

}  // namespace
}  // namespace weir::testing
