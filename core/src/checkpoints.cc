#include "weir/checkpoints.h"

#include <algorithm>
#include <boost/crc.hpp>
#include <cstdio>
#include <fstream>
#include <map>
#include <vector>

#include "weir/atomic_file.h"
#include "weir/json.h"

namespace weir {
namespace fs = std::filesystem;

namespace {

struct FileSum {
  uint64_t bytes = 0;
  std::string crc32;
};

StatusOr<FileSum> Sum(const fs::path& file) {
  std::ifstream in(file, std::ios::binary);
  if (!in) return NotFound("cannot read " + file.string());
  boost::crc_32_type crc;
  std::vector<char> buffer(1 << 20);
  FileSum sum;
  while (in) {
    in.read(buffer.data(), static_cast<std::streamsize>(buffer.size()));
    std::streamsize got = in.gcount();
    crc.process_bytes(buffer.data(), static_cast<size_t>(got));
    sum.bytes += static_cast<uint64_t>(got);
  }
  if (in.bad()) return DataLoss("reading " + file.string() + " failed");
  char hex[9];
  std::snprintf(hex, sizeof(hex), "%08x", static_cast<unsigned>(crc.checksum()));
  sum.crc32 = hex;
  return sum;
}

}  // namespace

Status WriteChecksums(const fs::path& dir) {
  std::map<std::string, FileSum> sums;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(dir, ec)) {
    std::string name = e.path().filename().string();
    if (!e.is_regular_file() || name == kChecksumsFile) continue;
    WEIR_ASSIGN_OR_RETURN(sums[name], Sum(e.path()));
  }
  if (ec) return Unavailable("cannot list " + dir.string() + ": " + ec.message());
  std::string json = "{\"algorithm\": \"crc32\", \"files\": {";
  bool first = true;
  for (const auto& [name, sum] : sums) {
    json += std::string(first ? "" : ",") + "\n  " + JsonQuote(name) +
            ": {\"bytes\": " + std::to_string(sum.bytes) + ", \"crc32\": \"" + sum.crc32 + "\"}";
    first = false;
  }
  return WriteFileAtomically(dir / kChecksumsFile, json + "\n}}\n");
}

Status VerifyChecksums(const fs::path& dir) {
  fs::path manifest = dir / kChecksumsFile;
  std::error_code ec;
  if (!fs::exists(manifest, ec))
    return DataLoss(manifest.string() +
                    " is missing: the checkpoint is incomplete or was not written by weir");
  WEIR_ASSIGN_OR_RETURN(auto root, ReadJsonFile(manifest));
  auto files = root.fields().find("files");
  if (files == root.fields().end() || !files->second.has_struct_value())
    return DataLoss(manifest.string() + " has no object 'files'");
  for (const auto& [name, entry] : files->second.struct_value().fields()) {
    const auto& f = entry.struct_value().fields();
    auto bytes = f.find("bytes");
    auto crc = f.find("crc32");
    if (bytes == f.end() || crc == f.end() || !bytes->second.has_number_value() ||
        !crc->second.has_string_value())
      return DataLoss(manifest.string() + ": entry '" + name + "' needs 'bytes' and 'crc32'");
    if (name.empty() || name.find('/') != std::string::npos || name == "." || name == "..")
      return DataLoss(manifest.string() + ": '" + name + "' is not a file name in the folder");
    fs::path file = dir / name;
    if (!fs::is_regular_file(file, ec)) return DataLoss(file.string() + " is missing");
    WEIR_ASSIGN_OR_RETURN(FileSum sum, Sum(file));
    auto want_bytes = static_cast<uint64_t>(bytes->second.number_value());
    if (sum.bytes != want_bytes)
      return DataLoss(file.string() + " has " + std::to_string(sum.bytes) + " bytes, " +
                      manifest.filename().string() + " says " + std::to_string(want_bytes));
    if (sum.crc32 != crc->second.string_value())
      return DataLoss(file.string() + " is damaged: its CRC-32 is " + sum.crc32 + ", " +
                      manifest.filename().string() + " says " + crc->second.string_value());
  }
  return Status();
}

std::vector<fs::path> CheckpointFolders(const fs::path& dir) {
  std::vector<fs::path> found;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(dir, ec)) {
    std::string name = e.path().filename().string();
    if (e.is_directory() && name.rfind("step-", 0) == 0 && name.find(".tmp-") == std::string::npos)
      found.push_back(e.path());
  }
  std::sort(found.begin(), found.end());
  return found;
}

StatusOr<fs::path> FindResumeCheckpoint(const fs::path& dir, std::vector<std::string>* skipped) {
  std::error_code ec;
  if (fs::exists(dir / "trainer_state.json", ec)) return dir;
  std::vector<fs::path> found = CheckpointFolders(dir);
  for (const auto& e : fs::directory_iterator(dir, ec)) {
    if (!e.is_directory()) continue;
    std::vector<fs::path> inside = CheckpointFolders(e.path());
    found.insert(found.end(), inside.begin(), inside.end());
  }
  if (found.empty()) return fs::path();
  std::sort(found.begin(), found.end(),
            [](const fs::path& a, const fs::path& b) { return a.filename() < b.filename(); });
  std::string message = "no usable checkpoint under " + dir.string() + ":";
  for (auto it = found.rbegin(); it != found.rend(); ++it) {
    Status ok = VerifyChecksums(*it);
    if (ok.ok()) return *it;
    message += "\n  " + ok.message();
    if (skipped != nullptr) skipped->push_back(ok.message());
  }
  return DataLoss(message);
}

}  // namespace weir
