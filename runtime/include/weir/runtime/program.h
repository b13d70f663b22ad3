// Program: a tensor function compiled for execution.
//
//   instantiate (graph function + attrs) -> parameters (declared by op schemas, named by node
//   path) -> shape/dtype inference -> autodiff (one gradient registry, B/W-split backward nodes)
//   -> memory plan (one arena, buffers reused by liveness) -> kernel selection -> run.
//
// A Program is immutable once built and may run from several threads at once (each Run has its
// own arena). Parameters live outside it, in a ParamStore, so one model can be shared by several
// programs (a trainer and a generator).
#pragma once

#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "weir/graph.h"
#include "weir/op_registry.h"
#include "weir/tensor.h"
#include "weir/tensor_op.h"

namespace weir {

struct ParamInfo {
  std::string name;  // "layers.3.attn.wq.weight"
  TensorType type;   // as the op computes with it; masters are kept in f32
  Init init;
  // State parameters (OpBuilder::State) only: the op that sets the value after an optimizer
  // step, and the attrs of the node that owns it (the update op takes those it declares).
  std::string op;  // the op that owns it
  std::string update_op;
  std::string statistic;  // the value the update sums: "<node>.<output>"
  std::map<std::string, AttrValue> node_attrs;
  // Kept as it is: no gradient, no optimizer step, no state update (ProgramOptions::trainable).
  bool frozen = false;
  bool trainable() const { return update_op.empty(); }
};

// Whether the dotted node or parameter path ends with `pattern`, component by component, where a
// `*` component matches any one: `attn.wq_b` and `*.wq_b` match `moe_layers.3.attn.wq_b`, `wq`
// does not. (Hugging Face PEFT's target_modules name modules by such suffixes.)
bool MatchesPathSuffix(const std::string& path, const std::string& pattern);

// Nodes whose path matches `pattern` (MatchesPathSuffix) run op `to_op` instead of `from_op`,
// with `attrs` added to theirs: an adapter around a layer (LoRA) without editing the model's
// graph. A matched node of another op is an error. An empty pattern matches every node of
// `from_op` (an expert-parallel op for every moe.Experts).
struct NodeRewrite {
  std::string pattern;
  std::string from_op;
  std::string to_op;
  std::map<std::string, AttrValue> attrs;
};

struct ProgramOptions {
  // Where the program runs: "cpu" (the host), or a device such as "cuda:0" (weir/device.h), where
  // inputs and parameters may live on the host or the device (host ones are copied in).
  std::string device = "cpu";
  // On a device: Outputs stay there (a training loop whose optimizer runs on the device). Off:
  // each part of a run ends by copying the outputs it made to the host.
  bool outputs_on_device = false;
  // Build the backward pass from this function output (a scalar loss); empty: inference only.
  std::string loss;
  // The function outputs to compute (with `loss`); empty: all. Nodes that none of them needs
  // are left out, with their parameters: an inference program of a model asks for "logits" and
  // skips the training-only parts (a multi-token-prediction module).
  std::vector<std::string> outputs;
  // Function inputs that also need gradients (tests, input-gradient checks).
  std::vector<std::string> input_grads;
  // Prefix for node (and so parameter) names.
  std::string prefix;
  // Run every input-gradient (B) node before any weight-gradient (W) node, as zero-bubble
  // pipeline schedules do; otherwise nodes run in the order autodiff made them.
  bool defer_weight_grads = false;
  // Compute the outputs of ops marked Cheap (norms, elementwise ops) again in the backward pass
  // instead of keeping them alive from the forward pass.
  bool recompute = false;
  // Run independent nodes at the same time. The execution order is cut into waves of nodes that
  // do not read each other's outputs; a wave's nodes run concurrently on TBB (their GEMMs
  // single-threaded, so TBB alone fills the cores) and the memory plan keeps every value of a
  // wave alive for the whole wave. Off: one node at a time, each GEMM on all cores, which is
  // faster on 2 cores (config M bf16 950 vs 880 tokens/s) where every large op fills the machine.
  bool concurrent_nodes = false;
  // After every node, check its floating outputs for NaN and Inf; the first one found is an
  // error naming the node, its op and the output (a debugging aid: it reads every value).
  bool check_finite = false;
  // Applied while the function is instantiated, in order; the first that matches a node wins.
  std::vector<NodeRewrite> rewrites;
  // Parameters to train, by path patterns (MatchesPathSuffix); empty: all. The others are
  // frozen: they take no gradient (their weight-gradient nodes are never built).
  std::vector<std::string> trainable;
  // Build one stage of a pipeline (PipelineStage below); stages = 1: the whole function.
  struct Pipeline {
    int stages = 1;
    int stage = 0;
    // Where stages 1 .. stages-1 begin: the first node whose path starts with the pattern
    // ("moe_layers.1" begins at moe_layers.1.attn_norm). Empty: a cost model places the cuts.
    std::vector<std::string> starts;
  } pipeline;
};

// One stage of a function cut for pipeline parallelism. The function's nodes are cut, in their
// instantiated (topological) order, into `stages` contiguous parts. Without hints the cuts
// balance a cost (each node's share of the forward FLOPs plus its share of the parameter bytes)
// among the cut points that carry the fewest activation bytes (between layers: the residual
// stream), widening that set only as far as balance needs.
//
// A stage program takes the function's inputs (every stage reads the micro-batch), then its
// boundary inputs: the values earlier stages computed that this or a later stage reads. It
// returns the function's outputs its nodes compute, then its boundary outputs: the next stage's
// boundary inputs, passing through those it does not touch. Built with a loss, it also takes,
// after the boundary inputs, the gradient of every boundary output that carries one
// (`output_grad`), seeds the loss where this stage computes it, and returns in
// Outputs::input_grads the gradient of every boundary input that carries one (`input_grad`).
struct PipelineStage {
  int stage = 0;
  int stages = 1;
  std::vector<TensorType> inputs;   // boundary inputs
  std::vector<TensorType> outputs;  // boundary outputs
  std::vector<bool> input_grad;     // per boundary input: returns a gradient
  std::vector<bool> output_grad;    // per boundary output: takes a gradient
  // The first node of each stage, by path (what `starts` would name), for messages and docs.
  std::vector<std::string> first_nodes;
};

struct MemoryPlanStats {
  int64_t arena_bytes = 0;      // peak of the plan: what one run allocates for intermediates
  int64_t unplanned_bytes = 0;  // what the same values would take without reuse
  int num_values = 0;
};

// What a program's forward pass costs, from its ops' cost functions (OpBuilder::Cost).
struct ProgramCost {
  double forward_flops = 0;
  double cached_elements_per_token = 0;  // what incremental decoding keeps per token
  // The share of each parameter one token uses (1 unless an op says otherwise: routed experts).
  std::map<std::string, double> active_share;
};

struct ProgramStats {
  int forward_nodes = 0;
  int backward_b_nodes = 0;
  int backward_w_nodes = 0;
  int recomputed_nodes = 0;
  int waves = 0;        // steps of the schedule (the number of nodes when not concurrent)
  int widest_wave = 0;  // most nodes running at once
  MemoryPlanStats memory;
};

// Parameter values by name: f32 masters. Thread-safe for reads while nothing writes.
class ParamStore {
 public:
  // Creates every parameter of `params` missing from the store, initialized from `seed`
  // (deterministic per name, so adding a layer does not change the others).
  void Initialize(const std::vector<ParamInfo>& params, uint64_t seed);
  Tensor* Find(const std::string& name);
  const Tensor* Find(const std::string& name) const;
  void Set(const std::string& name, Tensor value) { values_[name] = std::move(value); }
  const std::map<std::string, Tensor>& values() const { return values_; }
  std::map<std::string, Tensor>& mutable_values() { return values_; }

