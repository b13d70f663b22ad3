// Checkpoint folders. Checksums of the files in a folder (a checkpoint), kept in
// `<folder>/checksums.json`:
// {"algorithm": "crc32", "files": {"model.safetensors": {"bytes": N, "crc32": "1a2b3c4d"}, ...}}.
// Written last, so a folder whose manifest verifies is complete and undamaged; a reader that
// verifies first never trains on a torn or bit-rotted checkpoint.
#pragma once

#include <filesystem>
#include <string>
#include <vector>

#include "weir/status.h"

namespace weir {

inline constexpr const char* kChecksumsFile = "checksums.json";

// Writes the manifest atomically for every regular file in `dir` (not in sub-folders).
Status WriteChecksums(const std::filesystem::path& dir);

// Checks every file the manifest lists: present, of the listed size and CRC. Errors name the
// manifest and the first file that differs; a missing manifest is an error.
Status VerifyChecksums(const std::filesystem::path& dir);

// The complete checkpoint folders directly in `dir`, oldest first: `step-N` (zero-padded, so
// names sort by step), not the `.tmp-PID` folders of checkpoints still being written.
std::vector<std::filesystem::path> CheckpointFolders(const std::filesystem::path& dir);

// The checkpoint to resume from given `dir`: `dir` itself when it holds trainer_state.json;
// otherwise the newest `step-N` folder (directly in `dir` or one level down, as in
// `<run>/checkpoints/step-000100`) whose checksums verify, each newer damaged or incomplete one
// reported in `skipped`; an empty path when `dir` holds no checkpoint at all (a run folder of a
// graph without a trainer). An error when every checkpoint found is damaged.
StatusOr<std::filesystem::path> FindResumeCheckpoint(const std::filesystem::path& dir,
                                                     std::vector<std::string>* skipped);

}  // namespace weir
