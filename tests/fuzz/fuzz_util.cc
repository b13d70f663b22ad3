#include "fuzz_util.h"

#include <glog/logging.h>
#include <google/protobuf/stubs/logging.h>
#include <unistd.h>

#include <cstdlib>
#include <fstream>
#include <iostream>

#include "weir/graph.h"
#include "weir/op_registry.h"
#include "weir/plugin_loader.h"

namespace weir::fuzz {
namespace fs = std::filesystem;

namespace {

fs::path MakeScratchDir() {
  const char* tmp = std::getenv("TMPDIR");
  fs::path base = tmp != nullptr && *tmp != '\0' ? fs::path(tmp)
                  : fs::is_directory("/dev/shm") ? fs::path("/dev/shm")
                                                 : fs::path("/tmp");
  fs::path dir = base / ("weir-fuzz-" + std::to_string(getpid()));
  fs::create_directories(dir);
  return dir;
}

void RemoveScratchDir() {
  std::error_code ec;
  fs::remove_all(ScratchDir(), ec);
}

// Drops what a source emits.
class NullEmitter : public Emitter {
 public:
  void Emit(int, Batch) override {}
};

}  // namespace

void Init() {
  // Every input is expected to fail somewhere; thousands of error lines a second help no one.
  FLAGS_minloglevel = google::GLOG_FATAL;
  google::protobuf::SetLogHandler(nullptr);
  ScratchDir();
  std::atexit(RemoveScratchDir);
}

const fs::path& ScratchDir() {
  static const fs::path dir = MakeScratchDir();
  return dir;
}

fs::path WriteScratchFile(const std::string& name, const uint8_t* data, size_t size) {
  fs::path path = ScratchDir() / name;
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(reinterpret_cast<const char*>(data), static_cast<std::streamsize>(size));
  return path;
}

void LoadDefaultPlugins() {
  static const bool loaded = [] {
    Status s = PluginLoader::Global().LoadDefaults();
    if (!s.ok()) {
      std::cerr << "fuzz: the default plugins do not load: " << s.ToString() << "\n";
      std::exit(2);
    }
    return true;
  }();
  (void)loaded;
}

struct Source::State {
  Graph graph;
  RunEnv env;
  std::unique_ptr<NodeContext> ctx;
  StreamKernelFactory factory;
};

Source::Source(const std::string& node_text) : state_(std::make_shared<State>()) {
  LoadDefaultPlugins();
  fs::path file = ScratchDir() / "source.pbtxt";
  std::ofstream(file) << node_text << "\n";
  auto graph = LoadGraph(file);
  Status s = graph.ok() ? ResolveGraph(*graph, OpRegistry::Global()) : graph.status();
  if (!s.ok()) {
    std::cerr << "fuzz: the harness's source node does not resolve: " << s.ToString() << "\n";
    std::exit(2);
  }
  state_->graph = std::move(graph).value();
  const Node& node = state_->graph.nodes.at(0);
  state_->env.graph = &state_->graph;
  state_->env.ops = &OpRegistry::Global();
  state_->env.input_dir = ScratchDir();
  state_->env.out_dir = ScratchDir() / "out";
  state_->ctx = std::make_unique<NodeContext>(
      node.name, node.op, std::map<std::string, AttrValue>(node.attrs.begin(), node.attrs.end()),
      &state_->env);
  state_->factory = node.entry->stream_factory;
}

StatusOr<std::unique_ptr<StreamKernel>> Source::Open() const {
  return state_->factory(*state_->ctx);
}

Status Source::Drain(int max_items) const {
  WEIR_ASSIGN_OR_RETURN(std::unique_ptr<StreamKernel> kernel, Open());
  NullEmitter out;
  for (int i = 0; i < max_items; ++i) {
    WEIR_ASSIGN_OR_RETURN(bool more, kernel->Produce(out));
    if (!more) break;
  }
  return kernel->Finish(out);
}

void CheckGraph(const fs::path& file) {
  auto graph = LoadGraph(file);
  if (!graph.ok()) return;
  // Unlike `weir check`, the graph's own `plugin` entries are not loaded: they name shared
  // libraries, and running whatever library an input names is not parsing.
  if (!ResolveGraph(*graph, OpRegistry::Global()).ok()) return;
  GraphDefToText(ToResolvedGraphDef(*graph));
}

}  // namespace weir::fuzz
