// What a tensor op provides besides its schema: shape inference, kernels, a gradient and the
// parameters it owns. Registered through OpBuilder (registrar.h):
//
//   r.TensorOp("nn.RMSNorm")
//       .Input("x", "T").Output("y", "T")
//       .Param("weight", [](const ShapeContext& c) { return Shape{c.input(0).shape.back()}; },
//              Init::Ones())
//       .Shape(RmsNormShape).Kernel("cpu", RmsNormCpu, {DT_F32, DT_BF16, DT_F64})
//       .Gradient(RmsNormGrad);
//
// Parameters are inputs the op declares and the model creates: they follow the data inputs,
// are named "<node>.<param>", and receive gradients like any input, except state parameters
// (OpBuilder::State), which are updated by a rule after each optimizer step instead. A gradient
// builder emits one group of nodes per input; nodes whose results feed only parameter gradients
// become "W" (weight gradient) nodes, the rest "B" (input gradient) nodes, so pipeline schedules
// can run them apart.
#pragma once

#include <functional>
#include <map>
#include <string>
#include <vector>

#include "weir/attrs.h"
#include "weir/status.h"
#include "weir/tensor.h"

namespace weir {

struct TensorType {
  DataType dtype = DT_F32;
  Shape shape;
  std::string ToString() const { return std::string(DataTypeName(dtype)) + ShapeString(shape); }
  bool operator==(const TensorType&) const = default;
};

class ShapeContext {
 public:
  ShapeContext(const std::vector<TensorType>* inputs, const Attrs* attrs, int num_outputs)
      : inputs_(inputs), attrs_(attrs), outputs_(static_cast<size_t>(num_outputs)) {}

  int num_inputs() const { return static_cast<int>(inputs_->size()); }
  const TensorType& input(int i) const { return inputs_->at(static_cast<size_t>(i)); }
  const Attrs& attrs() const { return *attrs_; }
  void set_output(int i, TensorType t) { outputs_.at(static_cast<size_t>(i)) = std::move(t); }
  const std::vector<TensorType>& outputs() const { return outputs_; }

 private:
  const std::vector<TensorType>* inputs_;
  const Attrs* attrs_;
  std::vector<TensorType> outputs_;
};

// Infers output types from input types and attrs; a mismatch is an InvalidArgument naming both
// shapes (the caller adds the node and its place in the graph file).
using ShapeFn = std::function<Status(ShapeContext& ctx)>;

// Where a kernel of a device other than the host runs: its stream, and scratch memory.
class DeviceContext {
 public:
  virtual ~DeviceContext() = default;
  virtual Device device() const = 0;
  // The stream the kernel queues its work on; the runtime waits for it.
  virtual StreamId stream() const = 0;
  // Scratch memory on the device for work queued on stream(): it may be released (the tensor
  // dropped) as soon as that work is queued, since later users of the memory queue after it.
  virtual StatusOr<Tensor> Empty(DataType dtype, const Shape& shape) const = 0;
  // Waits until the work queued on stream() so far has finished, for the rare kernel that needs
  // device results on the host to go on (MoE token counts for an all-to-all). Inside a TBB task
  // the worker thread runs other tasks meanwhile.
  virtual Status Synchronize() const = 0;
};

class KernelContext {
 public:
  KernelContext(std::vector<const Tensor*> inputs, std::vector<Tensor*> outputs, const Attrs* attrs,
                const DeviceContext* device = nullptr)
      : inputs_(std::move(inputs)), outputs_(std::move(outputs)), attrs_(attrs), device_(device) {}

  int num_inputs() const { return static_cast<int>(inputs_.size()); }
  const Tensor& input(int i) const { return *inputs_.at(static_cast<size_t>(i)); }
  // Allocated by the runtime with the inferred type before the kernel runs; contiguous.
  Tensor& output(int i) const { return *outputs_.at(static_cast<size_t>(i)); }
  int num_outputs() const { return static_cast<int>(outputs_.size()); }
  const Attrs& attrs() const { return *attrs_; }
  // Null for host kernels; the device, its stream and scratch memory for the others.
  const DeviceContext* device() const { return device_; }

