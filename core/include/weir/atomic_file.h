// Writes a file so that readers see either the old file or the complete new one, never a part:
// the data goes to a temporary file beside the target, which Commit() flushes to disk and renames
// over the target. A writer destroyed without Commit() removes its temporary file, so a failed
// run leaves earlier outputs intact.
#pragma once

#include <filesystem>
#include <fstream>
#include <string>

#include "weir/status.h"

namespace weir {

class AtomicFileWriter {
 public:
  // Creates the parent folder when missing.
  static StatusOr<std::unique_ptr<AtomicFileWriter>> Open(const std::filesystem::path& target);
  ~AtomicFileWriter();

  std::ostream& stream() { return out_; }
  const std::filesystem::path& target() const { return target_; }
  Status Commit();

 private:
  AtomicFileWriter() = default;
  std::filesystem::path target_;
  std::filesystem::path temp_;
  std::ofstream out_;
  bool committed_ = false;
};

// Writes `content` to `target` atomically.
Status WriteFileAtomically(const std::filesystem::path& target, const std::string& content);

}  // namespace weir
