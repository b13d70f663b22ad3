#include "weir/registrar.h"

#include <regex>

#include "weir/device.h"

namespace weir {
namespace {

bool ValidOpName(const std::string& name) {
  static const std::regex kName(R"([a-z][a-z0-9_]*(\.[A-Za-z][A-Za-z0-9_]*)+)");
  return std::regex_match(name, kName);
}

bool ValidAttrName(const std::string& name) {
  static const std::regex kName(R"([A-Za-z_][A-Za-z0-9_]*)");
  return std::regex_match(name, kName);
}

}  // namespace

AttrValue ToAttrValue(bool v) {
  AttrValue a;
  a.set_b(v);
  return a;
}
AttrValue ToAttrValue(int64_t v) {
  AttrValue a;
  a.set_i(v);
  return a;
}
AttrValue ToAttrValue(double v) {
  AttrValue a;
  a.set_f(v);
  return a;
}
AttrValue ToAttrValue(const std::string& v) {
  AttrValue a;
  a.set_s(v);
  return a;
}
AttrValue ToAttrValue(const std::vector<int64_t>& v) {
  AttrValue a;
  auto* list = a.mutable_list();
  for (int64_t x : v) *list->add_value() = ToAttrValue(x);
  return a;
}
AttrValue ToAttrValue(const std::vector<double>& v) {
  AttrValue a;
  auto* list = a.mutable_list();
  for (double x : v) *list->add_value() = ToAttrValue(x);
  return a;
}
AttrValue ToAttrValue(const std::vector<std::string>& v) {
  AttrValue a;
  auto* list = a.mutable_list();
  for (const std::string& x : v) *list->add_value() = ToAttrValue(x);
  return a;
}

void AttrListBuilder::Add(const std::string& name, AttrType type,
                          std::optional<AttrValue> default_value, const std::string& doc) {
  if (!ValidAttrName(name))
    errors_->push_back(owner_ + ": attr name '" + name + "' must match [A-Za-z_][A-Za-z0-9_]*");
  for (const AttrDef& a : *attrs_)
    if (a.name() == name) errors_->push_back(owner_ + ": attr '" + name + "' declared twice");
  if (doc.empty()) errors_->push_back(owner_ + ": attr '" + name + "' has no doc");
  AttrDef* def = attrs_->Add();
  def->set_name(name);
  def->set_type(type);
  def->set_doc(doc);
  if (default_value) *def->mutable_default_value() = std::move(*default_value);
}

void AttrListBuilder::Apply(const Min& m) { attrs_->rbegin()->set_minimum(m.value); }
void AttrListBuilder::Apply(const Max& m) { attrs_->rbegin()->set_maximum(m.value); }
void AttrListBuilder::Apply(const OneOf& o) {
  AttrDef& def = *attrs_->rbegin();
  for (const std::string& text : o.values) {
    auto lit = ParseLiteral(text);
    auto value = lit.ok() ? CoerceLiteral(*lit, def.type()) : StatusOr<AttrValue>(lit.status());
    if (!value.ok()) {
      errors_->push_back(owner_ + ": attr '" + def.name() + "' allowed value " + text + ": " +
                         value.status().message());
      continue;
    }
    *def.add_allowed() = *value;
  }
}

void AttrListBuilder::Finish() {
  const AttrDef& def = *attrs_->rbegin();
  if (!AttrValueIsSet(def.default_value())) return;
  Status s = CheckAttrConstraints(def, def.default_value());
  if (!s.ok()) errors_->push_back(owner_ + ": default of attr '" + def.name() + "' " + s.message());
}

OpBuilder::OpBuilder(OpDef* def, std::vector<std::string>* errors)
    : def_(def), errors_(errors), attrs_(def->mutable_attr(), errors, "op '" + def->name() + "'") {}

OpBuilder& OpBuilder::Doc(const std::string& doc) {
  def_->set_doc(doc);
  return *this;
}

OpBuilder& OpBuilder::Input(const std::string& name, const std::string& type,
                            const std::string& doc) {
  if (def_->input_size() > 0 && def_->input().rbegin()->variadic())
    errors_->push_back("op '" + def_->name() + "': input '" + name + "' follows a variadic input");
  PortDef* p = def_->add_input();
  p->set_name(name);
  p->set_type(type);
  p->set_doc(doc);
  p->set_differentiable(def_->kind() == OpDef::TENSOR);
  return *this;
}

OpBuilder& OpBuilder::OptionalInput(const std::string& name, const std::string& type,
                                    const std::string& doc) {
  Input(name, type, doc);
  def_->mutable_input()->rbegin()->set_optional(true);
  return *this;
}

OpBuilder& OpBuilder::VariadicInput(const std::string& name, const std::string& type,
                                    const std::string& doc) {
  Input(name, type, doc);
  def_->mutable_input()->rbegin()->set_variadic(true);
  return *this;
}

OpBuilder& OpBuilder::Output(const std::string& name, const std::string& type,
                             const std::string& doc) {
  if (def_->output_size() > 0 && def_->output().rbegin()->variadic())
    errors_->push_back("op '" + def_->name() + "': output '" + name +
                       "' follows a variadic output");
  PortDef* p = def_->add_output();
  p->set_name(name);
  p->set_type(type);
  p->set_doc(doc);
  return *this;
}

OpBuilder& OpBuilder::VariadicOutput(const std::string& name, const std::string& type,
                                     const std::string& count_attr, const std::string& doc) {
  Output(name, type, doc);
  def_->mutable_output()->rbegin()->set_variadic(true);
  def_->mutable_output()->rbegin()->set_count_attr(count_attr);
  return *this;
}

OpBuilder& OpBuilder::AttrOfType(const std::string& name, AttrType type,
                                 const char* default_literal, const std::string& doc) {
  auto lit = ParseLiteral(default_literal);
  auto value = lit.ok() ? CoerceLiteral(*lit, type) : StatusOr<AttrValue>(lit.status());
  if (!value.ok()) {
    errors_->push_back("op '" + def_->name() + "': default of attr '" + name + "' " +
                       value.status().message());
    return AttrOfType(name, type, std::optional<AttrValue>(), doc);
  }
  return AttrOfType(name, type, std::optional<AttrValue>(*value), doc);
}

OpBuilder& OpBuilder::Stateful() {
  def_->set_stateful(true);
  def_->set_max_concurrency(1);
  return *this;
}

OpBuilder& OpBuilder::MaxConcurrency(int n) {
  if (def_->stateful() && n != 1)
    errors_->push_back("op '" + def_->name() + "': a stateful op runs serially");
  def_->set_max_concurrency(n);
  return *this;
}

OpBuilder& OpBuilder::SinceVersion(int version) {
  def_->set_since_version(version);
  return *this;
}

OpBuilder& OpBuilder::Factory(StreamKernelFactory factory) {
  if (def_->kind() != OpDef::STREAM)
    errors_->push_back("op '" + def_->name() + "': only stream ops take a kernel factory");
  parts_.factory = std::move(factory);
  return *this;
}

bool OpBuilder::RequireTensorOp(const char* what) {
  if (def_->kind() == OpDef::TENSOR) return true;
  errors_->push_back("op '" + def_->name() + "': only tensor ops take " + what);
  return false;
}

OpBuilder& OpBuilder::Shape(ShapeFn fn) {
  if (RequireTensorOp("a shape function")) parts_.shape = std::move(fn);
  return *this;
}

OpBuilder& OpBuilder::Kernel(const std::string& device, KernelFn fn, std::vector<DataType> dtypes) {
  if (!RequireTensorOp("kernels")) return *this;
  if (parts_.kernels.count(device))
    errors_->push_back("op '" + def_->name() + "': two kernels for device " + device);
  if (device != "cpu" && device != "cuda" && !IsDeviceType(device)) {
    errors_->push_back("op '" + def_->name() + "': kernel for unknown device '" + device +
                       "' (weir runs kernels on: cpu, cuda)");
  }
  KernelDef* k = def_->add_kernel();
  k->set_device(device);
  for (DataType t : dtypes) k->add_dtype(t);
  parts_.kernels[device] = {std::move(fn), std::move(dtypes)};
  return *this;
}

OpBuilder& OpBuilder::Gradient(GradientFn fn) {
  if (!RequireTensorOp("a gradient")) return *this;
  def_->set_has_gradient(true);
  parts_.gradient = std::move(fn);
  return *this;
}

OpBuilder& OpBuilder::Param(const std::string& name, ParamShapeFn shape, ParamInitFn init) {
  if (!RequireTensorOp("parameters")) return *this;
  def_->add_param(name);
  ParamDef param;
  param.name = name;
  param.shape = std::move(shape);
  param.init = std::move(init);
  parts_.params.push_back(std::move(param));
  return *this;
}

OpBuilder& OpBuilder::Param(const std::string& name, ParamShapeFn shape, Init init) {
  return Param(name, std::move(shape), [init](const Attrs&, const weir::Shape&) { return init; });
}

OpBuilder& OpBuilder::State(const std::string& name, ParamShapeFn shape, Init init,
                            const std::string& statistic, const std::string& update_op,
                            const std::string& enabled_by) {
  if (!RequireTensorOp("state parameters")) return *this;
  bool has_output = false;
  for (const PortDef& o : def_->output()) has_output = has_output || o.name() == statistic;
  if (!has_output) {
    errors_->push_back("op '" + def_->name() + "': state '" + name + "' names statistic output '" +
                       statistic + "', which is not declared (declare outputs first)");
  }
  Param(name, std::move(shape), init);
  ParamDef& param = parts_.params.back();
  param.statistic = statistic;
  param.update_op = update_op;
  param.enabled_by = enabled_by;
  return *this;
}

OpBuilder& OpBuilder::Cost(CostFn fn) {
  if (RequireTensorOp("a cost function")) parts_.cost = std::move(fn);
  return *this;
}

OpBuilder& OpBuilder::Cheap() {
  if (RequireTensorOp("Cheap()")) def_->set_cheap(true);
  return *this;
}

OpBuilder& OpBuilder::View() {
  if (RequireTensorOp("View()")) def_->set_view(true);
  return *this;
}

ResourceKindBuilder::ResourceKindBuilder(ResourceKindDef* def, std::vector<std::string>* errors)
    : def_(def), attrs_(def->mutable_attr(), errors, "resource kind '" + def->name() + "'") {}

ResourceKindBuilder& ResourceKindBuilder::Doc(const std::string& doc) {
  def_->set_doc(doc);
  return *this;
}

OpBuilder& Registrar::AddOp(const std::string& name, OpDef::Kind kind) {
  if (!ValidOpName(name)) {
    errors_.push_back("op name '" + name +
                      "' must be namespaced like 'family.Name' (lower-case family, then a dot)");
  }
  StagedOp staged;
  staged.def = std::make_unique<OpDef>();
  staged.def->set_name(name);
  staged.def->set_kind(kind);
  staged.def->set_since_version(1);
  staged.builder = std::make_unique<OpBuilder>(staged.def.get(), &errors_);
  ops_.push_back(std::move(staged));
  return *ops_.back().builder;
}

OpBuilder& Registrar::StreamOp(const std::string& name) { return AddOp(name, OpDef::STREAM); }

void Registrar::Kernel(const std::string& op, const std::string& device, KernelFn fn,
                       std::vector<DataType> dtypes) {
  for (StagedOp& staged : ops_) {
    if (staged.def->name() == op) {
      staged.builder->Kernel(device, std::move(fn), std::move(dtypes));
      return;
    }
  }
  errors_.push_back("a " + device + " kernel for op '" + op +
                    "', which this plugin does not declare (declare the op first)");
}
OpBuilder& Registrar::TensorOp(const std::string& name) { return AddOp(name, OpDef::TENSOR); }

ResourceKindBuilder& Registrar::ResourceKind(const std::string& name) {
  StagedResourceKind staged;
  staged.def = std::make_unique<ResourceKindDef>();
  staged.def->set_name(name);
  staged.builder = std::make_unique<ResourceKindBuilder>(staged.def.get(), &errors_);
  resource_kinds_.push_back(std::move(staged));
  return *resource_kinds_.back().builder;
}

}  // namespace weir
