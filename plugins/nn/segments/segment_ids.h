// nn.SegmentIds: which packed document each token belongs to (segments/segment_ids.cc).
#pragma once

#include "weir/registrar.h"

namespace weir::nn {

void RegisterSegmentIds(Registrar& r);

}  // namespace weir::nn
