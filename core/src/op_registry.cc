#include "weir/op_registry.h"

#include <algorithm>

namespace weir {
namespace {

size_t EditDistance(std::string_view a, std::string_view b) {
  std::vector<size_t> prev(b.size() + 1), cur(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j) prev[j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    cur[0] = i;
    for (size_t j = 1; j <= b.size(); ++j) {
      size_t sub = prev[j - 1] + (std::tolower(a[i - 1]) == std::tolower(b[j - 1]) ? 0 : 1);
      cur[j] = std::min({prev[j] + 1, cur[j - 1] + 1, sub});
    }
    std::swap(prev, cur);
  }
  return prev[b.size()];
}

template <typename Map>
std::vector<std::string> Keys(const Map& map) {
  std::vector<std::string> out;
  for (const auto& [k, v] : map) out.push_back(k);
  return out;
}

}  // namespace

std::string SuggestClosest(std::string_view name, const std::vector<std::string>& candidates) {
  size_t best = std::string::npos;
  std::vector<std::string> picks;
  for (const std::string& c : candidates) {
    size_t d = EditDistance(name, c);
    // Also match on the part after the namespace: "JsonlSource" finds "io.JsonlSource".
    size_t dot = c.rfind('.');
    if (dot != std::string::npos) d = std::min(d, EditDistance(name, c.substr(dot + 1)) + 1);
    if (d > std::max<size_t>(1, name.size() / 4)) continue;
    if (d < best) {
      best = d;
      picks.clear();
    }
    if (d == best && picks.size() < 3) picks.push_back(c);
  }
  if (picks.empty()) return "";
  std::string out = "; did you mean ";
  for (size_t i = 0; i < picks.size(); ++i) out += (i ? " or '" : "'") + picks[i] + "'";
  return out + "?";
}

const KernelFn* OpEntry::FindKernel(const std::string& device, DataType dtype) const {
  auto it = kernels.find(device);
  if (it == kernels.end()) return nullptr;
  const auto& dtypes = it->second.second;
  if (!dtypes.empty() && std::find(dtypes.begin(), dtypes.end(), dtype) == dtypes.end())
    return nullptr;
  return &it->second.first;
}

OpRegistry& OpRegistry::Global() {
  static OpRegistry* registry = new OpRegistry();  // never destroyed: plugins are never unloaded
  return *registry;
}

const OpEntry* OpRegistry::Find(std::string_view name) const {
  auto it = ops_.find(name);
  return it == ops_.end() ? nullptr : it->second.get();
}

const ResourceKindEntry* OpRegistry::FindResourceKind(std::string_view name) const {
  auto it = resource_kinds_.find(name);
  return it == resource_kinds_.end() ? nullptr : it->second.get();
}

int NumOutputs(const OpDef& def, const AttrValue* count) {
  int n = def.output_size();
  if (n == 0 || !def.output().rbegin()->variadic()) return n;
  int64_t repeat = count == nullptr ? 1 : AttrInt(*count);
  return n - 1 + static_cast<int>(std::max<int64_t>(repeat, 0));
}

const PortDef& OutputPort(const OpDef& def, int index) {
  return def.output(std::min(index, def.output_size() - 1));
}

std::vector<std::string> OpRegistry::OpNames() const { return Keys(ops_); }
std::vector<std::string> OpRegistry::ResourceKindNames() const { return Keys(resource_kinds_); }

Status OpRegistry::Commit(Registrar& staged, const std::string& plugin) {
  std::vector<std::string> problems = staged.errors();
  std::map<std::string, int> seen;
  for (auto& op : staged.ops()) {
    const std::string& name = op.def->name();
    if (const OpEntry* existing = Find(name)) {
      problems.push_back("op '" + name + "' is already registered by plugin " +
                         existing->def.plugin());
    }
    if (seen[name]++ == 1) problems.push_back("op '" + name + "' is registered twice");
    if (op.def->doc().empty()) problems.push_back("op '" + name + "' has no doc");
    const OpBuilder::Parts& parts = op.builder->parts();
    if (op.def->kind() == OpDef::STREAM && !parts.factory)
      problems.push_back("stream op '" + name + "' has no kernel factory");
    if (op.def->kind() == OpDef::TENSOR && !parts.kernels.empty() && !parts.shape)
      problems.push_back("tensor op '" + name + "' has kernels but no shape function");
    if (op.def->output_size() > 0 && op.def->output().rbegin()->variadic()) {
      const std::string& count = op.def->output().rbegin()->count_attr();
      bool found = false;
      for (const AttrDef& a : op.def->attr())
        found = found || (a.name() == count && a.type() == ATTR_INT);
      if (!found) {
        problems.push_back("op '" + name + "': variadic output '" +
                           op.def->output().rbegin()->name() + "' needs an int attr '" + count +
                           "' for its count");
      }
    }
  }
  for (auto& kind : staged.resource_kinds()) {
    if (const ResourceKindEntry* existing = FindResourceKind(kind.def->name())) {
      problems.push_back("resource kind '" + kind.def->name() +
                         "' is already registered by plugin " + existing->def.plugin());
    }
  }
  if (!problems.empty()) {
    std::string message = "plugin " + plugin + " registers nothing because:";
    for (const std::string& p : problems) message += "\n  " + p;
    return FailedPrecondition(message);
  }
  for (auto& op : staged.ops()) {
    auto entry = std::make_unique<OpEntry>();
    entry->def = *op.def;
    entry->def.set_plugin(plugin);
    if (entry->def.kind() == OpDef::STREAM) entry->def.add_kernel()->set_device("cpu");
    OpBuilder::Parts& parts = op.builder->parts();
    entry->stream_factory = std::move(parts.factory);
    entry->shape = std::move(parts.shape);
    entry->kernels = std::move(parts.kernels);
    entry->gradient = std::move(parts.gradient);
    entry->params = std::move(parts.params);
    entry->cost = std::move(parts.cost);
    ops_[entry->def.name()] = std::move(entry);
  }
  for (auto& kind : staged.resource_kinds()) {
    auto entry = std::make_unique<ResourceKindEntry>();
    entry->def = *kind.def;
    entry->def.set_plugin(plugin);
    entry->factory = std::move(kind.builder->factory());
    resource_kinds_[entry->def.name()] = std::move(entry);
  }
  return Status();
}

OpList OpRegistry::Export() const {
  OpList list;
  for (const auto& [name, entry] : ops_) *list.add_op() = entry->def;
  return list;
}

}  // namespace weir
