// Pipeline parallelism: a function cut into stages (ProgramOptions::pipeline) computes, stage
// after stage, the loss and gradients of the whole function; a program runs its forward, B and W
// parts apart (Program::Execution); train.Step trained under every schedule on virtual ranks ends
// where one rank does.
#include <gtest/gtest.h>

#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <iterator>

#include "test_util.h"
#include "tiny_gpt.h"
#include "tiny_v3.h"
#include "weir/runtime/executor.h"
#include "weir/runtime/program.h"
#include "weir/runtime/trace.h"
#include "weir/safetensors.h"

namespace weir::testing {
namespace {

namespace fs = std::filesystem;

struct Model {
  Graph graph;
  std::string function;
  std::map<std::string, AttrValue> attrs;
  std::vector<TensorType> types;
};

Model Gpt(int64_t layers) {
  auto g = LoadTestGraph(TestGraph("good/gpt_import.pbtxt"));
  EXPECT_TRUE(g.ok()) << g.status().ToString();
  return {std::move(*g), "Gpt", TinyGptAttrs(DT_F64, layers), {{DT_I64, {2, 5}}, {DT_I64, {2, 5}}}};
}

Model TinyV3() {
  auto g = LoadTestGraph(TestGraph("good/deepseek_import.pbtxt"));
  EXPECT_TRUE(g.ok()) << g.status().ToString();
  return {std::move(*g), "DeepseekV3", TinyV3Attrs(DT_F64), {{DT_I64, {2, 6}}, {DT_I64, {2, 6}}}};
}

StatusOr<std::shared_ptr<const Program>> Build(const Model& m, ProgramOptions options) {
  options.loss = "loss";
  return Program::Build(m.graph, m.function, m.attrs, m.types, TestRegistry(), options);
}

ProgramOptions Stage(int stage, int stages, std::vector<std::string> starts = {}) {
  ProgramOptions o;
  o.defer_weight_grads = true;
  o.pipeline = {stages, stage, std::move(starts)};
  return o;
}

// The stages run one after another, as one micro-batch's path through a pipeline: forwards in
// order, each handing its boundary outputs on, then backwards in reverse, each handing the
// gradients of its boundary inputs back.
Program::Outputs RunChained(const std::vector<std::shared_ptr<const Program>>& stages,
                            const std::vector<Tensor>& inputs, const ParamStore& params) {
  Program::Outputs all;
  std::vector<std::unique_ptr<Program::Execution>> runs;
  std::vector<Tensor> boundary;
  for (const auto& stage : stages) {
    std::vector<Tensor> in = inputs;
    in.insert(in.end(), boundary.begin(), boundary.end());
    runs.push_back(stage->Start(params));
    Status s = runs.back()->Forward(in);
    EXPECT_TRUE(s.ok()) << s.ToString();
    Program::Outputs out = runs.back()->outputs();
    size_t own = stage->output_names().size() - stage->stage().outputs.size();
    boundary.assign(out.values.begin() + static_cast<std::ptrdiff_t>(own), out.values.end());
    EXPECT_EQ(boundary.size(), stage->stage().outputs.size());
    for (size_t o = 0; o < own; ++o) all.values.push_back(out.values[o]);
  }
  std::vector<Tensor> grads;
  for (size_t s = stages.size(); s-- > 0;) {
    std::vector<Tensor> seeds = grads;
    EXPECT_EQ(seeds.size(),
              static_cast<size_t>(std::count(stages[s]->stage().output_grad.begin(),
                                             stages[s]->stage().output_grad.end(), true)));
    Status b = runs[s]->Backward(seeds, /*weights=*/false);
    EXPECT_TRUE(b.ok()) << b.ToString();
    Status w = runs[s]->Weights();
    EXPECT_TRUE(w.ok()) << w.ToString();
    Program::Outputs out = runs[s]->outputs();
    grads = out.input_grads;
    for (auto& [name, g] : out.param_grads) {
      EXPECT_EQ(all.param_grads.count(name), 0u) << name << " is in two stages";
      all.param_grads[name] = g;
    }
    for (auto& [name, v] : out.statistics) all.statistics[name] = v;
  }
  return all;
}

void ExpectNear(const Tensor& a, const Tensor& b, double tolerance, const std::string& what) {
  ASSERT_EQ(a.shape(), b.shape()) << what;
  for (int64_t i = 0; i < a.numel(); ++i)
    ASSERT_NEAR(a.At(i), b.At(i), tolerance * (1 + std::abs(a.At(i)))) << what << "[" << i << "]";
}

void ExpectStagesEqualWhole(const Model& m, int stages, std::vector<std::string> starts = {}) {
  auto whole = Build(m, {});
  ASSERT_TRUE(whole.ok()) << whole.status().ToString();
  std::vector<std::shared_ptr<const Program>> parts;
  size_t params = 0;
  for (int s = 0; s < stages; ++s) {
    auto p = Build(m, Stage(s, stages, starts));
    ASSERT_TRUE(p.ok()) << p.status().ToString();
    EXPECT_EQ((*p)->stage().stage, s);
    params += (*p)->params().size();
    parts.push_back(*p);
  }
  EXPECT_EQ(params, (*whole)->params().size());  // each parameter in exactly one stage
  // Stage s takes what stage s-1 gives.
  for (int s = 1; s < stages; ++s) {
    EXPECT_EQ(parts[static_cast<size_t>(s)]->stage().inputs,
              parts[static_cast<size_t>(s) - 1]->stage().outputs);
    EXPECT_EQ(parts[static_cast<size_t>(s)]->stage().input_grad,
              parts[static_cast<size_t>(s) - 1]->stage().output_grad);
  }
  EXPECT_TRUE(parts.front()->stage().inputs.empty());
  EXPECT_TRUE(parts.back()->stage().outputs.empty());
  ParamStore store;
  store.Initialize((*whole)->params(), 11);
  std::vector<Tensor> inputs =
      RandomTokens(m.types[0].shape[0], m.types[0].shape[1], m.attrs.count("vocab") ? 11 : 13, 3);
  auto expected = (*whole)->Run(inputs, store);
  ASSERT_TRUE(expected.ok()) << expected.status().ToString();
  Program::Outputs got = RunChained(parts, inputs, store);
  // Every output of the whole function, from whichever stage computes it.
  std::vector<std::string> names;
  for (const auto& p : parts) {
    size_t own = p->output_names().size() - p->stage().outputs.size();
    names.insert(names.end(), p->output_names().begin(),
                 p->output_names().begin() + static_cast<std::ptrdiff_t>(own));
  }
  ASSERT_EQ(names.size(), (*whole)->output_names().size());
  for (size_t o = 0; o < names.size(); ++o) {
    auto at = std::find((*whole)->output_names().begin(), (*whole)->output_names().end(), names[o]);
    ASSERT_NE(at, (*whole)->output_names().end()) << names[o];
    ExpectNear(got.values[o],
               expected->values[static_cast<size_t>(at - (*whole)->output_names().begin())], 1e-12,
               names[o]);
  }
  ASSERT_EQ(got.param_grads.size(), expected->param_grads.size());
  for (const auto& [name, g] : expected->param_grads) {
    ASSERT_TRUE(got.param_grads.count(name)) << name;
    ExpectNear(got.param_grads.at(name), g, 1e-10, name);
  }
  ASSERT_EQ(got.statistics.size(), expected->statistics.size());
  for (const auto& [name, v] : expected->statistics)
    ExpectNear(got.statistics.at(name), v, 0, name);
}

TEST(PipelineStages, GptStagesComputeTheWholeFunction) {
  for (int stages : {2, 3, 5}) {
    SCOPED_TRACE(stages);
    ExpectStagesEqualWhole(Gpt(4), stages);
  }
}

// MLA, routed experts with the router's bias statistic, MTP and the auxiliary loss summed over
// layers: values that cross several stages pass through the ones between.
TEST(PipelineStages, DeepseekStagesComputeTheWholeFunction) {
  for (int stages : {2, 4, 8}) {
    SCOPED_TRACE(stages);
    ExpectStagesEqualWhole(TinyV3(), stages);
  }
}

TEST(PipelineStages, HintsPlaceTheCuts) {
  ExpectStagesEqualWhole(Gpt(4), 3, {"layers.1", "layers.3"});
  auto p = Build(Gpt(4), Stage(1, 3, {"layers.1", "layers.3"}));
  ASSERT_TRUE(p.ok()) << p.status().ToString();
  const std::vector<std::string>& first = (*p)->stage().first_nodes;
  ASSERT_EQ(first.size(), 3u);
  EXPECT_EQ(first[1].rfind("layers.1.", 0), 0u) << first[1];
  EXPECT_EQ(first[2].rfind("layers.3.", 0), 0u) << first[2];
  for (const std::string& name : {std::string("layers.0"), std::string("layers.2")}) {
    bool has = false;
    for (const ParamInfo& info : (*p)->params()) has = has || info.name.rfind(name, 0) == 0;
    EXPECT_EQ(has, name == "layers.2") << name;
  }
}

// Without hints the cuts fall between layers, where only the residual stream crosses, and
// balance the layers.
TEST(PipelineStages, TheCostModelCutsBetweenLayers) {
  Model m = Gpt(4);
  for (int stages : {2, 4}) {
    auto p = Build(m, Stage(0, stages));
    ASSERT_TRUE(p.ok()) << p.status().ToString();
    const auto& first = (*p)->stage().first_nodes;
    ASSERT_EQ(first.size(), static_cast<size_t>(stages));
    for (size_t s = 1; s < first.size(); ++s)
      EXPECT_TRUE(first[s].ends_with(".attn_norm")) << stages << " stages: " << first[s];
    // One [2, 5, 8] residual stream leaves stage 0 (besides what is not a gradient path).
    int differentiable = 0;
    for (bool g : (*p)->stage().output_grad) differentiable += g ? 1 : 0;
    EXPECT_EQ(differentiable, 1) << stages;
  }
  auto two = Build(m, Stage(0, 2));
  ASSERT_TRUE(two.ok());
  EXPECT_EQ(two.value()->stage().first_nodes[1], "layers.2.attn_norm");
}

TEST(PipelineStages, BadStagesAreErrors) {
  Model m = Gpt(2);
  auto missing = Build(m, Stage(0, 2, {"layers.7"}));
  ASSERT_FALSE(missing.ok());
  EXPECT_NE(missing.status().message().find("stage start 'layers.7' names no node"),
            std::string::npos)
      << missing.status().ToString();
  auto backwards = Build(m, Stage(0, 3, {"layers.1", "layers.0"}));
  ASSERT_FALSE(backwards.ok());
  EXPECT_NE(backwards.status().message().find("does not come after"), std::string::npos)
      << backwards.status().ToString();
  auto count = Build(m, Stage(0, 3, {"layers.1"}));
  ASSERT_FALSE(count.ok());
  EXPECT_NE(count.status().message().find("need 2 stage starts"), std::string::npos)
      << count.status().ToString();
  auto beyond = Build(m, Stage(3, 3));
  ASSERT_FALSE(beyond.ok());
  EXPECT_NE(beyond.status().message().find("pipeline stage 3 of 3 does not exist"),
            std::string::npos);
  auto many = Build(m, Stage(0, 10000));
  ASSERT_FALSE(many.ok());
  EXPECT_NE(many.status().message().find("too few for 10000 pipeline stages"), std::string::npos)
      << many.status().ToString();
}

// F, then B, then W, each apart: the gradients of Run.
TEST(ProgramExecution, PartsRunApartGiveRunsGradients) {
  Model m = Gpt(2);
  ProgramOptions deferred;
  deferred.defer_weight_grads = true;
  auto p = Build(m, deferred);
  ASSERT_TRUE(p.ok());
  ParamStore store;
  store.Initialize((*p)->params(), 4);
  std::vector<Tensor> inputs = RandomTokens(2, 5, 11, 9);
  auto whole = (*p)->Run(inputs, store);
  ASSERT_TRUE(whole.ok());
  auto run = (*p)->Start(store);
  EXPECT_FALSE(run->Weights().ok());  // W before B
  ASSERT_TRUE(run->Forward(inputs).ok());
  EXPECT_EQ(run->outputs().values[0].At(0), whole->values[0].At(0));
  EXPECT_TRUE(run->outputs().param_grads.empty());
  ASSERT_TRUE(run->Backward({}, /*weights=*/false).ok());
  EXPECT_TRUE(run->outputs().param_grads.empty());  // every weight gradient is W work
  ASSERT_TRUE(run->Weights().ok());
  Program::Outputs parts = run->outputs();
  ASSERT_EQ(parts.param_grads.size(), whole->param_grads.size());
  for (const auto& [name, g] : whole->param_grads)
    EXPECT_EQ(g.ToVector(), parts.param_grads.at(name).ToVector()) << name;
  EXPECT_FALSE(run->Forward(inputs).ok());  // once
}

struct Trained {
  TrainedRun run;
  std::vector<google::protobuf::Struct> statistics;
};

Trained Train(const std::string& name, const std::vector<std::string>& sets,
              Trace* trace = nullptr) {
  Trained t{TrainGraph("good/train_pp.pbtxt", "pp_" + name, sets, "step-000003", trace), {}};
  t.statistics = ReadJsonlRows(t.run.out / "statistics.jsonl");
  return t;
}

// The test: a 4-stage model (8 for DualPipeV) trained 3 steps under each schedule on 4
// virtual ranks ends with the losses and parameters of one rank, within 1e-5 relative. SGD: the
// parameters move by the gradients themselves (Adam would magnify rounding in gradients near 0).
TEST(PipelineTraining, EveryScheduleTrainsLikeOneRank) {
  Trained one = Train("one", {});
  ASSERT_EQ(one.run.losses.size(), 3u);
  ASSERT_EQ(one.statistics.size(), 3u);  // the router's loads, one row per step
  for (const char* schedule : {"gpipe", "1f1b", "zb1p", "dualpipe", "dualpipev"}) {
    SCOPED_TRACE(schedule);
    Trained pp = Train(schedule, {"pp=4", std::string("schedule=") + schedule});
    ASSERT_EQ(pp.run.losses.size(), 3u);
    for (size_t i = 0; i < 3; ++i)
      EXPECT_NEAR(pp.run.losses[i], one.run.losses[i], 1e-5 * std::abs(one.run.losses[i])) << i;
    EXPECT_LT(MaxRelativeDifference(one.run.params, pp.run.params, 1e-3), 1e-5);
    ASSERT_EQ(pp.statistics.size(), 3u);
    EXPECT_EQ(pp.statistics.back().DebugString(), one.statistics.back().DebugString());
  }
}

// Pipelines of two data-parallel groups (4 virtual ranks), with the experts sharded over the
// groups too (pp=2, dp=2, ep=2: the MoE layers of each stage exchange tokens with the same stage
// of the other pipeline).
TEST(PipelineTraining, PipelinesOfDataParallelRanksTrainLikeOneRank) {
  Trained one = Train("one_pd", {});
  ASSERT_EQ(one.run.losses.size(), 3u);
  for (const std::vector<std::string>& sets :
       {std::vector<std::string>{"pp=2", "dp=2"},
        std::vector<std::string>{"pp=2", "dp=2", "ep=2", "schedule=dualpipe"},
        std::vector<std::string>{"pp=2", "dp=2", "ep=2", "schedule=zb1p"}}) {
    std::string name = sets.back();
    SCOPED_TRACE(name + " " + std::to_string(sets.size()));
    Trained many = Train("pd_" + name + std::to_string(sets.size()), sets);
    ASSERT_EQ(many.run.losses.size(), 3u);
    for (size_t i = 0; i < 3; ++i)
      EXPECT_NEAR(many.run.losses[i], one.run.losses[i], 1e-5 * std::abs(one.run.losses[i])) << i;
    EXPECT_LT(MaxRelativeDifference(one.run.params, many.run.params, 1e-3), 1e-5);
  }
}

// `weir run --trace`: every rank's instructions under its pid, F&B pairs included, the
// tensor-program nodes inside them, and arrows from sends to receives.
TEST(PipelineTraining, TracesShowEveryRanksInstructions) {
  Trace trace;
  Train("traced", {"pp=4", "schedule=dualpipe"}, &trace);
  std::string json = TraceJson(trace, "pp_trace");
  for (int rank = 0; rank < 4; ++rank) {
    std::string pid = "\"pid\": " + std::to_string(rank);
    EXPECT_NE(json.find("\"cat\": \"pipeline\", \"ph\": \"X\", " + pid), std::string::npos) << rank;
    EXPECT_NE(json.find("\"cat\": \"nn.Linear\", \"ph\": \"X\", " + pid), std::string::npos)
        << rank;
  }
  EXPECT_NE(json.find("\"name\": \"[F"), std::string::npos);  // an overlapped pair
  // Arrows from sends to receives: as many starts as finishes.
  auto count = [&](const std::string& what) {
    size_t n = 0;
    for (size_t at = json.find(what); at != std::string::npos; at = json.find(what, at + 1)) ++n;
    return n;
  };
  EXPECT_GT(count("\"ph\": \"s\""), 0u);
  EXPECT_EQ(count("\"ph\": \"s\""), count("\"ph\": \"f\""));
}

// A rank whose kernel fails fails the step at once, naming the rank, the instruction and the
// kernel's error; the ranks waiting for its activations stop instead of waiting for a timeout.
TEST(PipelineTraining, AFailingRankStopsTheOthers) {
  auto g = LoadTestGraph(TestGraph("good/train_pp.pbtxt"), {"pp=4", "schedule=1f1b"});
  ASSERT_TRUE(g.ok());
  // Byte ids above 63 are outside a 64-row embedding: the first stage's forward fails.
  std::string attrs =
      "vocab_size=64 hidden_size=16 intermediate_size=24 moe_intermediate_size=8 "
      "num_hidden_layers=3 first_k_dense_replace=1 num_attention_heads=2 "
      "q_lora_rank=8 kv_lora_rank=8 qk_nope_head_dim=4 qk_rope_head_dim=4 "
      "v_head_dim=4 n_routed_experts=4 n_shared_experts=1 num_experts_per_tok=2 "
      "n_group=2 topk_group=1 rope_factor=1.0 num_nextn_predict_layers=1";
  fs::path out = fs::path(::testing::TempDir()) / "pp_failing";
  fs::remove_all(out);
  auto started = std::chrono::steady_clock::now();
  RunResult run =
      RunGraphFile(TestGraph("good/train_pp.pbtxt"), out, {"pp=4", "model_attrs='" + attrs + "'"});
  double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
  ASSERT_FALSE(run.status.ok());
  const std::string& message = run.status.message();
  EXPECT_NE(message.find("rank 0, F0"), std::string::npos) << run.status.ToString();
  EXPECT_NE(message.find("at position"), std::string::npos) << run.status.ToString();
  EXPECT_EQ(message.find("another rank failed"), std::string::npos) << run.status.ToString();
  // The communicators' timeout is 300 s: the others stopped long before.
  EXPECT_LT(seconds, 60) << run.status.ToString();
}

TEST(PipelineTraining, BadSettingsAreErrors) {
  fs::path out = fs::path(::testing::TempDir()) / "pp_bad";
  fs::remove_all(out);
  RunResult odd =
      RunGraphFile(TestGraph("good/train_pp.pbtxt"), out / "odd", {"pp=3", "schedule=dualpipe"});
  ASSERT_FALSE(odd.status.ok());
  EXPECT_NE(odd.status.message().find("pipeline_schedule: "), std::string::npos)
      << odd.status.ToString();
  RunResult rows =
      RunGraphFile(TestGraph("good/train_pp.pbtxt"), out / "rows", {"pp=2", "micro=3"});
  ASSERT_FALSE(rows.status.ok());
  EXPECT_NE(rows.status.message().find("the pipeline's 3 micro-batches"), std::string::npos)
      << rows.status.ToString();
  RunResult hint = RunGraphFile(TestGraph("good/train_pp.pbtxt"), out / "hint",
                                {"pp=2", "starts=[no_such_layer]"});
  ASSERT_FALSE(hint.status.ok());
  EXPECT_NE(hint.status.message().find("stage start 'no_such_layer' names no node"),
            std::string::npos)
      << hint.status.ToString();
}

}  // namespace
}  // namespace weir::testing
