#include "weir/plugin.h"

#include "data_ops.h"

namespace {

void RegisterData(weir::Registrar& r) {
  weir::data::RegisterFilters(r);
  weir::data::RegisterShards(r);
  weir::data::RegisterMix(r);
}

}  // namespace

WEIR_PLUGIN("data", "0.1.0", RegisterData)
