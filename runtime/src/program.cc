#include "weir/runtime/program.h"

#include <tbb/parallel_for.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <limits>
#include <random>
#include <set>
#include <sstream>

#include "weir/device.h"
#include "weir/gemm.h"
#include "weir/runtime/trace.h"
#include "weir/runtime/world.h"

namespace weir {

struct Program::Node {
  enum Kind { kInput, kParam, kConstant, kOp, kAccumulate };
  enum Phase { kForward, kBackwardB, kBackwardW };
  Kind kind = kOp;
  Phase phase = kForward;
  std::string name;
  const OpEntry* entry = nullptr;
  Attrs attrs;
  std::vector<ValueRef> inputs;
  std::vector<TensorType> outputs;
  int index = -1;       // kInput: function input; kParam: parameter
  double constant = 0;  // kConstant: the fill value
  const KernelFn* kernel = nullptr;
  SourceLoc loc;
  bool view = false;  // output 0 is input 0's bytes reshaped: no kernel, no buffer of its own
};

Program::~Program() = default;

namespace {

constexpr int64_t kAlign = 64;

int64_t AlignedBytes(const TensorType& t) {
  int64_t bytes = NumElements(t.shape) * static_cast<int64_t>(DataTypeSize(t.dtype));
  return (bytes + kAlign - 1) / kAlign * kAlign;
}

// Sums tensors of one type into `out` (contiguous), accumulating in f32 (f64 for f64), in
// parallel chunks (each element's sum is the same whatever the chunking).
void SumInto(const std::vector<const Tensor*>& parts, Tensor& out) {
  std::vector<Tensor> dense;
  for (const Tensor* t : parts) dense.push_back(t->Contiguous());
  auto chunks = [&](auto&& f) {
    tbb::parallel_for(tbb::blocked_range<int64_t>(0, out.numel(), 1 << 14),
                      [&](const tbb::blocked_range<int64_t>& r) { f(r.begin(), r.end()); });
  };
  auto sum = [&](auto* o) {
    using T = std::remove_pointer_t<decltype(o)>;
    using Acc = std::conditional_t<std::is_same_v<T, double>, double, float>;
    std::vector<const T*> in;
    for (const Tensor& t : dense) in.push_back(t.data<T>());
    chunks([&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        Acc acc = 0;
        for (const T* p : in) acc += static_cast<Acc>(p[i]);
        o[i] = T(acc);
      }
    });
  };
  switch (out.dtype()) {
    case DT_F32:
      sum(out.data<float>());
      break;
    case DT_F64:
      sum(out.data<double>());
      break;
    case DT_BF16:
      sum(out.data<bf16>());
      break;
    default:
      chunks([&](int64_t begin, int64_t end) {
        for (int64_t i = begin; i < end; ++i) {
          double acc = 0;
          for (const Tensor& t : dense) acc += t.At(i);
          StoreFromDouble(out.raw_data(), out.dtype(), i, acc);
        }
      });
  }
}

// The index of the first NaN or Inf of a floating tensor, or -1.
int64_t FirstNonFinite(const Tensor& t) {
  if (!IsFloating(t.dtype())) return -1;
  Tensor d = t.Contiguous();
  for (int64_t i = 0; i < d.numel(); ++i)
    if (!std::isfinite(d.At(i))) return i;
  return -1;
}

// The kernels a device runs: "cuda" for cuda:N, known without a GPU so that programs for one can
// be built (and planned) anywhere; running needs the device.
std::string KernelDevice(const std::string& device) {
  auto name = ParseDeviceName(device);
  if (!name.ok()) return device;  // Build() reports the bad name
  if (name->host()) return "cpu";
  for (const std::string& candidate : {device, name->type + ":0"}) {
    auto runtime = FindDeviceRuntime(candidate);
    if (runtime.ok() && *runtime != nullptr) return (*runtime)->kernel_device();
  }
  return name->type;
}

}  // namespace

class ProgramBuilder {
 public:
  ProgramBuilder(Program& p, const OpRegistry& ops, const ProgramOptions& options)
      : p_(p), ops_(ops), options_(options), kernel_device_(KernelDevice(options.device)) {}

  Status Build(const Graph& graph, const std::string& function,
               const std::map<std::string, AttrValue>& attrs,
               const std::vector<TensorType>& input_types) {
    p_.device_ = options_.device;
    p_.outputs_on_device_ = options_.outputs_on_device;
    WEIR_RETURN_IF_ERROR(ParseDeviceName(options_.device).status());
    p_.check_finite_ = options_.check_finite;
    p_.input_types_ = input_types;
    WEIR_ASSIGN_OR_RETURN(FunctionInstance fn,
                          InstantiateFunction(graph, function, attrs, ops_, options_.prefix));
    if (input_types.size() != fn.inputs.size()) {
      return InvalidArgument("function '" + function + "' takes " +
                             std::to_string(fn.inputs.size()) + " inputs, given " +
                             std::to_string(input_types.size()));
    }
    WEIR_ASSIGN_OR_RETURN(std::vector<bool> needed, NeededNodes(fn, function));
    std::vector<int> stage_of(fn.nodes.size(), 0);  // every node in stage 0 unless cut
    std::vector<Boundary> boundary;
    const ProgramOptions::Pipeline& pipe = options_.pipeline;
    if (pipe.stages > 1 || pipe.stage != 0) {
      if (pipe.stages < 1 || pipe.stage < 0 || pipe.stage >= pipe.stages) {
        return InvalidArgument("pipeline stage " + std::to_string(pipe.stage) + " of " +
                               std::to_string(pipe.stages) + " does not exist");
      }
      WEIR_RETURN_IF_ERROR(PlanStages(function, fn, needed, input_types, stage_of, boundary));
    }
    const int stage = pipe.stage;
    std::vector<ValueRef> args;
    for (size_t i = 0; i < fn.inputs.size(); ++i)
      args.push_back(AddInput(fn.inputs[i], input_types[i]));
    // Values of earlier stages this stage reads or passes on.
    std::map<std::pair<int, int>, ValueRef> from_before;
    for (const Boundary& b : boundary) {
      if (!(b.producer_stage < stage && stage <= b.last_stage)) continue;
      from_before[{b.node, b.port}] = AddInput("stage_in." + b.name, b.type);
      p_.stage_.inputs.push_back(b.type);
      p_.stage_.input_grad.push_back(b.differentiable);
    }
    p_.forward_inputs_ = p_.input_types_.size();
    std::vector<int> index(fn.nodes.size(), -1);
    auto ref = [&](int node, int port) -> ValueRef {
      if (node < 0) return args.at(static_cast<size_t>(-1 - node));
      if (stage_of[static_cast<size_t>(node)] != stage) return from_before.at({node, port});
      return {index.at(static_cast<size_t>(node)), port};
    };
    for (size_t k = 0; k < fn.nodes.size(); ++k) {
      if (!needed[k] || stage_of[k] != stage) continue;
      const weir::Node& node = fn.nodes[k];
      std::vector<ValueRef> inputs;
      for (const weir::Node::Input& in : node.inputs) inputs.push_back(ref(in.node, in.port));
      WEIR_ASSIGN_OR_RETURN(ValueRef added, AddFunctionNode(node, std::move(inputs)));
      index[k] = added.node;
    }
    const int last = pipe.stages - 1;
    for (const FunctionInstance::Output& out : fn.outputs) {
      if (!Wanted(out.name)) continue;
      // An input passed straight through is the last stage's output.
      int owner = out.node < 0 ? last : stage_of[static_cast<size_t>(out.node)];
      if (owner != stage) continue;
      p_.output_names_.push_back(out.name);
      p_.outputs_.push_back(ref(out.node, out.port));
    }
    std::vector<ValueRef> seeded;  // boundary outputs that take a gradient
    for (const Boundary& b : boundary) {
      if (!(b.producer_stage <= stage && stage < b.last_stage)) continue;
      ValueRef v = ref(b.node, b.port);
      p_.output_names_.push_back("stage_out." + b.name);
      p_.outputs_.push_back(v);
      p_.stage_.outputs.push_back(b.type);
      p_.stage_.output_grad.push_back(b.differentiable);
      if (b.differentiable) seeded.push_back(v);
    }
    p_.stage_.stage = stage;
    p_.stage_.stages = pipe.stages;
    if (!options_.loss.empty()) {
      std::vector<ValueRef> grad_args;
      for (const std::string& name : options_.input_grads) {
        auto a = std::find(fn.inputs.begin(), fn.inputs.end(), name);
        if (a == fn.inputs.end()) return InvalidArgument("no function input '" + name + "'");
        grad_args.push_back(args[static_cast<size_t>(a - fn.inputs.begin())]);
      }
      for (const Boundary& b : boundary)
        if (b.differentiable && b.producer_stage < stage && stage <= b.last_stage)
          grad_args.push_back(from_before.at({b.node, b.port}));
      WEIR_RETURN_IF_ERROR(Backward(function, grad_args, seeded));
    }
    LabelBackward();
    if (options_.recompute) Recompute();
    CountNodes();
    Schedule();
    FormWaves();
    PlanMemory();
    return Status();
  }

