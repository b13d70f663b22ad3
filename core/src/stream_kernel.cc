#include "weir/stream_kernel.h"

namespace weir {

std::filesystem::path NodeContext::InputPath(const std::string& path) const {
  std::filesystem::path p(path);
  return (p.is_absolute() ? p : env_->input_dir / p).lexically_normal();
}

std::filesystem::path NodeContext::OutputPath(const std::string& path) const {
  std::filesystem::path p(path);
  return (p.is_absolute() ? p : env_->out_dir / p).lexically_normal();
}

}  // namespace weir
