// The tokenizer harnesses' shared body (tokenizer.json and tiktoken files load through one entry).
#pragma once

#include <filesystem>

namespace weir::fuzz {

// Loads the tokenizer in `file`; when it loads, encodes a fixed text and checks that decoding
// gives the text back (byte-level BPE loses nothing), aborting when it does not.
void LoadAndUseTokenizer(const std::filesystem::path& file);

}  // namespace weir::fuzz