 private:
  // A value that crosses a pipeline cut: computed in `producer_stage`, read up to `last_stage`.
  struct Boundary {
    int node = -1, port = 0;  // in the function instance
    std::string name;         // "<node>:<port>"
    TensorType type;
    int producer_stage = 0, last_stage = 0;
    bool differentiable = false;  // floating and dependent on a trained parameter
  };

  bool Wanted(const std::string& output) const {
    return options_.outputs.empty() || output == options_.loss ||
           std::count(options_.outputs.begin(), options_.outputs.end(), output);
  }

  // The nodes the requested outputs need (all of them when none are named).
  StatusOr<std::vector<bool>> NeededNodes(const FunctionInstance& fn,
                                          const std::string& function) const {
    std::vector<bool> needed(fn.nodes.size(), options_.outputs.empty());
    for (const FunctionInstance::Output& out : fn.outputs)
      if (Wanted(out.name) && out.node >= 0) needed[static_cast<size_t>(out.node)] = true;
    for (const std::string& name : options_.outputs) {
      bool found = false;
      for (const FunctionInstance::Output& out : fn.outputs) found = found || out.name == name;
      if (!found)
        return InvalidArgument("function '" + function + "' has no output '" + name + "'");
    }
    for (size_t k = fn.nodes.size(); k-- > 0;) {
      if (!needed[k]) continue;
      for (const weir::Node::Input& in : fn.nodes[k].inputs)
        if (in.node >= 0) needed[static_cast<size_t>(in.node)] = true;
    }
    return needed;
  }

  // Input k of the program: the function's inputs come first (their types given to Build).
  ValueRef AddInput(const std::string& name, const TensorType& type,
                    Program::Node::Phase phase = Program::Node::kForward) {
    Program::Node n;
    n.kind = Program::Node::kInput;
    n.phase = phase;
    n.name = name;
    n.index = inputs_added_++;
    n.outputs = {type};
    if (static_cast<size_t>(n.index) >= p_.input_types_.size()) p_.input_types_.push_back(type);
    return Add(std::move(n));
  }

  // Cuts the needed nodes of `fn` into options_.pipeline.stages stages (stage_of) and lists the
  // values that cross a cut. The whole forward function is built once, without a loss, for the
  // types, costs and gradient dependence of every value.
  Status PlanStages(const std::string& function, const FunctionInstance& fn,
                    const std::vector<bool>& needed, const std::vector<TensorType>& input_types,
                    std::vector<int>& stage_of, std::vector<Boundary>& boundary) {
    const ProgramOptions::Pipeline& pipe = options_.pipeline;
    Program whole;
    ProgramOptions whole_options = options_;
    whole_options.loss.clear();
    whole_options.pipeline = {};
    ProgramBuilder builder(whole, ops_, whole_options);
    std::vector<ValueRef> args;
    for (size_t i = 0; i < fn.inputs.size(); ++i)
      args.push_back(builder.AddInput(fn.inputs[i], input_types[i]));
    std::vector<int> index(fn.nodes.size(), -1);
    std::vector<int> order;  // the needed nodes, in order
    for (size_t k = 0; k < fn.nodes.size(); ++k) {
      if (!needed[k]) continue;
      const weir::Node& node = fn.nodes[k];
      std::vector<ValueRef> inputs;
      for (const weir::Node::Input& in : node.inputs) {
        inputs.push_back(in.node < 0 ? args.at(static_cast<size_t>(-1 - in.node))
                                     : ValueRef{index.at(static_cast<size_t>(in.node)), in.port});
      }
      WEIR_ASSIGN_OR_RETURN(ValueRef added, builder.AddFunctionNode(node, std::move(inputs)));
      index[k] = added.node;
      order.push_back(static_cast<int>(k));
    }
    const size_t n = order.size();
    if (n < static_cast<size_t>(pipe.stages)) {
      return InvalidArgument("function '" + function + "' has " + std::to_string(n) +
                             " nodes, too few for " + std::to_string(pipe.stages) +
                             " pipeline stages");
    }
    std::vector<bool> requires_grad = builder.RequiresGrad({});
    std::vector<size_t> position(fn.nodes.size(), 0);
    for (size_t i = 0; i < n; ++i) position[static_cast<size_t>(order[i])] = i;
    // Every value's last reader, by position; function outputs are read by no one.
    std::map<std::pair<int, int>, size_t> last_read;
    for (size_t i = 0; i < n; ++i) {
      for (const weir::Node::Input& in : fn.nodes[static_cast<size_t>(order[i])].inputs) {
        if (in.node < 0) continue;
        size_t& r = last_read[{in.node, in.port}];
        r = std::max(r, i);
      }
    }
    // Bytes crossing the cut after position i, and each node's cost.
    std::vector<double> crossing(n, 0), cost(n, 0);
    for (const auto& [value, reader] : last_read) {
      const TensorType& t =
          whole.nodes_[static_cast<size_t>(index[static_cast<size_t>(value.first)])]
              .outputs[static_cast<size_t>(value.second)];
      double bytes = static_cast<double>(AlignedBytes(t));
      for (size_t i = position[static_cast<size_t>(value.first)]; i < reader; ++i)
        crossing[i] += bytes;
    }
    double total_flops = 0, total_param_bytes = 0;
    std::vector<double> flops(n, 0), param_bytes(n, 0);
    for (size_t i = 0; i < n; ++i) {
      const Program::Node& node =
          whole.nodes_[static_cast<size_t>(index[static_cast<size_t>(order[i])])];
      std::vector<TensorType> types;
      for (ValueRef v : node.inputs) {
        const Program::Node& in = whole.nodes_[static_cast<size_t>(v.node)];
        types.push_back(in.outputs[static_cast<size_t>(v.port)]);
        if (in.kind == Program::Node::kParam) param_bytes[i] += AlignedBytes(in.outputs[0]);
      }
      if (node.entry->cost) flops[i] = node.entry->cost(types, node.outputs, node.attrs).flops;
      total_flops += flops[i];
      total_param_bytes += param_bytes[i];
    }
    for (size_t i = 0; i < n; ++i) {
      cost[i] = (total_flops > 0 ? flops[i] / total_flops : 0) +
                (total_param_bytes > 0 ? param_bytes[i] / total_param_bytes : 0) +
                1e-9;  // nodes without either still weigh something: no empty stages
    }
    std::vector<size_t> starts;  // position where each stage after the first begins
    if (!pipe.starts.empty()) {
      WEIR_ASSIGN_OR_RETURN(starts, StartsFromHints(function, fn, order));
    } else {
      starts = BalancedCuts(cost, crossing, pipe.stages);
    }
    p_.stage_.first_nodes = {fn.nodes[static_cast<size_t>(order[0])].name};
    for (size_t s : starts)
      p_.stage_.first_nodes.push_back(fn.nodes[static_cast<size_t>(order[s])].name);
    for (size_t i = 0, s = 0; i < n; ++i) {
      while (s < starts.size() && i >= starts[s]) ++s;
      stage_of[static_cast<size_t>(order[i])] = static_cast<int>(s);
    }
    for (const auto& [value, reader] : last_read) {
      auto [node, port] = value;
      int from = stage_of[static_cast<size_t>(node)];
      int to = stage_of[static_cast<size_t>(order[reader])];
      if (to == from) continue;
      const Program::Node& made =
          whole.nodes_[static_cast<size_t>(index[static_cast<size_t>(node)])];
      Boundary b;
      b.node = node;
      b.port = port;
      b.name = fn.nodes[static_cast<size_t>(node)].name + ":" + std::to_string(port);
      b.type = made.outputs[static_cast<size_t>(port)];
      b.producer_stage = from;
      b.last_stage = to;
      b.differentiable = IsFloating(b.type.dtype) &&
                         requires_grad[static_cast<size_t>(index[static_cast<size_t>(node)])];
      boundary.push_back(std::move(b));
    }
    // Pass-through order: by the producer's position, so every stage agrees.
    std::sort(boundary.begin(), boundary.end(), [&](const Boundary& a, const Boundary& b) {
      return std::make_pair(position[static_cast<size_t>(a.node)], a.port) <
             std::make_pair(position[static_cast<size_t>(b.node)], b.port);
    });
    return Status();
  }

