#include "weir/atomic_file.h"

#include <fcntl.h>
#include <unistd.h>

#include <cstring>
#include <memory>

namespace weir {
namespace fs = std::filesystem;

StatusOr<std::unique_ptr<AtomicFileWriter>> AtomicFileWriter::Open(const fs::path& target) {
  std::unique_ptr<AtomicFileWriter> w(new AtomicFileWriter());
  w->target_ = target;
  w->temp_ = target;
  w->temp_ += ".tmp." + std::to_string(::getpid());
  std::error_code ec;
  if (target.has_parent_path()) fs::create_directories(target.parent_path(), ec);
  if (ec)
    return Unavailable("cannot create folder " + target.parent_path().string() + ": " +
                       ec.message());
  w->out_.open(w->temp_, std::ios::binary | std::ios::trunc);
  if (!w->out_)
    return Unavailable("cannot write " + w->temp_.string() + ": " + std::strerror(errno));
  return w;
}

AtomicFileWriter::~AtomicFileWriter() {
  if (committed_) return;
  out_.close();
  std::error_code ec;
  fs::remove(temp_, ec);
}

Status AtomicFileWriter::Commit() {
  out_.flush();
  if (!out_) return Unavailable("writing " + temp_.string() + " failed");
  out_.close();
  int fd = ::open(temp_.c_str(), O_RDONLY);
  if (fd >= 0) {
    ::fsync(fd);
    ::close(fd);
  }
  std::error_code ec;
  fs::rename(temp_, target_, ec);
  if (ec)
    return Unavailable("cannot rename " + temp_.string() + " to " + target_.string() + ": " +
                       ec.message());
  committed_ = true;
  return Status();
}

Status WriteFileAtomically(const fs::path& target, const std::string& content) {
  WEIR_ASSIGN_OR_RETURN(auto writer, AtomicFileWriter::Open(target));
  writer->stream() << content;
  return writer->Commit();
}

}  // namespace weir