 private:
  std::map<std::string, Tensor> values_;
};

class Program {
 public:
  static StatusOr<std::shared_ptr<const Program>> Build(
      const Graph& graph, const std::string& function,
      const std::map<std::string, AttrValue>& attrs, const std::vector<TensorType>& input_types,
      const OpRegistry& ops, const ProgramOptions& options);

  struct Outputs {
    std::vector<Tensor> values;                 // the function's outputs, in order
    std::map<std::string, Tensor> param_grads;  // by parameter name (compute dtype)
    std::vector<Tensor> input_grads;            // for options.input_grads, in order
    // For every state parameter, by its name: the statistic its update sums over the batches
    // of an optimizer step.
    std::map<std::string, Tensor> statistics;
  };

  // Runs forward (and backward when built with a loss). Inputs must match the build's types.
  StatusOr<Outputs> Run(const std::vector<Tensor>& inputs, const ParamStore& params) const;

  // A run in parts, as pipeline schedules run a stage: the forward pass (F), later the
  // input-gradient part of the backward pass (B), later the weight-gradient part (W). The
  // execution holds its arena, and so the forward's activations, until it is destroyed. W is
  // separable only in a program built with defer_weight_grads (otherwise B runs both).
  class Execution {
   public:
    ~Execution();
    // The forward pass over the inputs that precede the gradient seeds; afterwards outputs()
    // holds the function's values.
    Status Forward(std::vector<Tensor> inputs);
    // The B part, given the seeds (a stage's boundary output gradients; none for a whole
    // function), then W when `weights`.
    Status Backward(std::vector<Tensor> output_grads, bool weights);
    Status Weights();
    // What the parts run so far produced (gradients once Backward/Weights ran). On a device:
    // host copies, made as each part ended, unless the program keeps outputs on the device.
    Outputs outputs() const;

