// Input files named by one path: the file itself, or every regular file under a folder
// (recursively, sorted by path, optionally only those ending in `suffix`).
#pragma once

#include <filesystem>
#include <string>
#include <vector>

#include "weir/status.h"

namespace weir {

StatusOr<std::vector<std::filesystem::path>> ListInputFiles(const std::filesystem::path& path,
                                                            const std::string& suffix = "");

}  // namespace weir
