// Training from a graph file: the loss falls, checkpoints are complete, and a run stopped and
// resumed from its checkpoint gives exactly the losses and parameters of an uninterrupted run.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>

#include "test_util.h"
#include "weir/checkpoints.h"
#include "weir/json.h"
#include "weir/runtime/executor.h"
#include "weir/safetensors.h"

namespace weir::testing {
namespace {

namespace fs = std::filesystem;

// Sets the stop flag once the trainer reports `stop_at`, like a Ctrl-C after that step.
class StopAt : public CapturedMetrics {
 public:
  StopAt(std::atomic<bool>* stop, int64_t stop_at) : stop_(stop), stop_at_(stop_at) {}
  void Write(const std::string& node, int64_t step,
             const std::vector<std::pair<std::string, double>>& values) override {
    CapturedMetrics::Write(node, step, values);
    if (node == "train" && step == stop_at_) *stop_ = true;
  }

 private:
  std::atomic<bool>* stop_;
  int64_t stop_at_;
};

struct TrainRun {
  RunResult result;
  std::map<int64_t, double> losses;  // by step
  fs::path out;
};

TrainRun Train(const std::string& name, std::vector<std::string> sets, const fs::path& resume = {},
               int64_t stop_at = 0) {
  fs::path out = fs::path(::testing::TempDir()) / ("train_" + name);
  fs::remove_all(out);
  auto g = LoadTestGraph(TestGraph("good/train_tiny.pbtxt"), sets);
  CHECK(g.ok()) << g.status().ToString();
  std::atomic<bool> stop{false};
  StopAt metrics(&stop, stop_at);
  RunOptions options;
  options.out_dir = out;
  options.metrics = &metrics;
  options.ops = &TestRegistry();
  options.stop = &stop;
  options.resume_dir = resume;
  TrainRun run;
  run.result = RunGraph(*g, options);
  run.out = out;
  for (const MetricRow& r : metrics.rows())
    if (r.node == "train" && r.Get("loss") >= 0) run.losses[r.step] = r.Get("loss");
  return run;
}

std::map<std::string, std::vector<double>> Params(const fs::path& checkpoint) {
  auto tensors = ReadSafetensorsSharded(checkpoint, "model");
  CHECK(tensors.ok()) << tensors.status().ToString();
  std::map<std::string, std::vector<double>> out;
  for (const auto& [name, t] : *tensors) out[name] = t.ToVector();
  return out;
}

TEST(Training, LossFallsAndCheckpointsAreComplete) {
  TrainRun run = Train("plain", {});
  ASSERT_TRUE(run.result.status.ok()) << run.result.status.ToString();
  ASSERT_EQ(run.losses.size(), 20u);
  EXPECT_LT(run.losses[20], run.losses[1] - 1.0);
  for (const char* step : {"step-000010", "step-000020"}) {
    fs::path dir = run.out / "checkpoints" / step;
    for (const char* f : {"model.safetensors", "optimizer.safetensors", "trainer_state.json"})
      EXPECT_TRUE(fs::exists(dir / f)) << dir / f;
  }
  auto states = ReadSafetensorsSharded(run.out / "checkpoints" / "step-000020", "optimizer");
  ASSERT_TRUE(states.ok());
  EXPECT_TRUE(states->count("embed.weight.m"));
  EXPECT_TRUE(states->count("head.weight.v"));
  // No temporary folders are left behind.
  for (const auto& e : fs::directory_iterator(run.out / "checkpoints"))
    EXPECT_EQ(e.path().filename().string().find(".tmp-"), std::string::npos);
}

TEST(Training, ResumeContinuesExactly) {
  // AdamW and SGD, one node at a time; AdamW with concurrent nodes.
  for (auto [optimizer, concurrent] :
       {std::pair{"optim.AdamW", false}, {"optim.SGD", false}, {"optim.AdamW", true}}) {
    std::vector<std::string> opt = {std::string("optimizer=") + optimizer,
                                    std::string("concurrent=") + (concurrent ? "true" : "false")};
    SCOPED_TRACE(opt[1]);
    TrainRun whole = Train("whole", opt);
    ASSERT_TRUE(whole.result.status.ok()) << whole.result.status.ToString();
    TrainRun first = Train("first", opt, {}, /*stop_at=*/10);
    ASSERT_TRUE(first.result.status.ok()) << first.result.status.ToString();
    EXPECT_TRUE(first.result.interrupted);
    ASSERT_EQ(first.losses.size(), 10u) << "the stopped run trained past its stop";
    fs::path checkpoint = first.out / "checkpoints" / "step-000010";
    ASSERT_TRUE(fs::exists(checkpoint / "trainer_state.json"));
    TrainRun second = Train("second", opt, checkpoint);
    ASSERT_TRUE(second.result.status.ok()) << second.result.status.ToString();
    ASSERT_EQ(second.losses.size(), 10u);
    for (int64_t step = 1; step <= 10; ++step)
      EXPECT_EQ(first.losses[step], whole.losses[step]) << step;
    for (int64_t step = 11; step <= 20; ++step)
      EXPECT_EQ(second.losses[step], whole.losses[step]) << optimizer << " step " << step;
    EXPECT_EQ(Params(second.out / "checkpoints" / "step-000020"),
              Params(whole.out / "checkpoints" / "step-000020"))
        << optimizer;
  }
}

TEST(Training, ADamagedCheckpointIsAnErrorNotACrash) {
  TrainRun run = Train("damaged", {"steps=2"});
  ASSERT_TRUE(run.result.status.ok()) << run.result.status.ToString();
  fs::path checkpoint = run.out / "checkpoints" / "step-000002";
  ASSERT_TRUE(VerifyChecksums(checkpoint).ok());
  std::ofstream(checkpoint / "trainer_state.json", std::ios::trunc) << "{\"step\": 2}";
  // The checksums catch the change before anything is read.
  TrainRun resumed = Train("damaged_resume", {"steps=4"}, checkpoint);
  ASSERT_FALSE(resumed.result.status.ok());
  EXPECT_NE(resumed.result.status.ToString().find("node 'train' (op 'train.Step'): resume: " +
                                                  (checkpoint / "trainer_state.json").string() +
                                                  " has 11 bytes, checksums.json says"),
            std::string::npos)
      << resumed.result.status.ToString();
  // A file that verifies but lacks a field is still an error naming it, not an abort.
  ASSERT_TRUE(WriteChecksums(checkpoint).ok());
  resumed = Train("damaged_resume", {"steps=4"}, checkpoint);
  ASSERT_FALSE(resumed.result.status.ok());
  EXPECT_NE(resumed.result.status.ToString().find("node 'train' (op 'train.Step'): resume: " +
                                                  (checkpoint / "trainer_state.json").string() +
                                                  " has no number 'data_position'"),
            std::string::npos)
      << resumed.result.status.ToString();
}

// A model can start from saved parameters (a converted HF checkpoint, an earlier run's).
TEST(Training, AModelStartsFromSavedParameters) {
  TrainRun first = Train("before_init", {});
  ASSERT_TRUE(first.result.status.ok()) << first.result.status.ToString();
  fs::path saved = first.out / "checkpoints" / "step-000020";
  TrainRun again = Train("init_from", {"init_from=" + saved.string(), "steps=1"});
  ASSERT_TRUE(again.result.status.ok()) << again.result.status.ToString();
  // Its first loss is the trained model's, far below a fresh model's.
  EXPECT_LT(again.losses[1], first.losses[1] - 1.0);
  EXPECT_NEAR(again.losses[1], first.losses[20], 0.5);
  // Another model's parameters are refused, naming the folder and a parameter.
  fs::path other = fs::path(::testing::TempDir()) / "init_from_other";
  fs::remove_all(other);
  fs::create_directories(other);
  Tensor wrong = Tensor::Zeros(DT_F32, {3, 3});
  ASSERT_TRUE(WriteSafetensors(other / "model.safetensors", {{"embed.weight", wrong}}).ok());
  TrainRun bad = Train("init_from_bad", {"init_from=" + other.string(), "steps=1"});
  ASSERT_FALSE(bad.result.status.ok());
  EXPECT_NE(bad.result.status.ToString().find("parameter 'embed.weight' is [3, 3], the model's is "
                                              "[256, 32]"),
            std::string::npos)
      << bad.result.status.ToString();
}

// The NaN/Inf guard: a non-finite loss stops the run naming the step, check_finite names the node
// that made it, on_nonfinite=skip leaves the parameters as they were and counts the steps.
TEST(Training, NonFiniteLossesStopOrSkip) {
  auto run = [](const std::string& name, std::vector<std::string> sets, CapturedMetrics* metrics) {
    fs::path out = fs::path(::testing::TempDir()) / ("nonfinite_" + name);
    fs::remove_all(out);
    auto g = LoadTestGraph(TestGraph("good/train_nonfinite.pbtxt"), sets);
    CHECK(g.ok()) << g.status().ToString();
    RunOptions options;
    options.out_dir = out;
    options.metrics = metrics;
    options.ops = &TestRegistry();
    return RunGraph(*g, options);
  };
  CapturedMetrics plain;
  ASSERT_TRUE(run("finite", {}, &plain).status.ok());
  CapturedMetrics m1, m2, m3;
  RunResult stopped = run("stop", {"blowup=inf"}, &m1);
  ASSERT_FALSE(stopped.status.ok());
  EXPECT_NE(StripGraphDir(stopped.status.ToString())
                .find("train_nonfinite.pbtxt:18:8: node 'train' (op 'train.Step'): the loss "
                      "'loss' is NaN at step 1"),
            std::string::npos)
      << stopped.status.ToString();
  RunResult located = run("check", {"blowup=inf", "check_finite=true"}, &m2);
  ASSERT_FALSE(located.status.ok());
  EXPECT_NE(StripGraphDir(located.status.ToString())
                .find("train_nonfinite.pbtxt:10:10: node 'scaled' (op 'nn.Scale'): step 1 of "
                      "train: output 'y' f32[2, 8, 8] holds"),
            std::string::npos)
      << located.status.ToString();
  RunResult skipped = run("skip", {"blowup=inf", "on_nonfinite=skip"}, &m3);
  ASSERT_TRUE(skipped.status.ok()) << skipped.status.ToString();
  int rows = 0;
  for (const MetricRow& r : m3.rows()) {
    if (r.node != "train") continue;
    EXPECT_EQ(r.Get("loss"), -1) << "a skipped step logs no loss";
    EXPECT_EQ(r.Get("skipped_steps"), static_cast<double>(++rows));
  }
  EXPECT_EQ(rows, 3);
  // No update happened: the checkpoint holds the initial parameters, which the finite run moved.
  auto initial =
      Params(fs::path(::testing::TempDir()) / "nonfinite_skip" / "checkpoints" / "step-000003");
  auto trained =
      Params(fs::path(::testing::TempDir()) / "nonfinite_finite" / "checkpoints" / "step-000003");
  EXPECT_NE(initial.at("head.weight"), trained.at("head.weight"));
}

TEST(Training, BadOptimizerIsNamed) {
  auto g = LoadTestGraph(TestGraph("good/train_tiny.pbtxt"), {"optimizer=optim.Adam"});
  ASSERT_TRUE(g.ok());
  RunOptions options;
  options.ops = &TestRegistry();
  options.out_dir = ::testing::TempDir();
  RunResult r = RunGraph(*g, options);
  ASSERT_FALSE(r.status.ok());
  EXPECT_NE(r.status.ToString().find(
                "node 'train' (op 'train.Step'): optimizer 'optim.Adam' is not an update op"),
            std::string::npos)
      << r.status.ToString();
}

// A state parameter (moe.Router's selection bias) is not trained but moved by its update rule
// after every optimizer step from the load summed over the step's micro-batches.
TEST(Training, StateParametersFollowTheirUpdateRule) {
  fs::path out = fs::path(::testing::TempDir()) / "train_router";
  fs::remove_all(out);
  auto g = LoadTestGraph(TestGraph("good/train_router.pbtxt"), {});
  ASSERT_TRUE(g.ok()) << g.status().ToString();
  CapturedMetrics metrics;
  RunOptions options;
  options.out_dir = out;
  options.metrics = &metrics;
  options.ops = &TestRegistry();
  RunResult result = RunGraph(*g, options);
  ASSERT_TRUE(result.status.ok()) << result.status.ToString();

  // Every step: 2 micro-batches x 4 x 16 tokens x 2 experts each = 256 routed slots.
  std::ifstream stats(out / "statistics.jsonl");
  std::string line;
  int rows = 0;
  while (std::getline(stats, line)) {
    auto row = ParseJsonObject(line);
    ASSERT_TRUE(row.ok()) << line;
    const auto& load = row->fields().at("router.load").list_value();
    ASSERT_EQ(load.values_size(), 8);
    double total = 0;
    for (const auto& v : load.values()) total += v.number_value();
    EXPECT_EQ(total, 256) << line;
    ++rows;
  }
  EXPECT_EQ(rows, 6);

  // Only whole multiples of the update speed: no optimizer step touched the bias, and an
  // expert's bias moved by at most 0.01 per step.
  auto params = Params(out / "checkpoints" / "step-000006");
  ASSERT_TRUE(params.count("router.bias"));
  double moved = 0;
  for (double b : params["router.bias"]) {
    EXPECT_NEAR(b / 0.01, std::round(b / 0.01), 1e-3) << b;
    EXPECT_LE(std::abs(b), 0.06 + 1e-6);
    moved += std::abs(b);
  }
  EXPECT_GT(moved, 0);
  auto states = ReadSafetensorsSharded(out / "checkpoints" / "step-000006", "optimizer");
  ASSERT_TRUE(states.ok());
  EXPECT_FALSE(states->count("router.bias.m")) << "the optimizer kept state for a state parameter";

  int logged = 0;
  for (const MetricRow& r : metrics.rows()) {
    if (r.node != "train" || r.Get("loss") < 0) continue;
    EXPECT_GE(r.Get("router.load_max_over_mean"), 1.0);
    EXPECT_GT(r.Get("route_sum"), 0);  // a scalar model output besides the loss is logged
    ++logged;
  }
  EXPECT_EQ(logged, 6);
}

}  // namespace
}  // namespace weir::testing
