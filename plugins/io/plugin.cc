#include "weir/plugin.h"

#include "io_ops.h"

namespace {

void RegisterIo(weir::Registrar& r) {
  weir::io::RegisterJsonlSource(r);
  weir::io::RegisterJsonlSink(r);
  weir::io::RegisterTextSource(r);
  weir::io::RegisterHead(r);
  weir::io::RegisterSample(r);
}

}  // namespace

WEIR_PLUGIN("io", "0.1.0", RegisterIo)
