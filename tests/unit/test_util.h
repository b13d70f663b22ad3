// Helpers for weir's own unit tests, on top of the SDK's (weir/testing/test_util.h).
#pragma once

#include <google/protobuf/struct.pb.h>

#include <filesystem>
#include <map>
#include <string>
#include <vector>

#include "weir/runtime/executor.h"
#include "weir/runtime/program.h"
#include "weir/runtime/trace.h"
#include "weir/testing/test_util.h"

namespace weir::testing {

// GPT-2's byte alphabet, as UTF-8: how byte-level vocabularies spell byte b.
std::string ByteChar(int b);

// Every line of a JSON Lines file as an object (a line that does not parse fails the test).
std::vector<google::protobuf::Struct> ReadJsonlRows(const std::filesystem::path& file);

// tests/graphs/<name> in the source tree.
std::string TestGraph(const std::string& name);
// A path with the tests/graphs/ prefix removed, for stable messages.
std::string StripGraphDir(const std::string& text);

// Loads a graph file with --set style overrides against TestRegistry() and runs it with its
// outputs in out_dir (resuming from `resume` when given). A graph that does not load gives a
// result with that error.
RunResult RunGraphFile(const std::filesystem::path& graph, const std::filesystem::path& out_dir,
                       const std::vector<std::string>& sets = {},
                       const std::filesystem::path& resume = {});

// A training graph (tests/graphs/<graph>) run to its end in TempDir()/<name> with --set style
// overrides: node "train"'s logged losses and the tensors of its checkpoint `checkpoint`
// ("step-000004"); the optimizer state only when the optimizer keeps one.
struct TrainedRun {
  std::filesystem::path out;
  std::vector<double> losses;
  std::map<std::string, Tensor> params, states;
};
TrainedRun TrainGraph(const std::string& graph, const std::string& name,
                      const std::vector<std::string>& sets, const std::string& checkpoint,
                      Trace* trace = nullptr);

// The largest |a - b| / max(floor, |a|) over the elements of same-named tensors; a tensor of `a`
// missing from `b` or of another shape fails the test.
double MaxRelativeDifference(const std::map<std::string, Tensor>& a,
                             const std::map<std::string, Tensor>& b, double floor);

// `trace` written to TempDir()/<name>.json and read back.
std::string TraceJson(const Trace& trace, const std::string& name);

// Random token ids and next-token targets [batch, time] in [0, vocab), from `seed`.
std::vector<Tensor> RandomTokens(int64_t batch, int64_t time, int64_t vocab, uint64_t seed);

// Checks a model program's parameter gradients (f64) against central differences of output 0
// (the loss) on up to `per_param` elements of every trained parameter, to `tolerance` relative;
// returns how many elements it checked.
int CheckModelGradients(const Program& program, ParamStore& params,
                        const std::vector<Tensor>& inputs, int per_param, double tolerance);

}  // namespace weir::testing
