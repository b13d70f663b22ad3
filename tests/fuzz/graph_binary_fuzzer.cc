// Binary graph files (.pb, serialized GraphDef) through `weir check`'s validation against the
// default plugins.
#include "fuzz_util.h"

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  weir::fuzz::Init();
  weir::fuzz::LoadDefaultPlugins();
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size > weir::fuzz::kMaxInputBytes) return -1;
  weir::fuzz::CheckGraph(weir::fuzz::WriteScratchFile("graph.pb", data, size));
  return 0;
}