  StatusOr<std::vector<size_t>> StartsFromHints(const std::string& function,
                                                const FunctionInstance& fn,
                                                const std::vector<int>& order) const {
    const ProgramOptions::Pipeline& pipe = options_.pipeline;
    if (static_cast<int>(pipe.starts.size()) != pipe.stages - 1) {
      return InvalidArgument(
          std::to_string(pipe.stages) + " pipeline stages need " + std::to_string(pipe.stages - 1) +
          " stage starts (where stages 1.. begin), given " + std::to_string(pipe.starts.size()));
    }
    std::vector<size_t> starts;
    for (const std::string& pattern : pipe.starts) {
      size_t found = order.size();
      for (size_t i = 0; i < order.size() && found == order.size(); ++i) {
        const std::string& name = fn.nodes[static_cast<size_t>(order[i])].name;
        if (name == pattern || name.starts_with(pattern + ".")) found = i;
      }
      if (found == order.size()) {
        return InvalidArgument("stage start '" + pattern + "' names no node of function '" +
                               function + "' (give a node path prefix such as '" +
                               fn.nodes[static_cast<size_t>(order[order.size() / 2])].name + "')");
      }
      if (found == 0 || (!starts.empty() && found <= starts.back())) {
        return InvalidArgument("stage start '" + pattern + "' (node '" +
                               fn.nodes[static_cast<size_t>(order[found])].name +
                               "') does not come after the previous stage's first node: stage "
                               "starts go in the function's order and leave no stage empty");
      }
      starts.push_back(found);
    }
    return starts;
  }

  // Cut positions (the first position of stages 1..S-1) minimizing the largest stage cost,
  // among the positions whose crossing bytes are at most a threshold: the smallest threshold
  // whose best cut is within 25% of the best cut with every position allowed.
  static std::vector<size_t> BalancedCuts(const std::vector<double>& cost,
                                          const std::vector<double>& crossing, int stages) {
    const size_t n = cost.size();
    std::vector<double> prefix(n + 1, 0);
    for (size_t i = 0; i < n; ++i) prefix[i + 1] = prefix[i] + cost[i];
    // Minimizes the largest stage over cuts at allowed positions (a stage may begin at i when
    // allowed[i]); returns the cost and the starts (empty when impossible).
    auto solve = [&](const std::vector<bool>& allowed) {
      const double inf = std::numeric_limits<double>::infinity();
      std::vector<size_t> candidates;
      for (size_t i = 1; i < n; ++i)
        if (allowed[i]) candidates.push_back(i);
      candidates.push_back(n);
      const size_t m = candidates.size();
      // best[s][j]: the largest stage cost of s+1 stages covering [0, candidates[j]).
      std::vector<std::vector<double>> best(static_cast<size_t>(stages),
                                            std::vector<double>(m, inf));
      std::vector<std::vector<size_t>> from(static_cast<size_t>(stages), std::vector<size_t>(m, 0));
      for (size_t j = 0; j < m; ++j) best[0][j] = prefix[candidates[j]];
      for (size_t s = 1; s < static_cast<size_t>(stages); ++s) {
        for (size_t j = s; j < m; ++j) {
          for (size_t k = s - 1; k < j; ++k) {
            double v = std::max(best[s - 1][k], prefix[candidates[j]] - prefix[candidates[k]]);
            if (v < best[s][j]) {
              best[s][j] = v;
              from[s][j] = k;
            }
          }
        }
      }
      std::vector<size_t> starts;
      double value = best[static_cast<size_t>(stages) - 1][m - 1];
      if (!std::isfinite(value)) return std::make_pair(value, starts);
      for (size_t s = static_cast<size_t>(stages) - 1, j = m - 1; s > 0; --s) {
        j = from[s][j];
        starts.push_back(candidates[j]);
      }
      std::reverse(starts.begin(), starts.end());
      return std::make_pair(value, starts);
    };
    // A cut before position i carries crossing[i - 1].
    std::vector<double> levels;
    for (size_t i = 1; i < n; ++i) levels.push_back(crossing[i - 1]);
    std::sort(levels.begin(), levels.end());
    levels.erase(std::unique(levels.begin(), levels.end()), levels.end());
    auto allowed_at = [&](double level) {
      std::vector<bool> allowed(n, false);
      for (size_t i = 1; i < n; ++i) allowed[i] = crossing[i - 1] <= level;
      return allowed;
    };
    auto unrestricted = solve(allowed_at(levels.back()));
    // Balance improves as the threshold rises: search the lowest level that is good enough.
    size_t lo = 0, hi = levels.size() - 1;
    while (lo < hi) {
      size_t mid = (lo + hi) / 2;
      auto tried = solve(allowed_at(levels[mid]));
      if (std::isfinite(tried.first) && tried.first <= 1.25 * unrestricted.first)
        hi = mid;
      else
        lo = mid + 1;
    }
    return solve(allowed_at(levels[lo])).second;
  }

 private:
  // A forward node of the function instance reading `inputs`, as options_.rewrites have it.
  StatusOr<ValueRef> AddFunctionNode(const weir::Node& node, std::vector<ValueRef> inputs) {
    std::map<std::string, AttrValue> typed(node.attrs.begin(), node.attrs.end());
    const OpEntry* entry = node.entry;
    WEIR_RETURN_IF_ERROR(Rewrite(node, entry, typed));
    return AddOp(entry, node.name, std::move(inputs), std::move(typed), node.loc,
                 /*forward=*/true);
  }

  // The op a node runs and its attrs after options_.rewrites.
  Status Rewrite(const weir::Node& node, const OpEntry*& entry,
                 std::map<std::string, AttrValue>& attrs) const {
    for (const NodeRewrite& r : options_.rewrites) {
      if (r.pattern.empty() ? entry->def.name() != r.from_op
                            : !MatchesPathSuffix(node.name, r.pattern))
        continue;
      if (entry->def.name() != r.from_op) {
        return InvalidArgument("'" + r.pattern + "' names a node of op " + entry->def.name() +
                               "; it should name " + r.from_op + " nodes")
            .At(node.loc)
            .InNode(node.name, entry->def.name());
      }
      entry = ops_.Find(r.to_op);
      if (entry == nullptr)
        return NotFound("no tensor op '" + r.to_op + "' to rewrite " + r.from_op);
      for (const auto& [k, v] : r.attrs) attrs[k] = v;
      return Status();
    }
    return Status();
  }

  bool Frozen(const std::string& param) const {
    if (options_.trainable.empty()) return false;
    for (const std::string& pattern : options_.trainable)
      if (MatchesPathSuffix(param, pattern)) return false;
    return true;
  }

  ValueRef Add(Program::Node n) {
    p_.nodes_.push_back(std::move(n));
    return {static_cast<int>(p_.nodes_.size()) - 1, 0};
  }
  // A parameter leaf that takes a gradient.
  bool Trained(const Program::Node& param) const {
    const ParamInfo& info = p_.params_[static_cast<size_t>(param.index)];
    return info.trainable() && !info.frozen;
  }
  const TensorType& TypeOf(ValueRef v) const {
    return p_.nodes_.at(static_cast<size_t>(v.node)).outputs.at(static_cast<size_t>(v.port));
  }

