// Text measurements the quality filters share: lines, paragraphs, words, n-grams.
#pragma once

#include <string>
#include <string_view>
#include <vector>

namespace weir::data {

// Lines without their '\n' (a final empty line after a trailing newline is dropped).
std::vector<std::string_view> Lines(std::string_view text);
// Paragraphs: runs of text separated by blank lines.
std::vector<std::string_view> Paragraphs(std::string_view text);
// Whitespace-separated tokens.
std::vector<std::string_view> Tokens(std::string_view text);
// Tokens with leading and trailing punctuation stripped; tokens that were only punctuation
// ("symbol words") are dropped. Lower-cased when asked.
std::vector<std::string> Words(std::string_view text, bool lower = false);

std::string_view Trim(std::string_view s);
bool IsPunctuation(char c);
// Ends in . ! ? or a closing quote after one of them.
bool EndsInTerminalPunctuation(std::string_view line);
// Whether a word has a letter (ASCII, or any non-ASCII byte: a letter of another script).
bool HasLetter(std::string_view word);
std::string Lower(std::string_view s);

}  // namespace weir::data
