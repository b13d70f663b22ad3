// The weir CLI's commands. Each takes the arguments after its name and returns the exit code.
#pragma once

#include <string>
#include <vector>

namespace weir::cli {

int RunCommand(const std::vector<std::string>& args);
int CheckCommand(const std::vector<std::string>& args);
int OpsCommand(const std::vector<std::string>& args);
int TokenizeCommand(const std::vector<std::string>& args);
int PlanCommand(const std::vector<std::string>& args);
int GenerateCommand(const std::vector<std::string>& args);
int LogitsCommand(const std::vector<std::string>& args);
int HfCommand(const std::vector<std::string>& args);
int VizCommand(const std::vector<std::string>& args);
int ReportCommand(const std::vector<std::string>& args);
int ScheduleCommand(const std::vector<std::string>& args);

}  // namespace weir::cli