  // Adds an op node: fills attr defaults, creates its parameters, infers its output types and
  // picks its kernel.
  StatusOr<ValueRef> AddOp(const OpEntry* entry, const std::string& name,
                           std::vector<ValueRef> inputs, std::map<std::string, AttrValue> attrs,
                           const SourceLoc& loc, bool forward) {
    auto fail = [&](Status s) { return s.At(loc).InNode(name, entry->def.name()); };
    if (entry->def.kind() != OpDef::TENSOR) {
      return fail(InvalidArgument("stream op '" + entry->def.name() +
                                  "' cannot run inside a tensor function"));
    }
    for (const AttrDef& d : entry->def.attr()) {
      if (attrs.count(d.name())) {
        Status c = CheckAttrConstraints(d, attrs[d.name()]);
        if (!c.ok()) return fail(c.InAttr(d.name()));
      } else if (AttrValueIsSet(d.default_value())) {
        attrs[d.name()] = d.default_value();
      } else {
        return fail(InvalidArgument("missing required attr '" + d.name() + "'"));
      }
    }
    Program::Node n;
    n.kind = Program::Node::kOp;
    n.phase = forward ? Program::Node::kForward : Program::Node::kBackwardB;
    n.name = name;
    n.entry = entry;
    n.loc = loc;
    n.attrs = Attrs(std::move(attrs), "op '" + entry->def.name() + "'");
    std::vector<TensorType> types;
    for (ValueRef v : inputs) types.push_back(TypeOf(v));
    if (!entry->params.empty() && !forward) {
      return fail(Internal("a gradient builder added op '" + entry->def.name() +
                           "', which owns parameters"));
    }
    std::vector<std::pair<std::string, std::string>> states;  // parameter, statistic output
    for (const ParamDef& pd : entry->params) {
      if (!pd.enabled_by.empty() && !n.attrs.Bool(pd.enabled_by)) continue;
      ShapeContext sc(&types, &n.attrs, 0);
      auto shape = pd.shape(sc);
      if (!shape.ok()) return fail(Status(shape.status()).Prepend("parameter '" + pd.name + "'"));
      // State parameters keep their own dtype (f32): they are not computed with in T.
      DataType dtype = n.attrs.Has("T") && pd.trainable() ? n.attrs.Type("T") : DT_F32;
      ParamInfo info;
      info.name = name + "." + pd.name;
      info.type = {dtype, *shape};
      info.init = pd.init(n.attrs, *shape);
      info.op = entry->def.name();
      info.frozen = Frozen(info.name);
      if (!pd.trainable()) {
        info.update_op = pd.update_op;
        info.statistic = name + "." + pd.statistic;
        info.node_attrs = n.attrs.values();
        states.emplace_back(info.name, pd.statistic);
      }
      Program::Node leaf;
      leaf.kind = Program::Node::kParam;
      leaf.name = info.name;
      leaf.index = static_cast<int>(p_.params_.size());
      leaf.outputs = {info.type};
      p_.params_.push_back(info);
      ValueRef ref = Add(std::move(leaf));
      inputs.push_back(ref);
      types.push_back(info.type);
    }
    if (!entry->shape) return fail(Internal("op has no shape function"));
    int outputs = NumOutputs(entry->def, [&](const std::string& a) {
      return n.attrs.Has(a) ? &n.attrs.Get(a) : nullptr;
    });
    ShapeContext sc(&types, &n.attrs, outputs);
    Status shaped = entry->shape(sc);
    if (!shaped.ok()) return fail(shaped);
    n.outputs = sc.outputs();
    DataType key = n.outputs.empty() ? types.at(0).dtype : n.outputs[0].dtype;
    n.kernel = entry->FindKernel(kernel_device_, key);
    n.view = entry->def.view() && !types.empty() && n.outputs.size() == 1 &&
             n.outputs[0].dtype == types[0].dtype &&
             NumElements(n.outputs[0].shape) == NumElements(types[0].shape);
    if (n.kernel == nullptr) {
      std::string have;
      for (const KernelDef& k : entry->def.kernel()) {
        have += (have.empty() ? "" : ", ") + k.device() + "(";
        for (int i = 0; i < k.dtype_size(); ++i)
          have += std::string(i ? " " : "") + DataTypeName(k.dtype(i));
        have += k.dtype_size() ? ")" : "any)";
      }
      return fail(NotFound("no " + kernel_device_ + " kernel for dtype " + DataTypeName(key) +
                           " (registered: " + (have.empty() ? "none" : have) + ")"));
    }
    n.inputs = std::move(inputs);
    const OpDef& def = entry->def;
    ValueRef added = Add(std::move(n));
    for (const auto& [param, statistic] : states) {
      for (int o = 0; o < def.output_size(); ++o)
        if (def.output(o).name() == statistic) p_.statistics_[param] = {added.node, o};
    }
    return added;
  }

  class GradBuilder : public GradContext {
   public:
    GradBuilder(ProgramBuilder& b, int node, std::vector<ValueRef> grads,
                const std::vector<bool>& needs)
        : b_(b),
          node_(node),
          grads_(std::move(grads)),
          needs_(needs),
          input_grads_(b.p_.nodes_[static_cast<size_t>(node)].inputs.size()) {}

    const Program::Node& n() const { return b_.p_.nodes_[static_cast<size_t>(node_)]; }
    int num_inputs() const override { return static_cast<int>(n().inputs.size()); }
    int num_outputs() const override { return static_cast<int>(n().outputs.size()); }
    ValueRef input(int i) const override { return n().inputs.at(static_cast<size_t>(i)); }
    ValueRef output(int i) const override { return {node_, i}; }
    const TensorType& input_type(int i) const override { return b_.TypeOf(input(i)); }
    const TensorType& output_type(int i) const override {
      return n().outputs.at(static_cast<size_t>(i));
    }
    ValueRef grad(int i) const override { return grads_.at(static_cast<size_t>(i)); }
    const Attrs& attrs() const override { return n().attrs; }
    bool needs_grad(int i) const override { return needs_.at(static_cast<size_t>(i)); }
    StatusOr<std::vector<ValueRef>> Op(const std::string& op, std::vector<ValueRef> inputs,
                                       std::map<std::string, AttrValue> attrs) override {
      const OpEntry* entry = b_.ops_.Find(op);
      if (entry == nullptr) {
        return Internal("the gradient of '" + n().entry->def.name() + "' uses unknown op '" + op +
                        "'");
      }
      std::string name = n().name + "/grad." + std::to_string(++count_) + "." + op;
      WEIR_ASSIGN_OR_RETURN(ValueRef first, b_.AddOp(entry, name, std::move(inputs),
                                                     std::move(attrs), n().loc, false));
      std::vector<ValueRef> outs;
      int made = static_cast<int>(b_.p_.nodes_.at(static_cast<size_t>(first.node)).outputs.size());
      for (int p = 0; p < made; ++p) outs.push_back({first.node, p});
      return outs;
    }
    void set_input_grad(int i, ValueRef g) override { input_grads_.at(static_cast<size_t>(i)) = g; }
    const std::vector<ValueRef>& input_grads() const { return input_grads_; }

   private:
    ProgramBuilder& b_;
    int node_;
    std::vector<ValueRef> grads_;
    const std::vector<bool>& needs_;
    std::vector<ValueRef> input_grads_;
    int count_ = 0;
  };

  // Sums the contributions to one value's gradient.
  ValueRef Sum(const std::vector<ValueRef>& parts, const std::string& name) {
    if (parts.size() == 1) return parts[0];
    Program::Node n;
    n.kind = Program::Node::kAccumulate;
    n.phase = Program::Node::kBackwardB;
    n.name = name + "/grad.sum";
    n.inputs = parts;
    n.outputs = {TypeOf(parts[0])};
    return Add(std::move(n));
  }

  ValueRef Constant(const TensorType& type, double value, const std::string& name) {
    Program::Node n;
    n.kind = Program::Node::kConstant;
    n.phase = Program::Node::kBackwardB;
    n.name = name;
    n.constant = value;
    n.outputs = {type};
    return Add(std::move(n));
  }

  // Which nodes depend on a trained parameter or on one of `wanted` (inputs that take a
  // gradient), among the nodes built so far.
  std::vector<bool> RequiresGrad(const std::set<int>& wanted) const {
    std::vector<bool> requires_grad(p_.nodes_.size(), false);
    for (size_t i = 0; i < p_.nodes_.size(); ++i) {
      const Program::Node& n = p_.nodes_[i];
      if (n.kind == Program::Node::kParam)
        requires_grad[i] = IsFloating(n.outputs[0].dtype) && Trained(n);
      if (n.kind == Program::Node::kInput) requires_grad[i] = wanted.count(static_cast<int>(i));
      if (n.kind == Program::Node::kOp)
        for (ValueRef v : n.inputs)
          requires_grad[i] = requires_grad[i] || requires_grad[static_cast<size_t>(v.node)];
    }
    return requires_grad;
  }