 private:
  std::vector<const Tensor*> inputs_;
  std::vector<Tensor*> outputs_;
  const Attrs* attrs_;
  const DeviceContext* device_;
};

using KernelFn = std::function<Status(KernelContext& ctx)>;

// A symbolic value in a program being built: output `port` of node `node`.
struct ValueRef {
  int node = -1;
  int port = 0;
  bool valid() const { return node >= 0; }
  bool operator==(const ValueRef&) const = default;
  bool operator<(const ValueRef& o) const { return node != o.node ? node < o.node : port < o.port; }
};

// Lets a gradient builder add nodes to the program. Implemented by the runtime's autodiff.
class GradContext {
 public:
  virtual ~GradContext() = default;
  virtual int num_inputs() const = 0;
  virtual int num_outputs() const = 0;
  virtual ValueRef input(int i) const = 0;
  virtual ValueRef output(int i) const = 0;
  virtual const TensorType& input_type(int i) const = 0;
  virtual const TensorType& output_type(int i) const = 0;
  // The gradient flowing into output i; invalid when nothing downstream needs that output.
  virtual ValueRef grad(int i) const = 0;
  virtual const Attrs& attrs() const = 0;
  // Whether input i needs a gradient (false for integer inputs and inputs that lead to no
  // parameter or requested input).
  virtual bool needs_grad(int i) const = 0;
  // Adds a node; returns its outputs. Attrs not given take the op's defaults.
  virtual StatusOr<std::vector<ValueRef>> Op(const std::string& op, std::vector<ValueRef> inputs,
                                             std::map<std::string, AttrValue> attrs = {}) = 0;
  virtual void set_input_grad(int i, ValueRef grad) = 0;

  // Convenience for single-output ops.
  StatusOr<ValueRef> Op1(const std::string& op, std::vector<ValueRef> inputs,
                         std::map<std::string, AttrValue> attrs = {}) {
    WEIR_ASSIGN_OR_RETURN(auto outs, Op(op, std::move(inputs), std::move(attrs)));
    return outs.at(0);
  }
};

using GradientFn = std::function<Status(GradContext& ctx)>;

// What one run of an op costs, for planning (`weir plan`), from its input and output types
// (parameters included, after the data inputs) and attrs.
struct OpCost {
  double flops = 0;  // multiply-adds count two
  // The share of the op's parameters that one token uses (routed experts: K of E).
  double active_params = 1.0;
  // Elements per token that incremental decoding keeps for later tokens (a KV cache).
  double cached_elements_per_token = 0;
};
using CostFn = std::function<OpCost(const std::vector<TensorType>& inputs,
                                    const std::vector<TensorType>& outputs, const Attrs& attrs)>;

// How a parameter starts.
struct Init {
  enum Kind { kZeros, kOnes, kNormal, kUniform };
  Kind kind = kZeros;
  double scale = 0;  // normal: standard deviation; uniform: half-width
  static Init Zeros() { return {kZeros, 0}; }
  static Init Ones() { return {kOnes, 0}; }
  static Init Normal(double std) { return {kNormal, std}; }
  static Init Uniform(double bound) { return {kUniform, bound}; }
};

// A parameter's shape from the op's input types and attrs (ShapeContext without outputs).
using ParamShapeFn = std::function<StatusOr<Shape>(const ShapeContext& ctx)>;
// Its initializer, which may depend on attrs and shape (fan-in scaling).
using ParamInitFn = std::function<Init(const Attrs& attrs, const Shape& shape)>;

struct ParamDef {
  std::string name;
  ParamShapeFn shape;
  ParamInitFn init;
  // A state parameter is not trained: it takes no gradient and the optimizer skips it. Its op
  // output `statistic` is summed over every batch of an optimizer step; after the step the op
  // `update_op` (inputs: the current value and that sum; attrs: the owning node's attrs where
  // the names match) gives its new value. Further scalar outputs of the update op are metrics.
  std::string statistic;
  std::string update_op;
  // The bool attr that creates the parameter; empty: always created.
  std::string enabled_by;
  bool trainable() const { return update_op.empty(); }
};

}  // namespace weir
