// Declaration mistakes the registry must catch: a default outside its bounds, an unnamespaced op,
// a kernel for a device weir does not know.
#include "weir/plugin.h"

namespace {
void RegisterBadSchema(weir::Registrar& r) {
  r.StreamOp("NoNamespace").Doc("Bad name.").Output("out", "batch").Factory(nullptr);
  r.StreamOp("test.BadDefault")
      .Doc("Default outside bounds.")
      .Output("out", "batch")
      .Attr<int64_t>("k", 0, "must be >= 1", weir::Min(1))
      .Factory(nullptr);
  r.TensorOp("test.TpuOnly")
      .Doc("A kernel for a device that does not exist.")
      .Input("x", "f32")
      .Output("y", "f32")
      .Shape([](weir::ShapeContext& c) {
        c.set_output(0, c.input(0));
        return weir::Status();
      })
      .Kernel("tpu", [](weir::KernelContext&) { return weir::Status(); });
}
}  // namespace

WEIR_PLUGIN("bad_schema", "0.0.1", RegisterBadSchema)