  // The backward pass: from the loss (when this program computes it) and from the gradients of
  // `seeded` values given as inputs, to every trained parameter and to the inputs `grad_args`.
  Status Backward(const std::string& function, const std::vector<ValueRef>& grad_args,
                  const std::vector<ValueRef>& seeded) {
    auto it = std::find(p_.output_names_.begin(), p_.output_names_.end(), options_.loss);
    bool has_loss = it != p_.output_names_.end();
    if (!has_loss && options_.pipeline.stages == 1) {
      return InvalidArgument("function '" + function + "' has no output '" + options_.loss +
                             "' to differentiate");
    }
    std::set<int> wanted_args;
    for (ValueRef a : grad_args) wanted_args.insert(a.node);
    size_t forward_end = p_.nodes_.size();
    backward_start_ = forward_end;
    std::vector<bool> requires_grad = RequiresGrad(wanted_args);
    std::map<ValueRef, std::vector<ValueRef>> pending;
    if (has_loss) {
      ValueRef loss = p_.outputs_[static_cast<size_t>(it - p_.output_names_.begin())];
      const TensorType& lt = TypeOf(loss);
      if (NumElements(lt.shape) != 1 || !IsFloating(lt.dtype)) {
        return InvalidArgument("loss output '" + options_.loss +
                               "' must be a floating scalar, is " + lt.ToString());
      }
      pending[loss].push_back(Constant(lt, 1.0, options_.loss + "/grad.seed"));
    }
    for (ValueRef v : seeded) {
      TensorType type = TypeOf(v);
      std::string name = p_.nodes_[static_cast<size_t>(v.node)].name;
      pending[v].push_back(AddInput(name + "/grad.in", type, Program::Node::kBackwardB));
    }
    for (size_t i = forward_end; i-- > 0;) {
      if (p_.nodes_[i].kind != Program::Node::kOp || !requires_grad[i]) continue;
      std::vector<ValueRef> grads;
      bool any = false;
      // Sum adds nodes, so nodes_ may move: no reference into it lives across the loop.
      const std::string name = p_.nodes_[i].name;
      for (size_t o = 0; o < p_.nodes_[i].outputs.size(); ++o) {
        auto pit = pending.find({static_cast<int>(i), static_cast<int>(o)});
        ValueRef g = pit == pending.end() ? ValueRef{} : Sum(pit->second, name);
        if (g.valid()) activation_grads_.insert(g);
        grads.push_back(g);
        any = any || pit != pending.end();
      }
      if (!any) continue;
      const Program::Node& n = p_.nodes_[i];
      std::vector<bool> needs;
      for (ValueRef v : n.inputs)
        needs.push_back(requires_grad[static_cast<size_t>(v.node)] && IsFloating(TypeOf(v).dtype));
      const OpEntry* entry = n.entry;
      std::string node_name = n.name;
      SourceLoc loc = n.loc;
      if (!entry->gradient) {
        return InvalidArgument("op '" + entry->def.name() + "' has no gradient (plugin " +
                               entry->def.plugin() + " registers none), but '" + options_.loss +
                               "' needs the gradient of its inputs")
            .At(loc)
            .InNode(node_name, entry->def.name());
      }
      GradBuilder ctx(*this, static_cast<int>(i), grads, needs);
      Status s = entry->gradient(ctx);
      if (!s.ok()) return s.At(loc).InNode(node_name, entry->def.name());
      const Program::Node& again = p_.nodes_[i];  // nodes_ may have grown
      for (size_t k = 0; k < again.inputs.size(); ++k) {
        ValueRef g = ctx.input_grads()[k];
        if (!g.valid()) {
          if (needs[k]) {
            return Internal("the gradient of '" + entry->def.name() +
                            "' gave no gradient for input " + std::to_string(k))
                .At(loc)
                .InNode(node_name, entry->def.name());
          }
          continue;
        }
        if (!(TypeOf(g) == TypeOf(again.inputs[k]))) {
          return Internal("the gradient of '" + entry->def.name() + "' for input " +
                          std::to_string(k) + " is " + TypeOf(g).ToString() + ", the input is " +
                          TypeOf(again.inputs[k]).ToString())
              .At(loc)
              .InNode(node_name, entry->def.name());
        }
        if (p_.nodes_[static_cast<size_t>(again.inputs[k].node)].kind != Program::Node::kParam)
          activation_grads_.insert(g);
        pending[again.inputs[k]].push_back(g);
      }
    }
    for (size_t i = 0; i < forward_end; ++i) {
      const Program::Node& n = p_.nodes_[i];
      if (n.kind != Program::Node::kParam || !Trained(n)) continue;
      std::string name = n.name;
      TensorType type = n.outputs[0];
      auto pit = pending.find({static_cast<int>(i), 0});
      if (pit == pending.end()) p_.params_without_gradient_.insert(name);
      ValueRef g =
          pit == pending.end() ? Constant(type, 0.0, name + "/grad.zero") : Sum(pit->second, name);
      p_.param_grads_[name] = g;
    }
    for (ValueRef arg : grad_args) {
      auto pit = pending.find(arg);
      TensorType type = TypeOf(arg);
      std::string name = p_.nodes_[static_cast<size_t>(arg.node)].name;
      ValueRef g =
          pit == pending.end() ? Constant(type, 0.0, name + "/grad.zero") : Sum(pit->second, name);
      activation_grads_.insert(g);
      p_.input_grads_.push_back(g);
    }
    return Status();
  }

  // For every node, the nodes that read one of its outputs.
  std::vector<std::vector<int>> Consumers() const {
    std::vector<std::vector<int>> consumers(p_.nodes_.size());
    for (size_t j = 0; j < p_.nodes_.size(); ++j)
      for (ValueRef v : p_.nodes_[j].inputs)
        consumers[static_cast<size_t>(v.node)].push_back(static_cast<int>(j));
    return consumers;
  }

  // B (input-gradient) work is every backward node that some activation gradient depends on;
  // the rest only feeds parameter gradients and is W (weight-gradient) work, which a pipeline
  // schedule may run later.
  void LabelBackward() {
    size_t n = p_.nodes_.size();
    std::vector<std::vector<int>> consumers = Consumers();
    std::vector<bool> b(n, false);
    for (size_t i = n; i-- > 0;) {
      Program::Node& node = p_.nodes_[i];
      if (node.phase == Program::Node::kForward) continue;
      for (size_t o = 0; o < node.outputs.size(); ++o)
        b[i] = b[i] || activation_grads_.count({static_cast<int>(i), static_cast<int>(o)}) > 0;
      for (int c : consumers[i]) b[i] = b[i] || b[static_cast<size_t>(c)];
      node.phase = b[i] ? Program::Node::kBackwardB : Program::Node::kBackwardW;
    }
  }

  void CountNodes() {
    for (const Program::Node& node : p_.nodes_) {
      if (node.kind != Program::Node::kOp && node.kind != Program::Node::kAccumulate) continue;
      if (node.phase == Program::Node::kForward) ++p_.stats_.forward_nodes;
      if (node.phase == Program::Node::kBackwardB) ++p_.stats_.backward_b_nodes;
      if (node.phase == Program::Node::kBackwardW) ++p_.stats_.backward_w_nodes;
      if (node.name.ends_with("/recompute")) ++p_.stats_.recomputed_nodes;
    }
  }

  // Outputs of cheap forward ops (norms, elementwise ops) that the backward pass reads are
  // computed again right before their first backward use instead of being kept from the forward
  // pass: their forward buffers die early. A clone runs in the phase (B or W) of the work that
  // needs it.
  void Recompute() {
    size_t forward_end = backward_start_;
    std::set<ValueRef> kept(p_.outputs_.begin(), p_.outputs_.end());
    for (const auto& [name, v] : p_.statistics_) kept.insert(v);
    std::vector<int> clones;
    for (size_t i = forward_end; i-- > 0;) {
      const Program::Node& f = p_.nodes_[i];
      if (f.kind != Program::Node::kOp || !f.entry->def.cheap()) continue;
      bool is_output = false;
      for (size_t o = 0; o < f.outputs.size(); ++o)
        is_output = is_output || kept.count({static_cast<int>(i), static_cast<int>(o)});
      if (is_output) continue;
      std::vector<std::pair<size_t, size_t>> uses;
      for (size_t j = forward_end; j < p_.nodes_.size(); ++j) {
        const auto& inputs = p_.nodes_[j].inputs;
        for (size_t k = 0; k < inputs.size(); ++k)
          if (inputs[k].node == static_cast<int>(i)) uses.push_back({j, k});
      }
      if (uses.empty()) continue;
      Program::Node clone = f;
      clone.name += "/recompute";
      int c = Add(std::move(clone)).node;
      for (auto [j, k] : uses) p_.nodes_[j].inputs[k].node = c;
      clones.push_back(c);
    }
    // Clones made later are read by clones made earlier: label in creation order.
    std::vector<std::vector<int>> consumers = Consumers();
    for (int c : clones) {
      bool b = false;
      for (int u : consumers[static_cast<size_t>(c)])
        b = b || p_.nodes_[static_cast<size_t>(u)].phase == Program::Node::kBackwardB;
      p_.nodes_[static_cast<size_t>(c)].phase =
          b ? Program::Node::kBackwardB : Program::Node::kBackwardW;
    }
  }

  // Execution order: creation order, W work after all B work when deferred, and each recompute
  // clone just before the first node that reads it.
  void Schedule() {
    size_t n = p_.nodes_.size();
    std::vector<double> key(n);
    double offset = static_cast<double>(n);
    for (size_t i = 0; i < n; ++i) {
      bool deferred =
          options_.defer_weight_grads && p_.nodes_[i].phase == Program::Node::kBackwardW;
      key[i] = static_cast<double>(i) + (deferred ? offset : 0.0);
    }
    std::vector<std::vector<int>> consumers = Consumers();
    // Clones come last in creation order, and a later clone feeds earlier ones (it recomputes
    // an earlier forward op): walk them forwards so each consumer's key is known first.
    for (size_t i = backward_start_; i < n; ++i) {
      if (!p_.nodes_[i].name.ends_with("/recompute")) continue;
      double first = 1e300;
      for (int u : consumers[i]) first = std::min(first, key[static_cast<size_t>(u)]);
      key[i] = first - 1e-6;
    }
    p_.order_.resize(n);
    for (size_t i = 0; i < n; ++i) p_.order_[i] = static_cast<int>(i);
    std::stable_sort(p_.order_.begin(), p_.order_.end(), [&](int a, int b) {
      return key[static_cast<size_t>(a)] < key[static_cast<size_t>(b)];
    });
  }

