#include "filters/text_stats.h"

#include <cctype>

namespace weir::data {

std::vector<std::string_view> Lines(std::string_view text) {
  std::vector<std::string_view> out;
  size_t start = 0;
  while (start < text.size()) {
    size_t end = text.find('\n', start);
    if (end == std::string_view::npos) end = text.size();
    out.push_back(text.substr(start, end - start));
    start = end + 1;
  }
  return out;
}

std::vector<std::string_view> Paragraphs(std::string_view text) {
  std::vector<std::string_view> out;
  size_t begin = std::string_view::npos, last_end = 0;
  for (std::string_view line : Lines(text)) {
    size_t at = static_cast<size_t>(line.data() - text.data());
    if (Trim(line).empty()) {
      if (begin != std::string_view::npos) out.push_back(text.substr(begin, last_end - begin));
      begin = std::string_view::npos;
      continue;
    }
    if (begin == std::string_view::npos) begin = at;
    last_end = at + line.size();
  }
  if (begin != std::string_view::npos) out.push_back(text.substr(begin, last_end - begin));
  return out;
}

std::vector<std::string_view> Tokens(std::string_view text) {
  std::vector<std::string_view> out;
  size_t i = 0;
  while (i < text.size()) {
    while (i < text.size() && std::isspace(static_cast<unsigned char>(text[i]))) ++i;
    size_t start = i;
    while (i < text.size() && !std::isspace(static_cast<unsigned char>(text[i]))) ++i;
    if (i > start) out.push_back(text.substr(start, i - start));
  }
  return out;
}

bool IsPunctuation(char c) { return std::ispunct(static_cast<unsigned char>(c)) != 0; }

std::vector<std::string> Words(std::string_view text, bool lower) {
  std::vector<std::string> out;
  for (std::string_view t : Tokens(text)) {
    size_t b = 0, e = t.size();
    while (b < e && IsPunctuation(t[b])) ++b;
    while (e > b && IsPunctuation(t[e - 1])) --e;
    if (b == e) continue;
    out.push_back(lower ? Lower(t.substr(b, e - b)) : std::string(t.substr(b, e - b)));
  }
  return out;
}

std::string_view Trim(std::string_view s) {
  size_t b = 0, e = s.size();
  while (b < e && std::isspace(static_cast<unsigned char>(s[b]))) ++b;
  while (e > b && std::isspace(static_cast<unsigned char>(s[e - 1]))) --e;
  return s.substr(b, e - b);
}

bool EndsInTerminalPunctuation(std::string_view line) {
  std::string_view t = Trim(line);
  while (!t.empty() && (t.back() == '"' || t.back() == '\'' || t.back() == ')')) t.remove_suffix(1);
  return !t.empty() && (t.back() == '.' || t.back() == '!' || t.back() == '?');
}

bool HasLetter(std::string_view word) {
  for (char c : word)
    if (std::isalpha(static_cast<unsigned char>(c)) || static_cast<unsigned char>(c) >= 0x80)
      return true;
  return false;
}

std::string Lower(std::string_view s) {
  std::string out(s);
  for (char& c : out) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return out;
}

}  // namespace weir::data
