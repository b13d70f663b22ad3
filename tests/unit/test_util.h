// Helpers for weir's own unit tests, on top of the SDK's (weir/testing/test_util.h).
#pragma once

#include <google/protobuf/struct.pb.h>

#include <filesystem>
#include <string>
#include <vector>

#include "weir/runtime/executor.h"
#include "weir/runtime/program.h"
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

// Random token ids and next-token targets [batch, time] in [0, vocab), from `seed`.
std::vector<Tensor> RandomTokens(int64_t batch, int64_t time, int64_t vocab, uint64_t seed);

// Checks a model program's parameter gradients (f64) against central differences of output 0
// (the loss) on up to `per_param` elements of every trained parameter, to `tolerance` relative;
// returns how many elements it checked.
int CheckModelGradients(const Program& program, ParamStore& params,
                        const std::vector<Tensor>& inputs, int per_param, double tolerance);

}  // namespace weir::testing
