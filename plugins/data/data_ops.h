// The data plugin's ops.
#pragma once

#include "weir/registrar.h"
#include "weir/stream_kernel.h"

namespace weir::data {

void RegisterFilters(Registrar& r);
void RegisterShards(Registrar& r);
void RegisterMix(Registrar& r);

}  // namespace weir::data
