// Reading text files line by line with a bound on the line length: a file without newlines (a
// binary blob, a hostile or corrupt input) gives a clear error, never an allocation the size of
// the file.
#pragma once

#include <cstddef>
#include <istream>
#include <string>

#include "weir/status.h"

namespace weir {

// Lines of the JSONL and text sources: far above any real document.
inline constexpr size_t kMaxLineBytes = size_t{256} << 20;

// The next line of `in` without its newline into `line`; false at the end of the input, an error
// when the line is longer than `max_bytes`.
inline StatusOr<bool> ReadLine(std::istream& in, std::string* line,
                               size_t max_bytes = kMaxLineBytes) {
  line->clear();
  char chunk[1 << 16];
  bool any = false;
  while (true) {
    in.getline(chunk, sizeof(chunk));
    auto got = static_cast<size_t>(in.gcount());
    // getline stops at a newline (extracted, not stored), the end of input, or a full chunk
    // (failbit without eofbit).
    bool full = in.fail() && !in.eof() && got == sizeof(chunk) - 1;
    size_t stored = full || in.eof() ? got : got - 1;
    line->append(chunk, stored);
    any = any || got > 0;
    if (line->size() > max_bytes)
      return InvalidArgument("a line is longer than " + std::to_string(max_bytes) + " bytes");
    if (!full) return any;
    in.clear();
  }
}

}  // namespace weir
