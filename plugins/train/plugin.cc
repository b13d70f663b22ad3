#include "weir/plugin.h"

namespace weir::train {
void RegisterModel(Registrar& r);
void RegisterByteWindows(Registrar& r);
void RegisterTrainStep(Registrar& r);
void RegisterRandomTokens(Registrar& r);
}  // namespace weir::train

namespace {

void RegisterTrain(weir::Registrar& r) {
  weir::train::RegisterModel(r);
  weir::train::RegisterByteWindows(r);
  weir::train::RegisterTrainStep(r);
  weir::train::RegisterRandomTokens(r);
}

}  // namespace

WEIR_PLUGIN("train", "0.1.0", RegisterTrain)
