// How plugins declare ops: a fluent builder that fills OpDef schemas (data) and attaches kernels.
//
//   void RegisterHead(weir::Registrar& r) {
//     r.StreamOp("io.Head")
//         .Doc("Passes the first n rows through and drops the rest.")
//         .Input("in", "batch").Output("out", "batch")
//         .Attr<int64_t>("n", 10, "rows to keep", weir::Min(0))
//         .Stateful()
//         .Factory([](const weir::NodeContext& ctx) { ... });
//   }
//
// Mistakes in a declaration (a default outside its bounds, a duplicate attr) are collected and
// reported when the plugin's registrations are committed; nothing is registered then.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <type_traits>
#include <vector>

#include "weir/attr.h"
#include "weir/op.pb.h"
#include "weir/status.h"
#include "weir/stream_kernel.h"
#include "weir/tensor_op.h"

namespace weir {

using StreamKernelFactory =
    std::function<StatusOr<std::unique_ptr<StreamKernel>>(const NodeContext& ctx)>;

// Attr constraints, passed after the doc string.
struct Min {
  explicit Min(double v) : value(v) {}
  double value;
};
struct Max {
  explicit Max(double v) : value(v) {}
  double value;
};
struct OneOf {
  OneOf(std::initializer_list<const char*> v) : values(v.begin(), v.end()) {}
  OneOf(std::initializer_list<int64_t> v) {
    for (int64_t x : v) values.push_back(std::to_string(x));
  }
  std::vector<std::string> values;  // literals, typed like the attr
};

template <typename T>
constexpr AttrType AttrTypeOf() {
  if constexpr (std::is_same_v<T, bool>)
    return ATTR_BOOL;
  else if constexpr (std::is_integral_v<T>)
    return ATTR_INT;
  else if constexpr (std::is_floating_point_v<T>)
    return ATTR_FLOAT;
  else if constexpr (std::is_same_v<T, std::string>)
    return ATTR_STRING;
  else if constexpr (std::is_same_v<T, std::vector<int64_t>>)
    return ATTR_INT_LIST;
  else if constexpr (std::is_same_v<T, std::vector<double>>)
    return ATTR_FLOAT_LIST;
  else if constexpr (std::is_same_v<T, std::vector<std::string>>)
    return ATTR_STRING_LIST;
  else
    static_assert(sizeof(T) == 0, "unsupported attr type: use AttrOfType");
}

// How a C++ default value is stored: text as std::string, integers as int64_t.
template <typename T>
using AttrStorage = std::conditional_t<
    std::is_convertible_v<T, std::string> && !std::is_same_v<T, bool>, std::string,
    std::conditional_t<std::is_integral_v<T> && !std::is_same_v<T, bool>, int64_t, T>>;

AttrValue ToAttrValue(bool v);
AttrValue ToAttrValue(int64_t v);
AttrValue ToAttrValue(double v);
AttrValue ToAttrValue(const std::string& v);
AttrValue ToAttrValue(const std::vector<int64_t>& v);
AttrValue ToAttrValue(const std::vector<double>& v);
AttrValue ToAttrValue(const std::vector<std::string>& v);

// Builds the attrs of an op or a resource kind.
class AttrListBuilder {
 public:
  AttrListBuilder(google::protobuf::RepeatedPtrField<AttrDef>* attrs,
                  std::vector<std::string>* errors, std::string owner)
      : attrs_(attrs), errors_(errors), owner_(std::move(owner)) {}

  // An attr with a default, or (default = nullopt) a required one.
  void Add(const std::string& name, AttrType type, std::optional<AttrValue> default_value,
           const std::string& doc);
  void Apply(const Min& m);
  void Apply(const Max& m);
  void Apply(const OneOf& o);
  // Checks the last attr's default against its constraints.
  void Finish();

 private:
  google::protobuf::RepeatedPtrField<AttrDef>* attrs_;
  std::vector<std::string>* errors_;
  std::string owner_;
};

class OpBuilder {
 public:
  OpBuilder(OpDef* def, std::vector<std::string>* errors);

