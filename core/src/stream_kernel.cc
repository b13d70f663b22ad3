#include "weir/stream_kernel.h"

namespace weir {

const AttrValue& NodeContext::attr(const std::string& name) const {
  auto it = attrs_.find(name);
  CHECK(it != attrs_.end()) << "op '" << op_ << "' asked for attr '" << name
                            << "' that its schema does not declare";
  return it->second;
}

std::filesystem::path NodeContext::InputPath(const std::string& path) const {
  std::filesystem::path p(path);
  return (p.is_absolute() ? p : graph_dir_ / p).lexically_normal();
}

std::filesystem::path NodeContext::OutputPath(const std::string& path) const {
  std::filesystem::path p(path);
  return (p.is_absolute() ? p : out_dir_ / p).lexically_normal();
}

}  // namespace weir
