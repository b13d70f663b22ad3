// MinHash signatures of documents: word n-gram shingles, 64-bit hashes, bands for LSH.
#pragma once

#include <cstdint>
#include <string_view>
#include <vector>

namespace weir::dedup {

// A stable 64-bit hash of bytes (the same on every machine and run: indexes are saved).
uint64_t Hash64(std::string_view bytes, uint64_t seed);

// Hashes of the words of `text` for shingling: words are runs of ASCII letters and digits
// (lower-cased) and non-ASCII bytes (UTF-8 letters of other scripts); everything else separates
// them, so punctuation and whitespace changes do not change the words.
std::vector<uint64_t> WordHashes(std::string_view text);

// The MinHash signature of the n-word shingles of `words` (one shingle of all words when there
// are fewer than n): for each of the salts, the minimum over shingles of a salted 64-bit mix.
void Signature(const std::vector<uint64_t>& words, int n, const std::vector<uint64_t>& salts,
               uint64_t* out);

// The LSH key of band `band` (rows values starting at band * rows).
uint64_t BandKey(const uint64_t* signature, int band, int rows);

// The salts of a signature of `count` values drawn from `seed`.
std::vector<uint64_t> Salts(int count, uint64_t seed);

}  // namespace weir::dedup
