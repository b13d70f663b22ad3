// The registry of op schemas and kernels that plugins fill.
//
// Thread-safety: registration happens while plugins load, before graphs are resolved or run;
// lookups afterwards are read-only and may come from any thread.
#pragma once

#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "weir/op.pb.h"
#include "weir/registrar.h"
#include "weir/status.h"

namespace weir {

struct OpEntry {
  OpDef def;                           // with def.plugin set to the registering plugin's file
  StreamKernelFactory stream_factory;  // stream ops
  // Tensor ops.
  ShapeFn shape;
  std::map<std::string, std::pair<KernelFn, std::vector<DataType>>> kernels;  // by device
  GradientFn gradient;
  std::vector<ParamDef> params;
  CostFn cost;  // may be empty: costs nothing worth planning for

  // The kernel for `device` that handles `dtype`, or null.
  const KernelFn* FindKernel(const std::string& device, DataType dtype) const;
};

struct ResourceKindEntry {
  ResourceKindDef def;
  ResourceFactory factory;  // may be empty: a kind that only validates attrs
};

class OpRegistry {
 public:
  // The process-wide registry the plugin loader fills.
  static OpRegistry& Global();

  const OpEntry* Find(std::string_view name) const;
  const ResourceKindEntry* FindResourceKind(std::string_view name) const;
  std::vector<std::string> OpNames() const;  // sorted
  std::vector<std::string> ResourceKindNames() const;

  // Adds everything `staged` holds, or nothing: a declaration mistake or an op name that is
  // already registered is an error naming `plugin` (and, for a duplicate, the earlier plugin).
  Status Commit(Registrar& staged, const std::string& plugin);

  // Every op schema, sorted by name: what `weir ops --json` prints.
  OpList Export() const;

 private:
  std::map<std::string, std::unique_ptr<OpEntry>, std::less<>> ops_;
  std::map<std::string, std::unique_ptr<ResourceKindEntry>, std::less<>> resource_kinds_;
};

// How many outputs a node of `def` has: its output ports, the last counted `count` times when it
// is variadic (`count` is the node's value of the port's count attr; null: 1).
int NumOutputs(const OpDef& def, const AttrValue* count);
// The same, looking the count attr up with find(name) -> const AttrValue* (null when unset).
template <typename Find>
int NumOutputs(const OpDef& def, Find find) {
  bool variadic = def.output_size() > 0 && def.output().rbegin()->variadic();
  return NumOutputs(def, variadic ? find(def.output().rbegin()->count_attr()) : nullptr);
}
// The port that output `index` of such a node belongs to.
const PortDef& OutputPort(const OpDef& def, int index);

// "; did you mean 'x'?" for the closest candidates, or "" when none is close.
std::string SuggestClosest(std::string_view name, const std::vector<std::string>& candidates);

}  // namespace weir
