// Registration that throws after registering one op: nothing may stay registered.
#include <stdexcept>

#include "weir/plugin.h"

namespace {
void RegisterThrows(weir::Registrar& r) {
  r.StreamOp("test.Half").Doc("Registered before the throw.").Output("out", "batch");
  throw std::runtime_error("the plugin's registration blew up");
}
}  // namespace

WEIR_PLUGIN("throws", "0.0.1", RegisterThrows)