  OpBuilder& Doc(const std::string& doc);
  OpBuilder& Input(const std::string& name, const std::string& type, const std::string& doc = "");
  OpBuilder& OptionalInput(const std::string& name, const std::string& type,
                           const std::string& doc = "");
  // Takes any number of connections; must be the last input.
  OpBuilder& VariadicInput(const std::string& name, const std::string& type,
                           const std::string& doc = "");
  OpBuilder& Output(const std::string& name, const std::string& type, const std::string& doc = "");
  // An output repeated as many times as the int attr `count_attr` says (a split into N parts);
  // must be the last output. Graphs name the parts by number: "split:0", "split:1", ...
  OpBuilder& VariadicOutput(const std::string& name, const std::string& type,
                            const std::string& count_attr, const std::string& doc = "");

  template <typename T, typename... Constraints>
  OpBuilder& Attr(const std::string& name, const T& default_value, const std::string& doc,
                  const Constraints&... constraints) {
    using V = AttrStorage<T>;
    return AttrOfType(name, AttrTypeOf<V>(), ToAttrValue(V(default_value)), doc, constraints...);
  }
  template <typename T, typename... Constraints>
  OpBuilder& RequiredAttr(const std::string& name, const std::string& doc,
                          const Constraints&... constraints) {
    return AttrOfType(name, AttrTypeOf<T>(), std::nullopt, doc, constraints...);
  }
  // Any attr type (dtype, shape, tensor, function, resource); default as a literal ("f32"), or
  // nullopt for a required attr.
  template <typename... Constraints>
  OpBuilder& AttrOfType(const std::string& name, AttrType type,
                        std::optional<AttrValue> default_value, const std::string& doc,
                        const Constraints&... constraints) {
    attrs_.Add(name, type, std::move(default_value), doc);
    (attrs_.Apply(constraints), ...);
    attrs_.Finish();
    return *this;
  }
  OpBuilder& AttrOfType(const std::string& name, AttrType type, const char* default_literal,
                        const std::string& doc);

  // Stateful ops run one item at a time, in arrival order.
  OpBuilder& Stateful();
  // Stateless ops run up to n items at once (0: as many as there are workers).
  OpBuilder& MaxConcurrency(int n);
  OpBuilder& SinceVersion(int version);
  OpBuilder& Factory(StreamKernelFactory factory);

  // Tensor ops.
  OpBuilder& Shape(ShapeFn fn);
  // A kernel for `device` ("cpu", "cuda") and the dtypes it handles (empty: any).
  OpBuilder& Kernel(const std::string& device, KernelFn fn, std::vector<DataType> dtypes = {});
  OpBuilder& Gradient(GradientFn fn);
  // A parameter the op owns; it becomes an extra input after the data inputs.
  OpBuilder& Param(const std::string& name, ParamShapeFn shape, ParamInitFn init);
  OpBuilder& Param(const std::string& name, ParamShapeFn shape, Init init);
  // A state parameter (see ParamDef): not trained, but set after every optimizer step by
  // `update_op` from the sum of the op's output `statistic` over the step's batches. Created only
  // when the bool attr `enabled_by` is true.
  OpBuilder& State(const std::string& name, ParamShapeFn shape, Init init,
                   const std::string& statistic, const std::string& update_op,
                   const std::string& enabled_by);
  // Cheap to recompute (norms, elementwise ops): the memory planner may recompute it in the
  // backward pass instead of keeping its output alive.
  OpBuilder& Cheap();
  // What a run costs (FLOPs, the share of parameters a token uses, cached elements per token),
  // for `weir plan`.
  OpBuilder& Cost(CostFn fn);
  // Output 0 holds input 0's elements in the same order and dtype, only shaped differently
  // (a reshape): programs make it a view of the input instead of running the kernel. The kernel
  // (a copy) still serves where a view cannot be used.
  OpBuilder& View();

  // What the registry takes over on commit.
  struct Parts {
    StreamKernelFactory factory;
    ShapeFn shape;
    std::map<std::string, std::pair<KernelFn, std::vector<DataType>>> kernels;
    GradientFn gradient;
    std::vector<ParamDef> params;
    CostFn cost;
  };
  Parts& parts() { return parts_; }

