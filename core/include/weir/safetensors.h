// safetensors files (the Hugging Face tensor format): an 8-byte little-endian header length, a
// JSON header {name: {dtype, shape, data_offsets}, "__metadata__": {...}}, then the raw data.
//
// Reading maps the file and hands out tensors lazily, one per Get, so a large checkpoint is never
// read whole. Every size in the header is checked against the file before it is used. Writing is
// atomic (temporary file, then rename). Large sets are split into shards with the Hugging Face
// "<prefix>.safetensors.index.json" weight map.
#pragma once

#include <filesystem>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "weir/status.h"
#include "weir/tensor.h"

namespace weir {

class SafetensorsFile {
 public:
  static StatusOr<std::unique_ptr<SafetensorsFile>> Open(const std::filesystem::path& path);

  const std::vector<std::string>& names() const { return names_; }
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  bool Has(const std::string& name) const { return entries_.count(name) > 0; }
  // A read-only tensor over the mapped file.
  StatusOr<Tensor> Get(const std::string& name) const;

 private:
  struct Entry {
    DataType dtype;
    Shape shape;
    size_t begin, end;  // within the data section
  };
  std::filesystem::path path_;
  size_t data_start_ = 0;
  std::vector<std::string> names_;
  std::map<std::string, Entry> entries_;
  std::map<std::string, std::string> metadata_;
};

// Writes `tensors` (in the order given) to one file, atomically.
Status WriteSafetensors(const std::filesystem::path& path,
                        const std::vector<std::pair<std::string, Tensor>>& tensors,
                        const std::map<std::string, std::string>& metadata = {});

// Writes `<dir>/<prefix>.safetensors`, or, past `max_shard_bytes`, shards
// `<prefix>-00001-of-0000N.safetensors` and `<prefix>.safetensors.index.json`.
Status WriteSafetensorsSharded(const std::filesystem::path& dir, const std::string& prefix,
                               const std::vector<std::pair<std::string, Tensor>>& tensors,
                               int64_t max_shard_bytes,
                               const std::map<std::string, std::string>& metadata = {});

// Reads every tensor written by WriteSafetensorsSharded (sharded or not), as mapped tensors.
StatusOr<std::map<std::string, Tensor>> ReadSafetensorsSharded(const std::filesystem::path& dir,
                                                               const std::string& prefix);

const char* SafetensorsDtypeName(DataType t);

}  // namespace weir