  // Cuts the execution order into waves: a node joins the current wave unless it reads a value
  // the wave produces. A wave never mixes forward and backward work, nor (when deferred) B and
  // W work, so Program::Execution can run the parts separately.
  void FormWaves() {
    constexpr size_t kMaxWave = 16;
    auto part = [&](const Program::Node& node) {
      if (node.phase == Program::Node::kForward) return 0;
      return options_.defer_weight_grads && node.phase == Program::Node::kBackwardW ? 2 : 1;
    };
    p_.waves_ = {0};
    std::set<int> in_wave;
    int current = 0;
    size_t first[3] = {0, 0, 0};
    bool seen[3] = {true, false, false};
    for (size_t k = 0; k < p_.order_.size(); ++k) {
      const Program::Node& node = p_.nodes_[static_cast<size_t>(p_.order_[k])];
      bool depends = !options_.concurrent_nodes || in_wave.size() >= kMaxWave;
      for (ValueRef v : node.inputs) depends = depends || in_wave.count(v.node) > 0;
      depends = depends || part(node) != current;
      if (depends && k > p_.waves_.back()) {
        p_.waves_.push_back(k);
        in_wave.clear();
      }
      current = part(node);
      if (!seen[current]) {
        seen[current] = true;
        first[current] = p_.waves_.size() - 1;
      }
      in_wave.insert(p_.order_[k]);
    }
    p_.waves_.push_back(p_.order_.size());
    size_t end = p_.waves_.size() - 1;
    p_.weight_wave_ = seen[2] ? first[2] : end;
    p_.backward_wave_ = seen[1] ? first[1] : p_.weight_wave_;
    p_.stats_.waves = static_cast<int>(end);
    for (size_t w = 0; w + 1 < p_.waves_.size(); ++w) {
      p_.stats_.widest_wave =
          std::max(p_.stats_.widest_wave, static_cast<int>(p_.waves_[w + 1] - p_.waves_[w]));
    }
  }

  // Greedy first-fit placement of every intermediate in one arena, by liveness in waves: a
  // value lives from the wave that makes it through the last wave that reads it, so nodes
  // running together never share memory.
  void PlanMemory() {
    size_t n = p_.nodes_.size();
    std::vector<size_t> step(n);  // the wave each node runs in
    for (size_t w = 0; w + 1 < p_.waves_.size(); ++w)
      for (size_t k = p_.waves_[w]; k < p_.waves_[w + 1]; ++k)
        step[static_cast<size_t>(p_.order_[k])] = w;
    std::map<ValueRef, size_t> last_use;
    for (size_t i = 0; i < n; ++i) {
      for (ValueRef v : p_.nodes_[i].inputs) {
        size_t& lu = last_use[v];
        lu = std::max(lu, step[i]);
      }
    }
    std::vector<ValueRef> kept(p_.outputs_.begin(), p_.outputs_.end());
    for (const auto& [name, v] : p_.param_grads_) kept.push_back(v);
    for (const auto& [name, v] : p_.statistics_) kept.push_back(v);
    kept.insert(kept.end(), p_.input_grads_.begin(), p_.input_grads_.end());
    for (ValueRef v : kept) last_use[v] = n;
    // A view's bytes belong to the value it views (its root), which lives as long as the view.
    auto root = [&](ValueRef v) {
      while (p_.nodes_[static_cast<size_t>(v.node)].view)
        v = p_.nodes_[static_cast<size_t>(v.node)].inputs[0];
      return v;
    };
    std::vector<std::pair<ValueRef, size_t>> view_uses;
    for (const auto& [v, lu] : last_use)
      if (p_.nodes_[static_cast<size_t>(v.node)].view) view_uses.push_back({root(v), lu});
    for (const auto& [r, lu] : view_uses) last_use[r] = std::max(last_use[r], lu);
    struct Interval {
      ValueRef v;
      size_t begin, end;
      int64_t bytes;
    };
    std::vector<Interval> values;
    for (size_t i = 0; i < n; ++i) {
      const Program::Node& node = p_.nodes_[i];
      if (node.kind == Program::Node::kInput || node.kind == Program::Node::kParam || node.view)
        continue;
      for (size_t o = 0; o < node.outputs.size(); ++o) {
        ValueRef v{static_cast<int>(i), static_cast<int>(o)};
        auto lu = last_use.find(v);
        values.push_back({v, step[i], lu == last_use.end() ? step[i] : lu->second,
                          AlignedBytes(node.outputs[o])});
      }
    }
    std::vector<size_t> order(values.size());
    for (size_t i = 0; i < order.size(); ++i) order[i] = i;
    std::stable_sort(order.begin(), order.end(),
                     [&](size_t a, size_t b) { return values[a].bytes > values[b].bytes; });
    p_.offsets_.assign(n, {});
    for (size_t i = 0; i < n; ++i) p_.offsets_[i].assign(p_.nodes_[i].outputs.size(), -1);
    std::vector<std::pair<int64_t, size_t>> placed;  // (offset, value index)
    int64_t arena = 0, unplanned = 0;
    for (size_t k : order) {
      const Interval& v = values[k];
      unplanned += v.bytes;
      // Candidate offsets: 0 and the end of every placed value that overlaps in time.
      std::vector<std::pair<int64_t, int64_t>> busy;
      for (const auto& [off, j] : placed) {
        const Interval& u = values[j];
        if (u.begin <= v.end && v.begin <= u.end) busy.push_back({off, off + u.bytes});
      }
      std::sort(busy.begin(), busy.end());
      int64_t offset = 0;
      for (const auto& [lo, hi] : busy) {
        if (offset + v.bytes <= lo) break;
        offset = std::max(offset, hi);
      }
      placed.push_back({offset, k});
      p_.offsets_[static_cast<size_t>(v.v.node)][static_cast<size_t>(v.v.port)] = offset;
      arena = std::max(arena, offset + v.bytes);
    }
    p_.stats_.memory = {arena, unplanned, static_cast<int>(values.size())};
  }

  Program& p_;
  const OpRegistry& ops_;
  const ProgramOptions& options_;
  std::string kernel_device_;
  std::set<ValueRef> activation_grads_;
  size_t backward_start_ = 0;
  int inputs_added_ = 0;
};

StatusOr<std::shared_ptr<const Program>> Program::Build(
    const Graph& graph, const std::string& function, const std::map<std::string, AttrValue>& attrs,
    const std::vector<TensorType>& input_types, const OpRegistry& ops,
    const ProgramOptions& options) {
  std::shared_ptr<Program> p(new Program());
  ProgramBuilder builder(*p, ops, options);
  WEIR_RETURN_IF_ERROR(builder.Build(graph, function, attrs, input_types));
  return std::shared_ptr<const Program>(std::move(p));
}

struct Program::Execution::State {
  ~State();
  const Program* program;
  const ParamStore* params;
  // A device run (ProgramOptions::device other than the host): its runtime and stream. Values
  // live on the device; inputs and parameters are copied in by their nodes, and each part
  // (forward, B, W) ends by waiting for the stream and copying the outputs it made to the host.
  DeviceRuntime* device = nullptr;
  StreamId stream = 0;
  std::unique_ptr<StreamContext> run_device;
  Status device_error;                 // the device could not be set up: every part fails with it
  std::vector<Tensor> host_staging;    // host memory that queued copies read, kept until the wait
  std::map<ValueRef, Tensor> on_host;  // outputs copied back from the device
  std::shared_ptr<Storage> arena;
  std::vector<Tensor> inputs;
  std::vector<std::vector<Tensor>> values;
  // A traced run (weir run --trace) records every op node; only the calling thread's trace is
  // known, so nodes of a concurrent wave that run on other threads record into it explicitly.
  Trace* trace = nullptr;
  Communicator* shard_group = nullptr;  // ShardGroup() of the thread that started the run
  enum Part { kNone, kForward, kBackward, kWeights } done = kNone;

  const Tensor& value(ValueRef v) const {
    return values[static_cast<size_t>(v.node)][static_cast<size_t>(v.port)];
  }
  Status RunNode(size_t i);
  Status RunWaves(size_t begin_wave, size_t end_wave);
  // Device runs: memory on the device, and a host tensor's copy in it.
  StatusOr<Tensor> DeviceEmpty(const TensorType& t) const {
    return run_device->Empty(t.dtype, t.shape);
  }
  StatusOr<Tensor> ToDevice(const Tensor& host, DataType dtype);
  // Device runs: waits for the stream, then copies the program outputs computed so far to host.
  Status FinishPart();
};

Program::Execution::State::~State() {
  values.clear();
  inputs.clear();
  arena.reset();
  run_device.reset();
  // Memory freed above is ordered after the stream's work; the stream is reused once idle.
  if (device != nullptr) {
    (void)device->Synchronize(stream);
    device->ReleaseStream(stream);
  }
}

