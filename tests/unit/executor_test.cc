// The TBB executor: order, in-flight bounds, cancellation on error, control edges, stopping,
// the hang watchdog.
#include "weir/runtime/executor.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <fstream>
#include <thread>

#include "test_util.h"

namespace weir::testing {
namespace {

struct Ran {
  RunResult result;
  std::unique_ptr<CapturedMetrics> metrics = std::make_unique<CapturedMetrics>();
};

Ran RunTestGraph(const std::string& name, const std::vector<std::string>& sets = {},
                 RunOptions options = {}) {
  auto g = LoadTestGraph(TestGraph(name), sets);
  CHECK(g.ok()) << g.status().ToString();
  Ran ran;
  options.metrics = ran.metrics.get();
  options.out_dir = ::testing::TempDir();
  ran.result = RunGraph(*g, options);
  return ran;
}

const NodeStats& Stats(const RunResult& r, const std::string& node) {
  for (const NodeStats& s : r.nodes)
    if (s.name == node) return s;
  LOG(FATAL) << "no stats for " << node;
}

TEST(Executor, ConcurrentNodesKeepTheSourceOrder) {
  for (int threads : {1, 2, 8}) {
    RunOptions options;
    options.threads = threads;
    options.max_in_flight = 32;
    Ran ran = RunTestGraph("good/order.pbtxt", {"n=200"}, options);
    ASSERT_TRUE(ran.result.status.ok()) << ran.result.status.ToString();
    std::vector<double> seen = ran.metrics->Values("sink", "i");
    ASSERT_EQ(seen.size(), 200u) << "threads=" << threads;
    for (size_t i = 0; i < seen.size(); ++i) ASSERT_EQ(seen[i], static_cast<double>(i));
    EXPECT_EQ(Stats(ran.result, "jitter").items_in, 200u);
    EXPECT_EQ(Stats(ran.result, "sink").rows_in, 200u);
  }
}

TEST(Executor, InFlightBoundHoldsAFastSourceBack) {
  for (int bound : {1, 4}) {
    RunOptions options;
    options.max_in_flight = bound;
    // The sink waits until `bound` items are out before it takes each one, so the queue is full
    // whatever the machine's load; a broken limiter lets more than bound + 1 out.
    Ran ran = RunTestGraph("good/slow_sink.pbtxt",
                           {"n=60", "sleep_ms=1", "fill=" + std::to_string(bound)}, options);
    ASSERT_TRUE(ran.result.status.ok()) << ran.result.status.ToString();
    std::vector<double> in_flight = ran.metrics->Values("sink", "in_flight");
    ASSERT_EQ(in_flight.size(), 60u);
    double most = *std::max_element(in_flight.begin(), in_flight.end());
    // The limiter admits `bound` items; the source may have produced one more that waits at the
    // limiter. Reaching the bound shows the limiter, not the source, set the pace.
    EXPECT_LE(most, bound + 1) << "bound=" << bound;
    EXPECT_GE(most, bound) << "bound=" << bound;
  }
}

// A source's `in_flight` overrides the run's bound for that source.
TEST(Executor, ASourcesOwnInFlightBoundWins) {
  RunOptions options;
  options.max_in_flight = 16;
  Ran ran = RunTestGraph("good/slow_sink_in_flight.pbtxt", {}, options);
  ASSERT_TRUE(ran.result.status.ok()) << ran.result.status.ToString();
  std::vector<double> in_flight = ran.metrics->Values("sink", "in_flight");
  ASSERT_EQ(in_flight.size(), 60u);
  EXPECT_LE(*std::max_element(in_flight.begin(), in_flight.end()), 3.0);
}

TEST(Executor, AnErrorCancelsTheRunAndNamesTheNode) {
  for (std::string mode : {"status", "throw"}) {
    Ran ran = RunTestGraph("good/failing.pbtxt", {"at=5", "mode=" + mode});
    ASSERT_FALSE(ran.result.status.ok());
    std::string text = StripGraphDir(ran.result.status.ToString());
    std::string expected =
        mode == "status" ? "test.Fail failed at item 5" : "kernel threw: test.Fail threw at item 5";
    EXPECT_EQ(text, "good/failing.pbtxt:3:8: node 'fail' (op 'test.Fail'): " + expected);
    // The sink got at most the items before the failure, in order (the cancellation may overtake
    // some still in flight; a slow machine or a sanitizer build sees that), never one after it,
    // and not the 1000 the source could make; it was never finished.
    std::vector<double> seen = ran.metrics->Values("sink", "i");
    EXPECT_LE(seen.size(), 5u);
    for (size_t i = 0; i < seen.size(); ++i) EXPECT_EQ(seen[i], static_cast<double>(i));
    EXPECT_TRUE(ran.metrics->Values("sink", "finished").empty());
    EXPECT_LT(Stats(ran.result, "src").items_out, 1000u);
    EXPECT_FALSE(ran.result.interrupted);
  }
}

TEST(Executor, TheWatchdogFailsARunWhoseNodeStopsMakingProgress) {
  RunOptions options;
  options.hang_timeout_s = 0.3;
  std::atomic<int> reports{0};
  std::string reported;
  auto start = std::chrono::steady_clock::now();
  double reported_after = -1;
  options.on_hang = [&](const Status& error) {
    reported = StripGraphDir(error.ToString());
    reported_after =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    ++reports;
  };
  // Each call of the sink takes 2 s, far past the 0.3 s timeout.
  Ran ran = RunTestGraph("good/stall.pbtxt", {"n=3", "sleep_ms=2000"}, options);
  EXPECT_EQ(reports.load(), 1);
  EXPECT_LT(reported_after, 1.9) << "reported only when the call returned";
  ASSERT_FALSE(ran.result.status.ok());
  EXPECT_EQ(ran.result.status.code(), StatusCode::kDeadlineExceeded);
  std::string text = StripGraphDir(ran.result.status.ToString());
  EXPECT_EQ(text, reported);
  EXPECT_NE(text.find("good/stall.pbtxt:4:8: node 'stuck' (op 'test.SlowSink'): made no progress"),
            std::string::npos)
      << text;
  EXPECT_NE(text.find("(hang timeout 0.3 s)"), std::string::npos) << text;
  // The run stopped at the first stuck call instead of taking all three.
  EXPECT_LE(Stats(ran.result, "stuck").items_in, 1u);
}

TEST(Executor, TheWatchdogLeavesNodesThatKeepReturningAlone) {
  RunOptions options;
  options.hang_timeout_s = 0.5;
  options.on_hang = [](const Status& error) { ADD_FAILURE() << error.ToString(); };
  // Ten calls of 0.1 s each: 1 s in all, every call well inside the timeout.
  Ran ran = RunTestGraph("good/stall.pbtxt", {"n=10", "sleep_ms=100"}, options);
  EXPECT_TRUE(ran.result.status.ok()) << ran.result.status.ToString();
  EXPECT_EQ(Stats(ran.result, "stuck").items_in, 10u);
}

TEST(Executor, ControlEdgeStartsASourceAfterItsDependencyFinished) {
  Ran ran = RunTestGraph("good/control.pbtxt");
  ASSERT_TRUE(ran.result.status.ok()) << ran.result.status.ToString();
  std::vector<double> inputs = ran.metrics->Values("sink", "input");
  ASSERT_EQ(inputs.size(), 120u);
  // Every row from 'first' (input 0) arrives before any row from 'second' (input 1).
  EXPECT_TRUE(std::is_sorted(inputs.begin(), inputs.end()));
  EXPECT_EQ(std::count(inputs.begin(), inputs.end(), 0.0), 60);
}

TEST(Executor, FanOutDeliversEveryItemToEveryConsumer) {
  Ran ran = RunTestGraph("good/fanout.pbtxt");
  ASSERT_TRUE(ran.result.status.ok()) << ran.result.status.ToString();
  EXPECT_EQ(ran.metrics->Values("left", "i").size(), 100u);
  EXPECT_EQ(ran.metrics->Values("right", "i"), ran.metrics->Values("left", "i"));
  EXPECT_EQ(ran.metrics->Values("left", "finished").size(), 1u);
}

TEST(Executor, AStopRequestEndsTheRunCleanly) {
  auto g = LoadTestGraph(TestGraph("good/forever.pbtxt"));
  ASSERT_TRUE(g.ok()) << g.status().ToString();
  std::atomic<bool> stop{false};
  CapturedMetrics metrics;
  RunOptions options;
  options.stop = &stop;
  options.metrics = &metrics;
  std::thread stopper([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    stop = true;
  });
  RunResult r = RunGraph(*g, options);
  stopper.join();
  EXPECT_TRUE(r.status.ok()) << r.status.ToString();
  EXPECT_TRUE(r.interrupted);
  std::vector<double> seen = metrics.Values("sink", "i");
  EXPECT_GT(seen.size(), 0u);
  // Everything the source made reached the sink, in order, and the sink was finished.
  EXPECT_EQ(seen.size(), Stats(r, "src").rows_out);
  for (size_t i = 0; i < seen.size(); ++i) ASSERT_EQ(seen[i], static_cast<double>(i));
  EXPECT_EQ(metrics.Values("sink", "finished").size(), 1u);
}

TEST(Executor, KernelCreationErrorsNameTheNode) {
  std::string path = ::testing::TempDir() + "/missing_input.pbtxt";
  std::ofstream(path)
      << "node { name: \"read\" op: \"io.JsonlSource\" attr: \"path=nowhere.jsonl\" }\n"
      << "node { name: \"out\" op: \"io.JsonlSink\" input: \"read\" attr: \"path=x.jsonl\" }\n";
  auto g = LoadTestGraph(path);
  ASSERT_TRUE(g.ok()) << g.status().ToString();
  RunResult r = RunGraph(*g, RunOptions{});
  ASSERT_FALSE(r.status.ok());
  std::string missing =
      (std::filesystem::path(::testing::TempDir()) / "nowhere.jsonl").lexically_normal().string();
  EXPECT_EQ(r.status.ToString(),
            path + ":1:8: node 'read' (op 'io.JsonlSource'): no file or folder " + missing);
}

}  // namespace
}  // namespace weir::testing
