// safetensors files: the header, then every tensor read through the mapping, and the same file
// through the (single-file) checkpoint reader.
#include "fuzz_util.h"
#include "weir/safetensors.h"

namespace {

// Reads every byte of `t`, so that a tensor reaching past the mapping is a sanitizer report.
unsigned char Checksum(const weir::Tensor& t) {
  const auto* bytes = static_cast<const unsigned char*>(t.raw_data());
  unsigned char sum = 0;
  for (size_t i = 0; i < t.nbytes(); ++i) sum = static_cast<unsigned char>(sum ^ bytes[i]);
  return sum;
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  weir::fuzz::Init();
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size > weir::fuzz::kMaxInputBytes) return -1;
  auto path = weir::fuzz::WriteScratchFile("model.safetensors", data, size);
  volatile unsigned char sink = 0;
  if (auto file = weir::SafetensorsFile::Open(path); file.ok()) {
    for (const std::string& name : (*file)->names()) {
      auto t = (*file)->Get(name);
      if (t.ok()) sink = sink ^ Checksum(*t);
    }
  }
  if (auto all = weir::ReadSafetensorsSharded(path.parent_path(), "model"); all.ok()) {
    for (const auto& [name, t] : *all) sink = sink ^ Checksum(t);
  }
  return 0;
}
