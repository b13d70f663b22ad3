#include "args.h"

#include <iostream>

namespace weir::cli {

std::optional<std::string> Args::Get(const std::string& name) const {
  auto it = flags.find(name);
  if (it == flags.end() || it->second.empty()) return std::nullopt;
  return it->second.back();
}

std::vector<std::string> Args::All(const std::string& name) const {
  auto it = flags.find(name);
  return it == flags.end() ? std::vector<std::string>{} : it->second;
}

StatusOr<int> Args::GetInt(const std::string& name, int fallback) const {
  auto v = Get(name);
  if (!v) return fallback;
  try {
    size_t used = 0;
    int x = std::stoi(*v, &used);
    if (used == v->size()) return x;
  } catch (...) {
  }
  return InvalidArgument("--" + name + " expects an integer, got '" + *v + "'");
}

StatusOr<double> Args::GetFloat(const std::string& name, double fallback) const {
  auto v = Get(name);
  if (!v) return fallback;
  try {
    size_t used = 0;
    double x = std::stod(*v, &used);
    if (used == v->size()) return x;
  } catch (...) {
  }
  return InvalidArgument("--" + name + " expects a number, got '" + *v + "'");
}

StatusOr<Args> ParseArgs(const std::vector<std::string>& argv, const std::vector<FlagSpec>& specs) {
  Args args;
  for (size_t i = 0; i < argv.size(); ++i) {
    const std::string& a = argv[i];
    if (a.size() < 2 || a.compare(0, 2, "--") != 0 || a == "--") {
      args.positional.push_back(a);
      continue;
    }
    std::string name = a.substr(2);
    std::optional<std::string> value;
    size_t eq = name.find('=');
    if (eq != std::string::npos) {
      value = name.substr(eq + 1);
      name = name.substr(0, eq);
    }
    const FlagSpec* spec = nullptr;
    for (const FlagSpec& s : specs)
      if (s.name == name) spec = &s;
    if (spec == nullptr) return InvalidArgument("unknown option --" + name + " (see --help)");
    if (spec->takes_value && !value) {
      if (i + 1 >= argv.size()) return InvalidArgument("--" + name + " needs a value");
      value = argv[++i];
    }
    if (!spec->takes_value && value) return InvalidArgument("--" + name + " takes no value");
    if (!spec->repeatable && args.flags.count(name))
      return InvalidArgument("--" + name + " given twice");
    args.flags[name].push_back(value.value_or(""));
  }
  return args;
}

std::optional<int> ParseCommand(const std::string& command, const std::vector<std::string>& argv,
                                std::vector<FlagSpec> specs, const char* help,
                                size_t min_positional, size_t max_positional, Args* args) {
  specs.push_back({"help", false, false});
  auto parsed = ParseArgs(argv, specs);
  if (!parsed.ok()) {
    std::cerr << "weir " << command << ": " << parsed.status().message() << "\n";
    return 2;
  }
  if (parsed->Has("help")) {
    std::cout << help;
    return 0;
  }
  if (parsed->positional.size() < min_positional || parsed->positional.size() > max_positional) {
    std::cerr << help;
    return 2;
  }
  *args = std::move(parsed).value();
  return std::nullopt;
}

}  // namespace weir::cli
