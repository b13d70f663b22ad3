// A whole model through Programs: the tiny GPT's gradients against finite differences in f64,
// B/W split backward giving the same gradients, and the memory plan's reuse.
#include <gtest/gtest.h>
#include <unistd.h>

#include <fstream>
#include <random>

#include "test_util.h"
#include "tiny_gpt.h"
#include "weir/runtime/program.h"

namespace weir::testing {
namespace {

StatusOr<std::shared_ptr<const Program>> BuildGpt(const std::string& dtype, int64_t batch,
                                                  int64_t time, ProgramOptions options) {
  WEIR_ASSIGN_OR_RETURN(Graph g, LoadTestGraph(TestGraph("good/gpt_import.pbtxt")));
  options.loss = "loss";
  std::vector<TensorType> types = {{DT_I64, {batch, time}}, {DT_I64, {batch, time}}};
  return Program::Build(g, "Gpt", TinyGptAttrs(*ParseDataType(dtype)), types, TestRegistry(),
                        options);
}

TEST(TinyGpt, ParametersAreNamedByPath) {
  auto p = BuildGpt("f32", 2, 5, {});
  ASSERT_TRUE(p.ok()) << p.status().ToString();
  std::vector<std::string> names;
  for (const ParamInfo& info : (*p)->params()) names.push_back(info.name);
  std::vector<std::string> expected = {"embed.weight",
                                       "layers.0.attn_norm.weight",
                                       "layers.0.wq.weight",
                                       "layers.0.wk.weight",
                                       "layers.0.wv.weight",
                                       "layers.0.wo.weight",
                                       "layers.0.mlp_norm.weight",
                                       "layers.0.w1.weight",
                                       "layers.0.w3.weight",
                                       "layers.0.w2.weight"};
  ASSERT_GE(names.size(), expected.size());
  EXPECT_EQ(std::vector<std::string>(names.begin(), names.begin() + 10), expected);
  EXPECT_EQ(names.back(), "head.weight");
  EXPECT_EQ(names.size(), 1u + 9u * 2u + 2u);
  EXPECT_EQ((*p)->params()[2].type.shape, (Shape{8, 8}));  // wq [q_dim, d_model]
  EXPECT_EQ((*p)->params()[3].type.shape, (Shape{4, 8}));  // wk [kv_dim, d_model]
}

TEST(TinyGpt, WholeModelGradientMatchesFiniteDifferences) {
  auto p = BuildGpt("f64", 2, 5, {});
  ASSERT_TRUE(p.ok()) << p.status().ToString();
  ParamStore params;
  params.Initialize((*p)->params(), 3);
  std::vector<Tensor> inputs = RandomTokens(2, 5, 11, 4);
  // Up to 12 elements of every parameter.
  EXPECT_GT(CheckModelGradients(**p, params, inputs, 12, 1e-7), 200);
}

TEST(TinyGpt, WeightGradientsCanRunAfterAllInputGradients) {
  auto in_order = BuildGpt("f32", 2, 6, {});
  ProgramOptions deferred;
  deferred.defer_weight_grads = true;
  auto split = BuildGpt("f32", 2, 6, deferred);
  ASSERT_TRUE(in_order.ok() && split.ok());
  const ProgramStats& stats = (*split)->stats();
  EXPECT_GT(stats.backward_b_nodes, 0);
  EXPECT_GT(stats.backward_w_nodes, 0);
  ParamStore params;
  params.Initialize((*in_order)->params(), 7);
  std::vector<Tensor> inputs = RandomTokens(2, 6, 11, 8);
  auto a = (*in_order)->Run(inputs, params), b = (*split)->Run(inputs, params);
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_EQ(a->values[0].At(0), b->values[0].At(0));
  for (const auto& [name, g] : a->param_grads)
    EXPECT_EQ(g.ToVector(), b->param_grads.at(name).ToVector()) << name;
}

TEST(TinyGpt, ConcurrentNodesComputeTheSameGradients) {
  ProgramOptions concurrent;
  concurrent.concurrent_nodes = true;
  auto sequential = BuildGpt("f32", 4, 32, {});
  auto waves = BuildGpt("f32", 4, 32, concurrent);
  ASSERT_TRUE(sequential.ok() && waves.ok());
  const ProgramStats& s = (*sequential)->stats();
  const ProgramStats& w = (*waves)->stats();
  EXPECT_EQ(s.widest_wave, 1);
  EXPECT_GT(w.widest_wave, 1);
  EXPECT_LT(w.waves, s.waves);
  LOG(INFO) << w.waves << " waves of up to " << w.widest_wave << " nodes instead of " << s.waves
            << " steps; arena " << w.memory.arena_bytes << " vs " << s.memory.arena_bytes
            << " bytes";
  // Nodes running together never share a buffer, so the concurrent plan needs at least as much.
  EXPECT_GE(w.memory.arena_bytes, s.memory.arena_bytes);
  ParamStore params;
  params.Initialize((*sequential)->params(), 5);
  std::vector<Tensor> inputs = RandomTokens(4, 32, 11, 6);
  auto a = (*sequential)->Run(inputs, params);
  ASSERT_TRUE(a.ok());
  for (int repeat = 0; repeat < 3; ++repeat) {
    auto b = (*waves)->Run(inputs, params);
    ASSERT_TRUE(b.ok()) << b.status().ToString();
    EXPECT_NEAR(a->values[0].At(0), b->values[0].At(0), 1e-5);
    for (const auto& [name, g] : a->param_grads) {
      std::vector<double> x = g.ToVector(), y = b->param_grads.at(name).ToVector();
      ASSERT_EQ(x.size(), y.size());
      for (size_t i = 0; i < x.size(); ++i)
        ASSERT_NEAR(x[i], y[i], 1e-5 * (1 + std::abs(x[i]))) << name << "[" << i << "]";
    }
  }
}

TEST(Programs, ReshapeIsAViewOfItsInput) {
  std::string path =
      ::testing::TempDir() + "/reshape_view_" + std::to_string(::getpid()) + ".pbtxt";
  std::ofstream(path) << R"(function {
  name: "F"
  input: "x"
  output: "scaled=scale"
  output: "flat=flat"
  output: "doubled=twice"
  node { name: "scale" op: "nn.Scale" input: "x" attr: "factor=2" }
  node { name: "flat" op: "nn.Reshape" input: "scale" attr: "shape=[-1]" }
  node { name: "twice" op: "nn.Add" input: "flat" input: "flat" }
})";
  auto g = LoadTestGraph(path);
  ASSERT_TRUE(g.ok()) << g.status().ToString();
  auto p = Program::Build(*g, "F", {}, {{DT_F32, {2, 3}}}, TestRegistry(), {});
  ASSERT_TRUE(p.ok()) << p.status().ToString();
  EXPECT_EQ((*p)->stats().memory.num_values, 2);  // scale and twice; flat has no buffer
  auto out = (*p)->Run({Tensor::FromValues(DT_F32, {2, 3}, {1, 2, 3, 4, 5, 6})}, ParamStore());
  ASSERT_TRUE(out.ok()) << out.status().ToString();
  EXPECT_EQ(out->values[1].raw_data(), out->values[0].raw_data());
  EXPECT_EQ(out->values[1].shape(), Shape{6});
  // The viewed buffer outlives the view's last reader: nothing overwrote it.
  EXPECT_EQ(out->values[2].ToVector(), (std::vector<double>{4, 8, 12, 16, 20, 24}));
  EXPECT_EQ(out->values[1].ToVector(), (std::vector<double>{2, 4, 6, 8, 10, 12}));
}

