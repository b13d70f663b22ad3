// Declaration mistakes the registry must catch: a default outside its bounds, an unnamespaced op.
#include "weir/plugin.h"

namespace {
void RegisterBadSchema(weir::Registrar& r) {
  r.StreamOp("NoNamespace").Doc("Bad name.").Output("out", "batch").Factory(nullptr);
  r.StreamOp("test.BadDefault")
      .Doc("Default outside bounds.")
      .Output("out", "batch")
      .Attr<int64_t>("k", 0, "must be >= 1", weir::Min(1))
      .Factory(nullptr);
}
}  // namespace

WEIR_PLUGIN("bad_schema", "0.0.1", RegisterBadSchema)
