// Registers an op the io plugin already registers.
#include "weir/plugin.h"

namespace {
void RegisterDup(weir::Registrar& r) {
  r.StreamOp("test.Unique").Doc("A fine op.").Output("out", "batch").Factory(nullptr);
  r.StreamOp("io.Head").Doc("A second io.Head.").Output("out", "batch").Factory(nullptr);
}
}  // namespace

WEIR_PLUGIN("dup_op", "0.0.1", RegisterDup)