   private:
    friend class Program;
    struct State;
    explicit Execution(std::unique_ptr<State> state);
    std::unique_ptr<State> state_;
  };
  std::unique_ptr<Execution> Start(const ParamStore& params) const;

  const std::vector<ParamInfo>& params() const { return params_; }
  // Trained parameters the loss does not depend on (a head another loss uses): their gradient is
  // zero, and an optimizer should leave them alone, as PyTorch's skip parameters whose .grad is
  // None (a zero gradient would still move them by weight decay and momentum).
  const std::set<std::string>& params_without_gradient() const { return params_without_gradient_; }
  const std::vector<std::string>& output_names() const { return output_names_; }
  const ProgramStats& stats() const { return stats_; }
  // Built with options.pipeline: what the stage takes and gives beyond the function's own.
  const PipelineStage& stage() const { return stage_; }
  ProgramCost Cost() const;
  // The inferred output types of every forward op node, by node name (what `weir viz` prints on
  // a graph's edges).
  std::map<std::string, std::vector<TensorType>> ForwardTypes() const;
  // One line per node: "B  layers.0.mlp.w1/grad_x = nn.MatMul(...)", for debugging and docs.
  std::string DebugString() const;

  struct Node;
  ~Program();

 private:
  Program() = default;

  std::vector<Node> nodes_;
  std::vector<int> order_;  // execution order (node indices)
  // order_[waves_[w] .. waves_[w + 1]) may run concurrently; waves_.back() == order_.size().
  std::vector<size_t> waves_;
  // The first wave of B work and of W work (waves_.size() - 1 when there is none).
  size_t backward_wave_ = 0, weight_wave_ = 0;
  // Inputs Forward takes: the function's and the boundary inputs, not the gradient seeds.
  size_t forward_inputs_ = 0;
  PipelineStage stage_;
  std::vector<ParamInfo> params_;
  std::vector<std::string> output_names_;
  std::vector<ValueRef> outputs_;
  std::map<std::string, ValueRef> param_grads_;
  std::set<std::string> params_without_gradient_;
  std::map<std::string, ValueRef> statistics_;
  std::vector<ValueRef> input_grads_;
  std::vector<TensorType> input_types_;
  // Memory plan: byte offset in the arena of every planned value, by node and output (-1: not
  // planned). Indexed, not a map: a decoding step runs hundreds of tiny nodes, each looking up
  // its outputs' offsets.
  std::vector<std::vector<int64_t>> offsets_;
  ProgramStats stats_;
  std::string device_;
  bool outputs_on_device_ = false;
  bool check_finite_ = false;

  friend class ProgramBuilder;
};

}  // namespace weir
