#include "minhash.h"

#include <algorithm>
#include <cstring>
#include <limits>
#include <string>

#include "weir/random.h"

namespace weir::dedup {

uint64_t Hash64(std::string_view bytes, uint64_t seed) {
  uint64_t h = SplitMix64(seed ^ (bytes.size() * 0x9e3779b97f4a7c15ull));
  size_t i = 0;
  for (; i + 8 <= bytes.size(); i += 8) {
    uint64_t word;
    std::memcpy(&word, bytes.data() + i, 8);
    h = SplitMix64(h ^ word);
  }
  uint64_t tail = 0;
  std::memcpy(&tail, bytes.data() + i, bytes.size() - i);
  return SplitMix64(h ^ tail ^ (static_cast<uint64_t>(bytes.size() - i) << 56));
}

std::vector<uint64_t> WordHashes(std::string_view text) {
  std::vector<uint64_t> out;
  std::string word;
  auto flush = [&] {
    if (!word.empty()) out.push_back(Hash64(word, 0x5eed));
    word.clear();
  };
  for (char ch : text) {
    auto c = static_cast<unsigned char>(ch);
    if (c >= 0x80 || (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z')) {
      word.push_back(ch);
    } else if (c >= 'A' && c <= 'Z') {
      word.push_back(static_cast<char>(c - 'A' + 'a'));
    } else {
      flush();
    }
  }
  flush();
  return out;
}

void Signature(const std::vector<uint64_t>& words, int n, const std::vector<uint64_t>& salts,
               uint64_t* out) {
  size_t k = salts.size();
  std::fill(out, out + k, std::numeric_limits<uint64_t>::max());
  size_t width = static_cast<size_t>(n);
  size_t shingles = words.size() >= width ? words.size() - width + 1 : (words.empty() ? 0 : 1);
  for (size_t s = 0; s < shingles; ++s) {
    uint64_t h = 0x243f6a8885a308d3ull;
    for (size_t w = s; w < std::min(s + width, words.size()); ++w) h = SplitMix64(h ^ words[w]);
    // The salted mixes of one shingle: independent lanes the compiler vectorizes.
    for (size_t i = 0; i < k; ++i) {
      uint64_t z = h ^ salts[i];
      z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
      z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
      z ^= z >> 31;
      out[i] = std::min(out[i], z);
    }
  }
}

uint64_t BandKey(const uint64_t* signature, int band, int rows) {
  uint64_t h = SplitMix64(0xba5eba11ull + static_cast<uint64_t>(band));
  for (int r = 0; r < rows; ++r) h = SplitMix64(h ^ signature[band * rows + r]);
  return h;
}

std::vector<uint64_t> Salts(int count, uint64_t seed) {
  std::vector<uint64_t> salts(static_cast<size_t>(count));
  for (int i = 0; i < count; ++i) salts[static_cast<size_t>(i)] = SplitMix64(seed * 1000003 + i);
  return salts;
}

}  // namespace weir::dedup