 private:
  bool RequireTensorOp(const char* what);

  OpDef* def_;
  std::vector<std::string>* errors_;
  AttrListBuilder attrs_;
  Parts parts_;
};

class ResourceContext;
using ResourceFactory =
    std::function<StatusOr<std::shared_ptr<Resource>>(const ResourceContext& ctx)>;

// What a resource factory may ask: its name, typed attrs and the run.
class ResourceContext {
 public:
  ResourceContext(std::string name, Attrs attrs, const RunEnv* env)
      : name_(std::move(name)), attrs_(std::move(attrs)), env_(env) {}
  const std::string& name() const { return name_; }
  const Attrs& attrs() const { return attrs_; }
  const RunEnv& env() const { return *env_; }
  std::filesystem::path InputPath(const std::string& path) const {
    std::filesystem::path p(path);
    return (p.is_absolute() ? p : env_->input_dir / p).lexically_normal();
  }

 private:
  std::string name_;
  Attrs attrs_;
  const RunEnv* env_;
};

class ResourceKindBuilder {
 public:
  ResourceKindBuilder(ResourceKindDef* def, std::vector<std::string>* errors);
  ResourceKindBuilder& Doc(const std::string& doc);
  ResourceKindBuilder& Factory(ResourceFactory factory) {
    factory_ = std::move(factory);
    return *this;
  }
  ResourceFactory& factory() { return factory_; }
  template <typename... Constraints>
  ResourceKindBuilder& AttrOfType(const std::string& name, AttrType type,
                                  std::optional<AttrValue> default_value, const std::string& doc) {
    attrs_.Add(name, type, std::move(default_value), doc);
    attrs_.Finish();
    return *this;
  }
  template <typename T, typename... Constraints>
  ResourceKindBuilder& Attr(const std::string& name, const T& default_value, const std::string& doc,
                            const Constraints&... constraints) {
    using V = AttrStorage<T>;
    attrs_.Add(name, AttrTypeOf<V>(), ToAttrValue(V(default_value)), doc);
    (attrs_.Apply(constraints), ...);
    attrs_.Finish();
    return *this;
  }
  template <typename T>
  ResourceKindBuilder& RequiredAttr(const std::string& name, const std::string& doc) {
    attrs_.Add(name, AttrTypeOf<T>(), std::nullopt, doc);
    attrs_.Finish();
    return *this;
  }

 private:
  ResourceKindDef* def_;
  AttrListBuilder attrs_;
  ResourceFactory factory_;
};

// Collects one plugin's registrations; the host commits them all or none.
class Registrar {
 public:
  Registrar() = default;
  Registrar(const Registrar&) = delete;
  Registrar& operator=(const Registrar&) = delete;

  OpBuilder& StreamOp(const std::string& name);
  OpBuilder& TensorOp(const std::string& name);
  ResourceKindBuilder& ResourceKind(const std::string& name);
  // Adds a kernel for `device` to op `op`, declared earlier by this registrar: a plugin's CUDA
  // kernels, built only when nvcc is found, register apart from the op's declaration.
  void Kernel(const std::string& op, const std::string& device, KernelFn fn,
              std::vector<DataType> dtypes = {});

  // Declaration mistakes found so far.
  const std::vector<std::string>& errors() const { return errors_; }

  struct StagedOp {
    std::unique_ptr<OpDef> def;
    std::unique_ptr<OpBuilder> builder;
  };
  struct StagedResourceKind {
    std::unique_ptr<ResourceKindDef> def;
    std::unique_ptr<ResourceKindBuilder> builder;
  };
  std::vector<StagedOp>& ops() { return ops_; }
  std::vector<StagedResourceKind>& resource_kinds() { return resource_kinds_; }

 private:
  OpBuilder& AddOp(const std::string& name, OpDef::Kind kind);

  std::vector<StagedOp> ops_;
  std::vector<StagedResourceKind> resource_kinds_;
  std::vector<std::string> errors_;
};

}  // namespace weir
