// The io plugin's op families; plugin.cc registers them all.
#pragma once

#include "weir/registrar.h"

namespace weir::io {

void RegisterJsonlSource(Registrar& r);
void RegisterJsonlSink(Registrar& r);
void RegisterTextSource(Registrar& r);
void RegisterHead(Registrar& r);
void RegisterSample(Registrar& r);

}  // namespace weir::io
