// tiktoken rank files ("<base64 token> <rank>" lines): loading, then encoding and decoding a
// fixed text with what loaded.
#include "fuzz_util.h"
#include "tokenizer_fuzz.h"

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  weir::fuzz::Init();
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size > weir::fuzz::kMaxInputBytes) return -1;
  weir::fuzz::LoadAndUseTokenizer(weir::fuzz::WriteScratchFile("ranks.tiktoken", data, size));
  return 0;
}
