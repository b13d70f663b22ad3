#include "weir/testing/op_check.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <fstream>
#include <random>

#include "weir/testing/gpu.h"

namespace weir::testing {

int NumCaseOutputs(const OpCase& c) {
  const OpEntry* entry = TestRegistry().Find(c.op);
  if (entry == nullptr) return 1;
  std::map<std::string, AttrValue> given;
  auto parsed = ParseAttrString(c.attrs, SourceLoc{});
  if (parsed.ok()) {
    for (const AttrAssignment& a : *parsed) {
      auto v = InferLiteral(a.value);
      if (v.ok()) given[a.key] = *v;
    }
  }
  return NumOutputs(entry->def, [&](const std::string& name) -> const AttrValue* {
    if (given.count(name)) return &given[name];
    for (const AttrDef& d : entry->def.attr())
      if (d.name() == name) return &d.default_value();
    return nullptr;
  });
}

namespace {

std::vector<int> LossOutputs(const OpCase& c) {
  if (c.output >= 0) return {c.output};
  std::vector<int> all(static_cast<size_t>(NumCaseOutputs(c)));
  for (size_t k = 0; k < all.size(); ++k) all[k] = static_cast<int>(k);
  return all;
}

}  // namespace

StatusOr<Graph> OpGraph(const OpCase& c, bool with_loss) {
  std::string text = "function {\n  name: \"F\"\n";
  for (size_t i = 0; i < c.inputs.size(); ++i) text += "  input: \"x" + std::to_string(i) + "\"\n";
  std::vector<int> reduced = LossOutputs(c);
  if (with_loss) {
    for (size_t k = 0; k < reduced.size(); ++k) text += "  input: \"w" + std::to_string(k) + "\"\n";
    text += "  output: \"loss=sum" + std::to_string(reduced.size() - 1) + "\"\n";
  } else {
    for (int o = 0; o < NumCaseOutputs(c); ++o)
      text += "  output: \"y" + std::to_string(o) + "=op:" + std::to_string(o) + "\"\n";
  }
  text += "  node { name: \"op\" op: \"" + c.op + "\"";
  for (size_t i = 0; i < c.inputs.size(); ++i) text += " input: \"x" + std::to_string(i) + "\"";
  if (!c.attrs.empty()) text += " attr: \"" + c.attrs + "\"";
  text += " }\n";
  if (with_loss) {
    // sum<k> = sum<k-1> + Σ op:out_k ⊙ w_k
    for (size_t k = 0; k < reduced.size(); ++k) {
      std::string n = std::to_string(k);
      text += "  node { name: \"mul" + n +
              "\" op: \"nn.Mul\" input: \"op:" + std::to_string(reduced[k]) + "\" input: \"w" + n +
              "\" }\n";
      text += "  node { name: \"" + std::string(k == 0 ? "sum" : "part") + n +
              "\" op: \"nn.Sum\" input: \"mul" + n + "\" }\n";
      if (k > 0) {
        text += "  node { name: \"sum" + n + "\" op: \"nn.Add\" input: \"sum" +
                std::to_string(k - 1) + "\" input: \"part" + n + "\" }\n";
      }
    }
  }
  text += "}\n";
  // ctest runs test processes in parallel: the process id keeps their files apart.
  static int counter = 0;
  std::string path = ::testing::TempDir() + "/op_case_" + std::to_string(::getpid()) + "_" +
                     std::to_string(counter++) + ".pbtxt";
  std::ofstream(path) << text;
  return LoadTestGraph(path);
}

std::vector<Tensor> CaseInputs(const OpCase& c) {
  std::mt19937_64 rng(c.seed);
  std::uniform_real_distribution<double> u(-1, 1);
  std::vector<Tensor> out;
  for (size_t i = 0; i < c.inputs.size(); ++i) {
    const TensorType& t = c.inputs[i];
    auto fixed = c.values.find(static_cast<int>(i));
    std::vector<double> v(static_cast<size_t>(NumElements(t.shape)));
    if (fixed != c.values.end()) {
      v = fixed->second;
    } else {
      for (double& x : v) x = u(rng);
    }
    out.push_back(Tensor::FromValues(t.dtype, t.shape, v));
  }
  return out;
}

namespace {

StatusOr<std::shared_ptr<const Program>> Build(const Graph& g, const std::vector<TensorType>& types,
                                               const ProgramOptions& options) {
  return Program::Build(g, "F", {}, types, TestRegistry(), options);
}

void Perturb(ParamStore& params, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> n(0, 0.5);
  for (auto& [name, t] : params.mutable_values())
    for (int64_t i = 0; i < t.numel(); ++i)
      StoreFromDouble(t.raw_data(), t.dtype(), i, t.At(i) + n(rng));
}

}  // namespace

StatusOr<std::vector<Tensor>> RunOp(const OpCase& c, const std::map<int, Tensor>& given,
                                    ParamStore* params, const std::string& device) {
  WEIR_ASSIGN_OR_RETURN(Graph g, OpGraph(c, false));
  std::vector<Tensor> inputs = CaseInputs(c);
  for (const auto& [i, t] : given) inputs[static_cast<size_t>(i)] = t;
  ProgramOptions options;
  options.device = device;
  WEIR_ASSIGN_OR_RETURN(auto p, Build(g, c.inputs, options));
  ParamStore local;
  if (params == nullptr) {
    params = &local;
    params->Initialize(p->params(), c.seed);
    Perturb(*params, c.seed + 1);
  }
  WEIR_ASSIGN_OR_RETURN(auto out, p->Run(inputs, *params));
  return out.values;
}

std::vector<std::string> RunnableDevices() {
  std::vector<std::string> devices = {"cpu"};
  if (HaveCudaDevice(nullptr)) devices.push_back("cuda");
  return devices;
}

std::vector<std::string> CheckDeviceConformance(const OpCase& c, double tolerance,
                                                std::vector<std::string>* not_runnable) {
  std::vector<std::string> compared;
  const OpEntry* entry = TestRegistry().Find(c.op);
  EXPECT_NE(entry, nullptr) << "unknown op " << c.op;
  if (entry == nullptr) return compared;
  std::vector<std::string> runnable = RunnableDevices();
  // RunOp draws the same inputs and parameters from the case's seed on every device.
  auto cpu = RunOp(c, {}, nullptr, "cpu");
  EXPECT_TRUE(cpu.ok()) << cpu.status().ToString();
  if (!cpu.ok()) return compared;
  for (const KernelDef& k : entry->def.kernel()) {
    if (k.device() == "cpu") continue;
    if (std::find(runnable.begin(), runnable.end(), k.device()) == runnable.end()) {
      if (not_runnable != nullptr) not_runnable->push_back(k.device());
      continue;
    }
    auto other = RunOp(c, {}, nullptr, k.device());
    EXPECT_TRUE(other.ok()) << k.device() << ": " << other.status().ToString();
    if (!other.ok()) continue;
    EXPECT_EQ(other->size(), cpu->size());
    for (size_t o = 0; o < std::min(other->size(), cpu->size()); ++o) {
      std::vector<double> want = (*cpu)[o].ToVector(), got = (*other)[o].To(DT_F64).ToVector();
      EXPECT_EQ(got.size(), want.size()) << k.device() << " output " << o;
      for (size_t i = 0; i < std::min(got.size(), want.size()); ++i) {
        EXPECT_NEAR(got[i], want[i], std::max(1e-12, tolerance * std::abs(want[i])))
            << c.op << " on " << k.device() << ", output " << o << "[" << i << "]";
      }
    }
    compared.push_back(k.device());
  }
  return compared;
}

namespace {

// The case's loss program (the op's outputs weighted by random tensors, summed) on `device`,
// with its inputs (the case's, then the weights) and which case inputs take gradients.
struct LossRun {
  std::shared_ptr<const Program> program;
  std::vector<Tensor> inputs;
  std::vector<size_t> checked_inputs;
};

StatusOr<LossRun> BuildLoss(const OpCase& c, const std::string& device) {
  WEIR_ASSIGN_OR_RETURN(std::vector<Tensor> forward, RunOp(c));
  WEIR_ASSIGN_OR_RETURN(Graph graph, OpGraph(c, true));
  LossRun run;
  std::vector<TensorType> types = c.inputs;
  run.inputs = CaseInputs(c);
  for (int o : LossOutputs(c)) {  // a random weight per reduced output
    const Tensor& out = forward.at(static_cast<size_t>(o));
    OpCase wcase;
    wcase.inputs = {TensorType{out.dtype(), out.shape()}};
    wcase.seed = c.seed + 7 + static_cast<uint64_t>(o);
    types.push_back(wcase.inputs[0]);
    run.inputs.push_back(CaseInputs(wcase)[0]);
  }
  ProgramOptions options;
  options.loss = "loss";
  options.device = device;
  for (size_t i = 0; i < c.inputs.size(); ++i) {
    bool skip =
        std::find(c.no_grad.begin(), c.no_grad.end(), static_cast<int>(i)) != c.no_grad.end();
    if (!skip && IsFloating(c.inputs[i].dtype)) {
      options.input_grads.push_back("x" + std::to_string(i));
      run.checked_inputs.push_back(i);
    }
  }
  WEIR_ASSIGN_OR_RETURN(run.program, Build(graph, types, options));
  return run;
}

}  // namespace

int CheckDeviceGradients(const OpCase& c, const std::string& device, double tolerance) {
  auto host = BuildLoss(c, "cpu");
  auto other = BuildLoss(c, device);
  EXPECT_TRUE(host.ok()) << host.status().ToString();
  EXPECT_TRUE(other.ok()) << device << ": " << other.status().ToString();
  if (!host.ok() || !other.ok()) return 0;
  ParamStore params;
  params.Initialize(host->program->params(), c.seed);
  Perturb(params, c.seed + 1);
  auto want = host->program->Run(host->inputs, params);
  auto got = other->program->Run(other->inputs, params);
  EXPECT_TRUE(want.ok()) << want.status().ToString();
  EXPECT_TRUE(got.ok()) << device << ": " << got.status().ToString();
  if (!want.ok() || !got.ok()) return 0;
  int compared = 0;
  auto compare = [&](const Tensor& w, const Tensor& g, const std::string& what) {
    EXPECT_EQ(w.shape(), g.shape()) << what;
    if (w.shape() != g.shape()) return;
    for (int64_t k = 0; k < w.numel(); ++k) {
      double a = w.At(k), b = g.At(k);
      EXPECT_NEAR(b, a, tolerance * std::max(1e-3, std::abs(a)))
          << c.op << " on " << device << ": d loss / d " << what << "[" << k << "]";
      ++compared;
    }
  };
  EXPECT_EQ(got->input_grads.size(), want->input_grads.size());
  for (size_t j = 0; j < std::min(got->input_grads.size(), want->input_grads.size()); ++j) {
    compare(want->input_grads[j], got->input_grads[j],
            "input " + std::to_string(host->checked_inputs[j]));
  }
  for (const auto& [name, w] : want->param_grads) {
    auto g = got->param_grads.find(name);
    EXPECT_NE(g, got->param_grads.end()) << device << " gives no gradient for " << name;
    if (g != got->param_grads.end()) compare(w, g->second, name);
  }
  return compared;
}

int CheckGradients(const OpCase& c, double tolerance) {
  auto built = BuildLoss(c, "cpu");
  EXPECT_TRUE(built.ok()) << built.status().ToString();
  if (!built.ok()) return 0;
  const std::shared_ptr<const Program>* program = &built->program;
  std::vector<Tensor>& inputs = built->inputs;
  const std::vector<size_t>& checked_inputs = built->checked_inputs;
  ParamStore params;
  params.Initialize((*program)->params(), c.seed);
  Perturb(params, c.seed + 1);
  auto analytic = (*program)->Run(inputs, params);
  EXPECT_TRUE(analytic.ok()) << analytic.status().ToString();
  if (!analytic.ok()) return 0;

  auto loss_at = [&]() {
    auto r = (*program)->Run(inputs, params);
    CHECK(r.ok()) << r.status().ToString();
    return r->values[0].At(0);
  };
  const double eps = 1e-6;
  int checked = 0;
  auto check = [&](Tensor& t, const Tensor& grad, const std::string& what) {
    for (int64_t k = 0; k < t.numel(); ++k) {
      double x = t.At(k);
      StoreFromDouble(t.raw_data(), t.dtype(), k, x + eps);
      double up = loss_at();
      StoreFromDouble(t.raw_data(), t.dtype(), k, x - eps);
      double down = loss_at();
      StoreFromDouble(t.raw_data(), t.dtype(), k, x);
      double numeric = (up - down) / (2 * eps);
      double got = grad.At(k);
      EXPECT_NEAR(got, numeric, tolerance * std::max(1.0, std::abs(numeric)))
          << c.op << ": d loss / d " << what << "[" << k << "]";
      ++checked;
    }
  };
  for (size_t j = 0; j < checked_inputs.size(); ++j) {
    size_t i = checked_inputs[j];
    check(inputs[i], analytic->input_grads[j], "input " + std::to_string(i));
  }
  for (auto& [name, t] : params.mutable_values()) check(t, analytic->param_grads.at(name), name);
  return checked;
}

}  // namespace weir::testing