StatusOr<Tensor> Program::Execution::State::ToDevice(const Tensor& host, DataType dtype) {
  if (host.device() == device->device()) {
    if (host.dtype() == dtype) return host;
    WEIR_ASSIGN_OR_RETURN(Tensor t, DeviceEmpty({dtype, host.shape()}));
    WEIR_RETURN_IF_ERROR(
        device->Convert(host.raw_data(), host.dtype(), t.raw_data(), dtype, t.numel(), stream));
    return t;
  }
  if (host.device().type != DeviceType::kCpu) {
    return InvalidArgument("a tensor on " + host.device().ToString() + " given to a program on " +
                           device->device().ToString());
  }
  Tensor staged = host.dtype() == dtype ? host.Contiguous() : host.To(dtype);
  WEIR_ASSIGN_OR_RETURN(Tensor t, DeviceEmpty({dtype, host.shape()}));
  WEIR_RETURN_IF_ERROR(device->CopyToDevice(t.raw_data(), staged.raw_data(), t.nbytes(), stream));
  host_staging.push_back(std::move(staged));
  return t;
}

Status Program::Execution::State::FinishPart() {
  if (device == nullptr) return Status();
  const Program& p = *program;
  if (p.outputs_on_device_) return device->Synchronize(stream);
  std::vector<ValueRef> wanted = p.outputs_;
  for (const auto& [name, v] : p.param_grads_) wanted.push_back(v);
  for (const auto& [name, v] : p.statistics_) wanted.push_back(v);
  for (ValueRef v : p.input_grads_) wanted.push_back(v);
  for (ValueRef v : wanted) {
    if (on_host.count(v) ||
        values[static_cast<size_t>(v.node)].size() <= static_cast<size_t>(v.port))
      continue;
    const Tensor& d = value(v);
    Tensor h = Tensor::Empty(d.dtype(), d.shape());
    WEIR_RETURN_IF_ERROR(device->CopyToHost(h.raw_data(), d.raw_data(), d.nbytes(), stream));
    on_host[v] = std::move(h);
  }
  Status done = device->Synchronize(stream);
  host_staging.clear();
  return done;
}

// Runs one node; writes only values[i], reads only values of earlier waves.
Status Program::Execution::State::RunNode(size_t i) {
  const Program& p = *program;
  const Node& n = p.nodes_[i];
  std::vector<Tensor>& out = values[i];
  auto planned = [&](size_t o) {
    const TensorType& t = n.outputs[o];
    int64_t offset = p.offsets_[i][o];
    return Tensor::FromStorage(arena, t.dtype, t.shape,
                               offset / static_cast<int64_t>(DataTypeSize(t.dtype)));
  };
  const ParamStore& params = *this->params;
  ShardGroupScope group(shard_group);  // the node may run on a worker thread of a wave
  switch (n.kind) {
    case Node::kInput: {
      const Tensor& in = inputs[static_cast<size_t>(n.index)];
      if (in.dtype() != n.outputs[0].dtype || in.shape() != n.outputs[0].shape) {
        return InvalidArgument("input '" + n.name + "' is " + in.DebugString() +
                               ", the program was built for " + n.outputs[0].ToString());
      }
      if (device == nullptr) {
        out = {in.Contiguous()};
        return Status();
      }
      auto started = std::chrono::steady_clock::now();
      auto copied = ToDevice(in, in.dtype());
      if (!copied.ok()) return Status(copied.status()).InNode(n.name);
      if (trace != nullptr) trace->Complete(n.name, "copy to " + p.device_, started, "F");
      out = {*copied};
      return Status();
    }
    case Node::kParam: {
      const Tensor* master = params.Find(n.name);
      if (master == nullptr) return NotFound("parameter '" + n.name + "' is not in the model");
      if (master->shape() != n.outputs[0].shape) {
        return InvalidArgument("parameter '" + n.name + "' is " + master->DebugString() +
                               ", the program needs " + n.outputs[0].ToString());
      }
      if (device == nullptr) {
        out = {master->dtype() == n.outputs[0].dtype ? *master : master->To(n.outputs[0].dtype)};
        return Status();
      }
      auto started = std::chrono::steady_clock::now();
      auto copied = ToDevice(*master, n.outputs[0].dtype);
      if (!copied.ok()) return Status(copied.status()).InNode(n.name);
      if (trace != nullptr && master->device() != device->device())
        trace->Complete(n.name, "copy to " + p.device_, started, "F");
      out = {*copied};
      return Status();
    }
    case Node::kConstant: {
      Tensor t = planned(0);
      if (device != nullptr) {
        WEIR_RETURN_IF_ERROR(device->Fill(t.raw_data(), t.dtype(), t.numel(), n.constant, stream));
      } else {
        for (int64_t k = 0; k < t.numel(); ++k)
          StoreFromDouble(t.raw_data(), t.dtype(), k, n.constant);
      }
      out = {t};
      return Status();
    }
    case Node::kAccumulate: {
      Tensor t = planned(0);
      if (device != nullptr) {
        std::vector<const void*> parts;
        for (ValueRef v : n.inputs) parts.push_back(value(v).raw_data());
        WEIR_RETURN_IF_ERROR(device->Sum(parts, t.raw_data(), t.dtype(), t.numel(), stream));
      } else {
        std::vector<const Tensor*> parts;
        for (ValueRef v : n.inputs) parts.push_back(&value(v));
        SumInto(parts, t);
      }
      out = {t};
      return Status();
    }
    case Node::kOp: {
      if (n.view) {
        auto view = value(n.inputs[0]).Reshape(n.outputs[0].shape);
        if (!view.ok()) return Status(view.status()).At(n.loc).InNode(n.name, n.entry->def.name());
        out = {*view};
        return Status();
      }
      std::vector<Tensor> made;
      for (size_t o = 0; o < n.outputs.size(); ++o) made.push_back(planned(o));
      std::vector<const Tensor*> ins;
      for (ValueRef v : n.inputs) {
        if (values[static_cast<size_t>(v.node)].size() <= static_cast<size_t>(v.port))
          return Internal("node '" + n.name + "' is scheduled before its input '" +
                          p.nodes_[static_cast<size_t>(v.node)].name + "'");
        ins.push_back(&value(v));
      }
      std::vector<Tensor*> outs;
      for (Tensor& t : made) outs.push_back(&t);
      KernelContext ctx(std::move(ins), std::move(outs), &n.attrs, run_device.get());
      Status s;
      auto started = std::chrono::steady_clock::now();
      try {
        s = (*n.kernel)(ctx);
      } catch (const std::exception& e) {
        s = Internal(std::string("kernel threw: ") + e.what());
      }
      if (trace != nullptr) {
        static const char* const kPhases[] = {"F", "B", "W"};
        trace->Complete(n.name, n.entry->def.name(), started, kPhases[n.phase]);
      }
      if (!s.ok()) return s.At(n.loc).InNode(n.name, n.entry->def.name());
      if (p.check_finite_) {
        for (size_t o = 0; o < made.size(); ++o) {
          Tensor host = made[o];
          if (device != nullptr) {  // a debugging aid: a wait per node is acceptable
            host = Tensor::Empty(made[o].dtype(), made[o].shape());
            WEIR_RETURN_IF_ERROR(
                device->CopyToHost(host.raw_data(), made[o].raw_data(), host.nbytes(), stream));
            WEIR_RETURN_IF_ERROR(device->Synchronize(stream));
          }
          int64_t at = FirstNonFinite(host);
          if (at < 0) continue;
          std::string port =
              n.entry->def
                  .output(std::min<int>(static_cast<int>(o), n.entry->def.output_size() - 1))
                  .name();
          return InvalidArgument("output '" + port + "' " + made[o].DebugString() + " holds " +
                                 std::to_string(host.At(at)) + " at element " + std::to_string(at) +
                                 " (check_finite)")
              .At(n.loc)
              .InNode(n.name, n.entry->def.name());
        }
      }
      out = std::move(made);
      return Status();
    }
  }
  return Internal("unknown node kind");
}

Status Program::Execution::State::RunWaves(size_t begin_wave, size_t end_wave) {
  const Program& p = *program;
  for (size_t w = begin_wave; w < end_wave; ++w) {
    size_t begin = p.waves_[w], end = p.waves_[w + 1];
    if (end - begin == 1) {
      WEIR_RETURN_IF_ERROR(RunNode(static_cast<size_t>(p.order_[begin])));
      continue;
    }
    std::vector<Status> status(end - begin);
    tbb::parallel_for(begin, end, [&](size_t k) {
      SingleThreadedGemms one_thread;  // the wave's nodes already share out the cores
      status[k - begin] = RunNode(static_cast<size_t>(p.order_[k]));
    });
    for (const Status& st : status) WEIR_RETURN_IF_ERROR(st);
  }
  return Status();
}

Program::Execution::Execution(std::unique_ptr<State> state) : state_(std::move(state)) {}
Program::Execution::~Execution() = default;