TEST(Programs, AnOpWithoutAGradientIsNamedWithItsPlugin) {
  std::string path = ::testing::TempDir() + "/no_gradient_" + std::to_string(::getpid()) + ".pbtxt";
  std::ofstream(path) << R"(function {
  name: "F"
  input: "x"
  output: "loss=sum"
  node { name: "copy" op: "test.NoGradient" input: "x" }
  node { name: "sum" op: "nn.Sum" input: "copy" }
})";
  auto g = LoadTestGraph(path);
  ASSERT_TRUE(g.ok()) << g.status().ToString();
  ProgramOptions options;
  options.loss = "loss";
  options.input_grads = {"x"};
  auto p = Program::Build(*g, "F", {}, {{DT_F32, {3}}}, TestRegistry(), options);
  ASSERT_FALSE(p.ok());
  std::string text = p.status().ToString();
  EXPECT_NE(text.find(":5:"), std::string::npos) << text;
  EXPECT_NE(text.find("node 'copy' (op 'test.NoGradient'): op 'test.NoGradient' has no gradient "
                      "(plugin "),
            std::string::npos)
      << text;
  EXPECT_NE(text.find("weir_test_ops.so registers none), but 'loss' needs the gradient of its "
                      "inputs"),
            std::string::npos)
      << text;
}

TEST(TinyGpt, RecomputingCheapOpsSavesMemoryAndChangesNothing) {
  auto kept = BuildGpt("f32", 4, 32, {});
  ProgramOptions options;
  options.recompute = true;
  auto recomputed = BuildGpt("f32", 4, 32, options);
  ProgramOptions both = options;
  both.defer_weight_grads = true;
  auto deferred = BuildGpt("f32", 4, 32, both);
  ASSERT_TRUE(kept.ok() && recomputed.ok() && deferred.ok());
  EXPECT_GT((*recomputed)->stats().recomputed_nodes, 0);
  int64_t before = (*kept)->stats().memory.arena_bytes,
          after = (*recomputed)->stats().memory.arena_bytes;
  LOG(INFO) << "arena " << before << " bytes keeping cheap outputs, " << after
            << " recomputing them";
  EXPECT_LT(after, before);
  ParamStore params;
  params.Initialize((*kept)->params(), 9);
  std::vector<Tensor> inputs = RandomTokens(4, 32, 11, 10);
  auto a = (*kept)->Run(inputs, params), b = (*recomputed)->Run(inputs, params),
       c = (*deferred)->Run(inputs, params);
  ASSERT_TRUE(a.ok() && b.ok() && c.ok());
  for (const auto& [name, g] : a->param_grads) {
    EXPECT_EQ(g.ToVector(), b->param_grads.at(name).ToVector()) << name;
    EXPECT_EQ(g.ToVector(), c->param_grads.at(name).ToVector()) << name;
  }
}

TEST(TinyGpt, MemoryPlanReusesActivationBuffers) {
  auto p = BuildGpt("f32", 4, 32, {});
  ASSERT_TRUE(p.ok()) << p.status().ToString();
  const MemoryPlanStats& m = (*p)->stats().memory;
  LOG(INFO) << "arena " << m.arena_bytes << " bytes, without reuse " << m.unplanned_bytes;
  EXPECT_GT(m.arena_bytes, 0);
  EXPECT_LT(m.arena_bytes, m.unplanned_bytes / 2);
  // Running twice gives the same loss: reused buffers carry nothing over.
  ParamStore params;
  params.Initialize((*p)->params(), 1);
  std::vector<Tensor> inputs = RandomTokens(4, 32, 11, 2);
  double first = (*p)->Run(inputs, params)->values[0].At(0);
  EXPECT_EQ((*p)->Run(inputs, params)->values[0].At(0), first);
  EXPECT_NEAR(first, std::log(11.0), 1.0);  // near uniform at init
}

}  // namespace
}  // namespace weir::testing
