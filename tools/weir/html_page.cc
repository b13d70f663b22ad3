#include "html_page.h"

namespace weir::cli {

namespace {

std::string ReplaceAll(std::string text, std::string_view from, std::string_view to) {
  for (size_t at = text.find(from); at != std::string::npos; at = text.find(from, at + to.size()))
    text.replace(at, from.size(), to);
  return text;
}

std::string HtmlEscape(const std::string& text) {
  std::string out;
  for (char c : text) {
    switch (c) {
      case '&':
        out += "&amp;";
        break;
      case '<':
        out += "&lt;";
        break;
      case '>':
        out += "&gt;";
        break;
      case '"':
        out += "&quot;";
        break;
      default:
        out += c;
    }
  }
  return out;
}

// A script element ends at the first "</script": JSON writes every "</" as "<\/" (the same
// string to JSON.parse), and weir's own scripts never hold that text outside strings.
std::string ScriptText(std::string_view text, std::string_view end) {
  return ReplaceAll(std::string(text), end, "<\\/" + std::string(end.substr(2)));
}

}  // namespace

std::string HtmlPage(std::string_view page, const std::string& title,
                     const std::vector<std::string_view>& styles,
                     const std::vector<std::string_view>& scripts, const std::string& data_json) {
  std::string style, script;
  for (std::string_view s : styles) style += std::string(s) + "\n";
  for (std::string_view s : scripts)
    script += "<script>\n" + ScriptText(s, "</script") + "\n</script>\n";
  // The data goes in last: its text must not be searched for the other placeholders.
  std::string out = std::string(page);
  out = ReplaceAll(out, "{{title}}", HtmlEscape(title));
  out = ReplaceAll(out, "{{style}}", style);
  out = ReplaceAll(out, "{{script}}", script);
  return ReplaceAll(out, "{{data}}", ScriptText(data_json, "</"));
}

}  // namespace weir::cli
