#include "weir/file_list.h"

#include <algorithm>

namespace weir {
namespace fs = std::filesystem;

StatusOr<std::vector<fs::path>> ListInputFiles(const fs::path& path, const std::string& suffix) {
  std::error_code ec;
  if (fs::is_regular_file(path, ec)) return std::vector<fs::path>{path};
  if (!fs::is_directory(path, ec)) return NotFound("no file or folder " + path.string());
  std::vector<fs::path> files;
  for (auto it = fs::recursive_directory_iterator(path, ec); !ec && it != fs::end(it);
       it.increment(ec)) {
    if (!it->is_regular_file()) continue;
    std::string name = it->path().filename().string();
    if (!suffix.empty() && (name.size() < suffix.size() ||
                            name.compare(name.size() - suffix.size(), suffix.size(), suffix) != 0))
      continue;
    files.push_back(it->path());
  }
  if (ec) return Unavailable("cannot list " + path.string() + ": " + ec.message());
  std::sort(files.begin(), files.end());
  if (files.empty()) {
    return NotFound("folder " + path.string() + " holds no files" +
                    (suffix.empty() ? "" : " ending in '" + suffix + "'"));
  }
  return files;
}

}  // namespace weir