std::unique_ptr<Program::Execution> Program::Start(const ParamStore& params) const {
  auto state = std::make_unique<Execution::State>();
  state->program = this;
  state->params = &params;
  state->values.resize(nodes_.size());
  auto device = FindDeviceRuntime(device_);
  if (!device.ok()) {
    state->device_error = Status(device.status()).Prepend("program");
  } else if (*device != nullptr) {
    auto stream = (*device)->AcquireStream();
    if (!stream.ok()) {
      state->device_error = stream.status();
    } else {
      state->device = *device;
      state->stream = *stream;
      state->run_device = std::make_unique<StreamContext>(*device, *stream);
      auto arena = (*device)->Allocate(static_cast<size_t>(stats_.memory.arena_bytes), *stream);
      if (arena.ok())
        state->arena = *arena;
      else
        state->device_error = arena.status();
    }
  } else {
    state->arena = Storage::Allocate(static_cast<size_t>(stats_.memory.arena_bytes));
  }
  state->trace = Trace::Current();
  state->shard_group = ShardGroup();
  return std::unique_ptr<Execution>(new Execution(std::move(state)));
}

Status Program::Execution::Forward(std::vector<Tensor> inputs) {
  State& st = *state_;
  const Program& p = *st.program;
  if (st.done != State::kNone) return FailedPrecondition("the forward pass already ran");
  if (inputs.size() != p.forward_inputs_) {
    return InvalidArgument("program takes " + std::to_string(p.forward_inputs_) +
                           " inputs, given " + std::to_string(inputs.size()));
  }
  st.inputs = std::move(inputs);
  st.done = State::kForward;
  WEIR_RETURN_IF_ERROR(st.device_error);
  WEIR_RETURN_IF_ERROR(st.RunWaves(0, p.backward_wave_));
  return st.FinishPart();
}

Status Program::Execution::Backward(std::vector<Tensor> output_grads, bool weights) {
  State& st = *state_;
  const Program& p = *st.program;
  if (st.done != State::kForward) return FailedPrecondition("backward runs once, after forward");
  size_t seeds = p.input_types_.size() - p.forward_inputs_;
  if (output_grads.size() != seeds) {
    return InvalidArgument("the backward pass takes " + std::to_string(seeds) +
                           " output gradients, given " + std::to_string(output_grads.size()));
  }
  for (Tensor& g : output_grads) st.inputs.push_back(std::move(g));
  st.done = State::kBackward;
  WEIR_RETURN_IF_ERROR(st.RunWaves(p.backward_wave_, p.weight_wave_));
  WEIR_RETURN_IF_ERROR(st.FinishPart());
  return weights ? Weights() : Status();
}

Status Program::Execution::Weights() {
  State& st = *state_;
  const Program& p = *st.program;
  if (st.done != State::kBackward) return FailedPrecondition("W runs once, after B");
  st.done = State::kWeights;
  WEIR_RETURN_IF_ERROR(st.RunWaves(p.weight_wave_, p.waves_.size() - 1));
  return st.FinishPart();
}

Program::Outputs Program::Execution::outputs() const {
  const State& st = *state_;
  const Program& p = *st.program;
  // Device runs give the host copies FinishPart made.
  bool copied = st.device != nullptr && !p.outputs_on_device_;
  auto has = [&](ValueRef v) {
    if (copied) return st.on_host.count(v) > 0;
    return st.values[static_cast<size_t>(v.node)].size() > static_cast<size_t>(v.port);
  };
  auto get = [&](ValueRef v) { return copied ? st.on_host.at(v) : st.value(v); };
  Outputs result;
  for (ValueRef v : p.outputs_) result.values.push_back(has(v) ? get(v) : Tensor());
  for (const auto& [name, v] : p.param_grads_)
    if (has(v)) result.param_grads[name] = get(v);
  for (const auto& [name, v] : p.statistics_)
    if (has(v)) result.statistics[name] = get(v);
  for (ValueRef v : p.input_grads_)
    if (has(v)) result.input_grads.push_back(get(v));
  return result;
}

StatusOr<Program::Outputs> Program::Run(const std::vector<Tensor>& inputs,
                                        const ParamStore& params) const {
  if (inputs.size() != input_types_.size()) {
    return InvalidArgument("program takes " + std::to_string(input_types_.size()) +
                           " inputs, given " + std::to_string(inputs.size()));
  }
  std::unique_ptr<Execution> run = Start(params);
  auto seeds = inputs.begin() + static_cast<std::ptrdiff_t>(forward_inputs_);
  WEIR_RETURN_IF_ERROR(run->Forward({inputs.begin(), seeds}));
  WEIR_RETURN_IF_ERROR(run->Backward({seeds, inputs.end()}, /*weights=*/true));
  return run->outputs();
}

ProgramCost Program::Cost() const {
  ProgramCost cost;
  for (const ParamInfo& p : params_) cost.active_share[p.name] = 1.0;
  for (const Node& n : nodes_) {
    if (n.kind != Node::kOp || n.phase != Node::kForward || !n.entry->cost) continue;
    std::vector<TensorType> inputs;
    for (ValueRef v : n.inputs)
      inputs.push_back(nodes_[static_cast<size_t>(v.node)].outputs[static_cast<size_t>(v.port)]);
    OpCost c = n.entry->cost(inputs, n.outputs, n.attrs);
    cost.forward_flops += c.flops;
    cost.cached_elements_per_token += c.cached_elements_per_token;
    for (ValueRef v : n.inputs) {
      const Node& in = nodes_[static_cast<size_t>(v.node)];
      if (in.kind == Node::kParam) cost.active_share[in.name] = c.active_params;
    }
  }
  return cost;
}

std::map<std::string, std::vector<TensorType>> Program::ForwardTypes() const {
  std::map<std::string, std::vector<TensorType>> types;
  for (const Node& n : nodes_)
    if (n.kind == Node::kOp && n.phase == Node::kForward) types[n.name] = n.outputs;
  return types;
}

std::string Program::DebugString() const {
  std::ostringstream out;
  const char* phases[] = {"F", "B", "W"};
  const char* kinds[] = {"input", "param", "constant", "", "sum"};
  // On a device, inputs and parameters are copied in by their nodes.
  auto device = ParseDeviceName(device_);
  std::string copied = device.ok() && !device->host() ? " copied to " + device_ : "";
  for (size_t i = 0; i < nodes_.size(); ++i) {
    const Node& n = nodes_[i];
    std::string kind = n.kind == Node::kOp ? n.entry->def.name() : kinds[n.kind];
    if (n.kind == Node::kInput || n.kind == Node::kParam) kind += copied;
    out << phases[n.phase] << "  %" << i << " " << n.name << " = " << kind << "(";
    for (size_t k = 0; k < n.inputs.size(); ++k)
      out << (k ? ", " : "") << "%" << n.inputs[k].node << ":" << n.inputs[k].port;
    out << ") ->";
    for (const TensorType& t : n.outputs) out << " " << t.ToString();
    out << "\n";
  }
  return out.str();
}

bool MatchesPathSuffix(const std::string& path, const std::string& pattern) {
  auto split = [](const std::string& s) {
    std::vector<std::string> parts;
    size_t start = 0;
    for (size_t dot; (dot = s.find('.', start)) != std::string::npos; start = dot + 1)
      parts.push_back(s.substr(start, dot - start));
    parts.push_back(s.substr(start));
    return parts;
  };
  std::vector<std::string> p = split(path), q = split(pattern);
  if (pattern.empty() || q.size() > p.size()) return false;
  for (size_t i = 0; i < q.size(); ++i) {
    const std::string& want = q[q.size() - 1 - i];
    if (want != "*" && want != p[p.size() - 1 - i]) return false;
  }
  return true;
}

void ParamStore::Initialize(const std::vector<ParamInfo>& params, uint64_t seed) {
  for (const ParamInfo& p : params) {
    if (values_.count(p.name)) continue;
    // Masters are f32, except for f64 programs (gradient checks), which keep full precision.
    DataType master = p.type.dtype == DT_F64 ? DT_F64 : DT_F32;
    std::vector<double> d(static_cast<size_t>(NumElements(p.type.shape)));
    // Per-parameter stream: the seed mixed with a hash of the name.
    std::mt19937_64 rng(seed ^ std::hash<std::string>()(p.name));
    switch (p.init.kind) {
      case Init::kZeros:
        std::fill(d.begin(), d.end(), 0.0);
        break;
      case Init::kOnes:
        std::fill(d.begin(), d.end(), 1.0);
        break;
      case Init::kNormal: {
        std::normal_distribution<double> dist(0.0, p.init.scale);
        for (double& x : d) x = dist(rng);
        break;
      }
      case Init::kUniform: {
        std::uniform_real_distribution<double> dist(-p.init.scale, p.init.scale);
        for (double& x : d) x = dist(rng);
        break;
      }
    }
    values_[p.name] = Tensor::FromValues(master, p.type.shape, d);
  }
}

Tensor* ParamStore::Find(const std::string& name) {
  auto it = values_.find(name);
  return it == values_.end() ? nullptr : &it->second;
}

const Tensor* ParamStore::Find(const std::string& name) const {
  auto it = values_.find(name);
  return it == values_.end() ? nullptr : &it->second;
}

}  // namespace weir
