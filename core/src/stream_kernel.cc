#include "weir/stream_kernel.h"

#include "weir/json.h"

namespace weir {

std::filesystem::path NodeContext::InputPath(const std::string& path) const {
  std::filesystem::path p(path);
  return (p.is_absolute() ? p : env_->input_dir / p).lexically_normal();
}

std::filesystem::path NodeContext::OutputPath(const std::string& path) const {
  std::filesystem::path p(path);
  return (p.is_absolute() ? p : env_->out_dir / p).lexically_normal();
}

StatusOr<int64_t> NodeContext::ResumedDataPosition() const {
  // A run folder without a checkpoint (killed before its first) resumes from the start.
  if (resume_dir().empty() || !std::filesystem::exists(resume_dir() / "trainer_state.json"))
    return 0;
  auto state = ReadJsonFile(resume_dir() / "trainer_state.json");
  if (!state.ok()) return Error("resume: " + state.status().message());
  auto it = state->fields().find("data_position");
  return it == state->fields().end() ? 0 : static_cast<int64_t>(it->second.number_value());
}

}  // namespace weir
