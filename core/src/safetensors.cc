#include "weir/safetensors.h"

#include <cstring>
#include <fstream>
#include <optional>
#include <set>
#include <sstream>

#include "weir/atomic_file.h"
#include "weir/json.h"

namespace weir {
namespace fs = std::filesystem;

namespace {

// Headers past this size are refused: real ones are a few megabytes at most.
constexpr uint64_t kMaxHeaderBytes = 100 << 20;

struct DtypeName {
  DataType type;
  const char* name;
};
constexpr DtypeName kDtypes[] = {
    {DT_F64, "F64"},   {DT_F32, "F32"},        {DT_F16, "F16"},        {DT_BF16, "BF16"},
    {DT_I64, "I64"},   {DT_I32, "I32"},        {DT_I8, "I8"},          {DT_U8, "U8"},
    {DT_BOOL, "BOOL"}, {DT_F8E4M3, "F8_E4M3"}, {DT_F8E5M2, "F8_E5M2"},
};

std::optional<DataType> ParseDtype(const std::string& s) {
  for (const auto& d : kDtypes)
    if (s == d.name) return d.type;
  return std::nullopt;
}

std::string HeaderJson(const std::vector<std::pair<std::string, Tensor>>& tensors,
                       const std::map<std::string, std::string>& metadata) {
  std::string json = "{";
  if (!metadata.empty()) {
    json += "\"__metadata__\":{";
    bool first = true;
    for (const auto& [k, v] : metadata) {
      json += (first ? "" : ",") + JsonQuote(k) + ":" + JsonQuote(v);
      first = false;
    }
    json += "}";
  }
  size_t offset = 0;
  for (size_t i = 0; i < tensors.size(); ++i) {
    const auto& [name, t] = tensors[i];
    if (json.size() > 1) json += ",";
    json += JsonQuote(name) + ":{\"dtype\":\"" + SafetensorsDtypeName(t.dtype()) + "\",\"shape\":[";
    for (int d = 0; d < t.rank(); ++d) json += (d ? "," : "") + std::to_string(t.dim(d));
    json += "],\"data_offsets\":[" + std::to_string(offset) + "," +
            std::to_string(offset + t.nbytes()) + "]}";
    offset += t.nbytes();
  }
  json += "}";
  // The data section starts 8-byte aligned.
  while ((json.size() + 8) % 8 != 0) json += ' ';
  return json;
}

}  // namespace

const char* SafetensorsDtypeName(DataType t) {
  for (const auto& d : kDtypes)
    if (d.type == t) return d.name;
  return "?";
}

StatusOr<std::unique_ptr<SafetensorsFile>> SafetensorsFile::Open(const fs::path& path) {
  auto bad = [&](const std::string& why) { return InvalidArgument(path.string() + ": " + why); };
  std::ifstream in(path, std::ios::binary);
  if (!in) return NotFound("cannot read " + path.string());
  std::error_code ec;
  uint64_t file_size = fs::file_size(path, ec);
  unsigned char len_bytes[8];
  if (!in.read(reinterpret_cast<char*>(len_bytes), 8)) return bad("too short to be safetensors");
  uint64_t header_len = 0;
  for (int i = 7; i >= 0; --i) header_len = (header_len << 8) | len_bytes[i];
  if (header_len > kMaxHeaderBytes || header_len > file_size - 8)
    return bad("header length " + std::to_string(header_len) + " does not fit the " +
               std::to_string(file_size) + "-byte file");
  std::string header(header_len, '\0');
  if (!in.read(header.data(), static_cast<std::streamsize>(header_len)))
    return bad("truncated header");
  auto parsed = ParseJsonObject(header);
  if (!parsed.ok()) return bad("header " + parsed.status().message());
  auto file = std::unique_ptr<SafetensorsFile>(new SafetensorsFile());
  file->path_ = path;
  file->data_start_ = 8 + header_len;
  uint64_t data_size = file_size - file->data_start_;
  std::vector<std::pair<size_t, std::string>> by_offset;
  for (const auto& [name, value] : parsed->fields()) {
    if (name == "__metadata__") {
      for (const auto& [k, v] : value.struct_value().fields())
        file->metadata_[k] = v.string_value();
      continue;
    }
    const auto& f = value.struct_value().fields();
    auto field = [&](const char* k) -> const google::protobuf::Value* {
      auto it = f.find(k);
      return it == f.end() ? nullptr : &it->second;
    };
    const auto *dtype = field("dtype"), *shape = field("shape"), *offsets = field("data_offsets");
    if (!dtype || !shape || !offsets || offsets->list_value().values_size() != 2)
      return bad("tensor '" + name + "' needs dtype, shape and two data_offsets");
    auto dt = ParseDtype(dtype->string_value());
    if (!dt) return bad("tensor '" + name + "' has unknown dtype '" + dtype->string_value() + "'");
    Entry e;
    e.dtype = *dt;
    uint64_t elements = 1;
    for (const auto& d : shape->list_value().values()) {
      double v = d.number_value();
      // The range first: converting a double past int64's range is undefined.
      if (v < 0 || v > 1e15 || v != static_cast<double>(static_cast<int64_t>(v)))
        return bad("tensor '" + name + "' has the dimension " + JsonValueText(d) +
                   "; a dimension is a whole number from 0 to 10^15");
      e.shape.push_back(static_cast<int64_t>(v));
      if (__builtin_mul_overflow(elements, static_cast<uint64_t>(v), &elements))
        return bad("tensor '" + name + "' is too large");
    }
    double b = offsets->list_value().values(0).number_value();
    double en = offsets->list_value().values(1).number_value();
    if (b < 0 || en < b || en > static_cast<double>(data_size))
      return bad("tensor '" + name + "' lies outside the data (" + std::to_string(data_size) +
                 " bytes)");
    e.begin = static_cast<size_t>(b);
    e.end = static_cast<size_t>(en);
    uint64_t bytes = 0;
    if (__builtin_mul_overflow(elements, DataTypeSize(e.dtype), &bytes))
      return bad("tensor '" + name + "' is too large");
    if (e.end - e.begin != bytes) {
      return bad("tensor '" + name + "' holds " + std::to_string(e.end - e.begin) +
                 " bytes, its shape needs " + std::to_string(bytes));
    }
    by_offset.emplace_back(e.begin, name);
    file->entries_[name] = e;
  }
  std::sort(by_offset.begin(), by_offset.end());
  for (const auto& [offset, name] : by_offset) file->names_.push_back(name);
  return file;
}

StatusOr<Tensor> SafetensorsFile::Get(const std::string& name) const {
  auto it = entries_.find(name);
  if (it == entries_.end()) return NotFound(path_.string() + " has no tensor '" + name + "'");
  const Entry& e = it->second;
  WEIR_ASSIGN_OR_RETURN(auto storage,
                        Storage::MapFile(path_, data_start_ + e.begin, e.end - e.begin));
  return Tensor::FromStorage(storage, e.dtype, e.shape);
}

Status WriteSafetensors(const fs::path& path,
                        const std::vector<std::pair<std::string, Tensor>>& tensors,
                        const std::map<std::string, std::string>& metadata) {
  std::string header = HeaderJson(tensors, metadata);
  WEIR_ASSIGN_OR_RETURN(auto writer, AtomicFileWriter::Open(path));
  std::ostream& out = writer->stream();
  uint64_t n = header.size();
  for (int i = 0; i < 8; ++i) out.put(static_cast<char>((n >> (8 * i)) & 0xff));
  out << header;
  for (const auto& [name, t] : tensors) {
    Tensor dense = t.Contiguous();
    out.write(static_cast<const char*>(dense.raw_data()),
              static_cast<std::streamsize>(dense.nbytes()));
  }
  return writer->Commit();
}

Status WriteSafetensorsSharded(const fs::path& dir, const std::string& prefix,
                               const std::vector<std::pair<std::string, Tensor>>& tensors,
                               int64_t max_shard_bytes,
                               const std::map<std::string, std::string>& metadata) {
  int64_t total = 0;
  for (const auto& [name, t] : tensors) total += static_cast<int64_t>(t.nbytes());
  if (total <= max_shard_bytes)
    return WriteSafetensors(dir / (prefix + ".safetensors"), tensors, metadata);
  std::vector<std::vector<std::pair<std::string, Tensor>>> shards(1);
  int64_t in_shard = 0;
  for (const auto& entry : tensors) {
    int64_t bytes = static_cast<int64_t>(entry.second.nbytes());
    if (in_shard > 0 && in_shard + bytes > max_shard_bytes) {
      shards.emplace_back();
      in_shard = 0;
    }
    shards.back().push_back(entry);
    in_shard += bytes;
  }
  char count[24];
  std::snprintf(count, sizeof(count), "%05zu", shards.size());
  std::string index =
      "{\"metadata\":{\"total_size\":" + std::to_string(total) + "},\"weight_map\":{";
  bool first = true;
  for (size_t s = 0; s < shards.size(); ++s) {
    char number[24];
    std::snprintf(number, sizeof(number), "%05zu", s + 1);
    std::string file = prefix + "-" + number + "-of-" + count + ".safetensors";
    WEIR_RETURN_IF_ERROR(WriteSafetensors(dir / file, shards[s], metadata));
    for (const auto& [name, t] : shards[s]) {
      index += (first ? "" : ",") + JsonQuote(name) + ":" + JsonQuote(file);
      first = false;
    }
  }
  index += "}}\n";
  return WriteFileAtomically(dir / (prefix + ".safetensors.index.json"), index);
}

StatusOr<std::map<std::string, Tensor>> ReadSafetensorsSharded(const fs::path& dir,
                                                               const std::string& prefix) {
  std::map<std::string, Tensor> out;
  fs::path single = dir / (prefix + ".safetensors");
  fs::path index = dir / (prefix + ".safetensors.index.json");
  std::vector<fs::path> files;
  std::error_code ec;
  if (fs::exists(single, ec)) {
    files.push_back(single);
  } else if (fs::exists(index, ec)) {
    WEIR_ASSIGN_OR_RETURN(auto parsed, ReadJsonFile(index));
    std::set<std::string> names;
    auto map = parsed.fields().find("weight_map");
    if (map == parsed.fields().end()) return InvalidArgument(index.string() + " has no weight_map");
    for (const auto& [tensor, file] : map->second.struct_value().fields())
      names.insert(file.string_value());
    for (const std::string& f : names) {
      if (f.find('/') != std::string::npos)
        return InvalidArgument(index.string() + " names a file outside its folder: " + f);
      files.push_back(dir / f);
    }
  } else {
    return NotFound("no " + single.filename().string() + " or " + index.filename().string() +
                    " in " + dir.string());
  }
  for (const fs::path& f : files) {
    WEIR_ASSIGN_OR_RETURN(auto file, SafetensorsFile::Open(f));
    for (const std::string& name : file->names()) {
      WEIR_ASSIGN_OR_RETURN(Tensor t, file->Get(name));
      out[name] = t;
    }
  }
  return out;
}

}  // namespace weir
