// The self-contained HTML pages weir writes (`weir viz`, `weir report`): a page template from
// tools/viz with its styles, scripts and data put inline, so that it opens with no network.
#pragma once

#include <string>
#include <string_view>
#include <vector>

namespace weir::cli {

// Fills the template's {{title}}, {{style}}, {{script}} and {{data}} (a JSON document the
// scripts read from <script id="data" type="application/json">).
std::string HtmlPage(std::string_view page, const std::string& title,
                     const std::vector<std::string_view>& styles,
                     const std::vector<std::string_view>& scripts, const std::string& data_json);

}  // namespace weir::cli
