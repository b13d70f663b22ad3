#include "tokenizer_fuzz.h"

#include <cstdlib>
#include <iostream>
#include <string_view>

#include "tokenizer/bpe.h"

namespace weir::fuzz {

void LoadAndUseTokenizer(const std::filesystem::path& file) {
  auto tokenizer = tokenizer::Tokenizer::Load(file);
  if (!tokenizer.ok()) return;
  // Letters, digits, CJK, spaces and newlines for the pre-tokenizers, a special-looking token,
  // and bytes that are not UTF-8.
  constexpr std::string_view kText =
      "Hello world! It's 2024: 12345 tokens\n\n  of text, \xe4\xbd\xa0\xe5\xa5\xbd "
      "<|endoftext|> caf\xc3\xa9 \xff\xfe end";
  for (bool specials : {false, true}) {
    auto decoded = (*tokenizer)->Decode((*tokenizer)->Encode(kText, specials));
    if (!decoded.ok() || *decoded != kText) {
      std::cerr << "fuzz: decoding the encoded text does not give it back (specials=" << specials
                << "): " << (decoded.ok() ? "'" + *decoded + "'" : decoded.status().ToString())
                << "\n";
      std::abort();
    }
  }
}

}  // namespace weir::fuzz
