// Command-line parsing for the weir CLI: flags (--name value or --name=value), repeatable flags
// and positional arguments, with errors that say what was expected.
#pragma once

#include <map>
#include <optional>
#include <string>
#include <vector>

#include "weir/status.h"

namespace weir::cli {

struct FlagSpec {
  std::string name;  // without "--"
  bool takes_value = true;
  bool repeatable = false;
};

struct Args {
  std::vector<std::string> positional;
  std::map<std::string, std::vector<std::string>> flags;  // flag -> values ("" for switches)

  bool Has(const std::string& name) const { return flags.count(name) > 0; }
  std::optional<std::string> Get(const std::string& name) const;
  std::vector<std::string> All(const std::string& name) const;
  StatusOr<int> GetInt(const std::string& name, int fallback) const;
  StatusOr<double> GetFloat(const std::string& name, double fallback) const;
};

StatusOr<Args> ParseArgs(const std::vector<std::string>& argv, const std::vector<FlagSpec>& specs);

// The start every command shares: parses `argv` (adding --help), prints the help or the problem,
// and checks the number of positional arguments. Returns the exit code to leave with, or nullopt
// when the command should go on with *args.
std::optional<int> ParseCommand(const std::string& command, const std::vector<std::string>& argv,
                                std::vector<FlagSpec> specs, const char* help,
                                size_t min_positional, size_t max_positional, Args* args);

}  // namespace weir::cli
