// weir logits: a Hugging Face DeepSeek checkpoint's logits for token sequences, computed by the
// DeepseekV3 graph function (graphs/models/deepseek_v3.pbtxt) in f32 and written as a .npy file.
// The checkpoint goes through the DeepSeek converter (plugins/deepseek); the graph's ops come
// from the default plugins, as in any run.
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <set>
#include <sstream>

#include "args.h"
#include "commands.h"
#include "decoder.h"
#include "hf_config.h"
#include "hf_weights.h"
#include "model_inputs.h"
#include "weir/runtime/prepare.h"
#include "weir/runtime/program.h"

namespace weir::cli {

namespace fs = std::filesystem;

namespace {

constexpr char kHelp[] =
    R"(usage: weir logits --hf DIR --tokens FILE --out FILE.npy [--prefill N] [--graph FILE]

Runs a Hugging Face DeepSeek-V2/V3 checkpoint (DIR/config.json and DIR/model.safetensors or its
sharded index; F32, BF16 or block-FP8 weights) on token sequences and writes the logits of every
position as float32 [batch, position, vocab] in a NumPy .npy file. The forward pass is the graph
function DeepseekV3 of graphs/models/deepseek_v3.pbtxt, computed in f32. With --prefill N, the
first N tokens of every sequence go through the model at once, then the others one at a time
through the MLA latent cache in the absorbed form (the graph's *Decode functions, as generation
runs them); the logits of every position are written either way.

Options:
  --hf DIR        the Hugging Face checkpoint folder
  --tokens FILE   one sequence per line, space-separated token ids, every line the same length
  --out FILE      the .npy file to write
  --prefill N     decode incrementally after a prefill of N tokens (1 <= N <= length)
  --graph FILE    the model graph file (default: graphs/models/deepseek_v3.pbtxt, found beside
                  the weir binary's share/weir folder or in the source tree above it)
)";

// A float32 .npy file (format 1.0): magic, header length, a Python dict literal padded so the
// data starts on a 64-byte boundary, then the little-endian values in C order.
Status WriteNpy(const fs::path& path, const Tensor& t) {
  Tensor f = t.To(DT_F32);
  std::string shape;
  for (int d = 0; d < f.rank(); ++d) shape += std::to_string(f.dim(d)) + ", ";
  if (f.rank() > 1) shape.resize(shape.size() - 1);
  std::string header = "{'descr': '<f4', 'fortran_order': False, 'shape': (" + shape + "), }";
  while ((10 + header.size() + 1) % 64 != 0) header += ' ';
  header += '\n';
  std::ofstream out(path, std::ios::binary);
  if (!out) return InvalidArgument("cannot write " + path.string());
  out.write("\x93NUMPY\x01\x00", 8);
  uint16_t n = static_cast<uint16_t>(header.size());
  char len[2] = {static_cast<char>(n & 0xff), static_cast<char>(n >> 8)};
  out.write(len, 2);
  out << header;
  out.write(static_cast<const char*>(f.raw_data()), static_cast<std::streamsize>(f.nbytes()));
  out.close();
  if (!out) return InvalidArgument("cannot write " + path.string());
  return Status();
}

// Prefill, then one token at a time; the logits of all steps joined along time.
StatusOr<Tensor> DecodeLogits(const Graph& graph, const deepseek::HfConfig& config,
                              const ParamStore& params, const Tensor& tokens, int64_t prefill) {
  deepseek::LatentDecoder decoder(graph, config.Attrs(DT_F32), OpRegistry::Global(), params);
  int64_t batch = tokens.dim(0), time = tokens.dim(1);
  Tensor all = Tensor::Zeros(DT_F32, {batch, time, config.vocab_size});
  for (int64_t begin = 0; begin < time;) {
    int64_t end = begin == 0 ? prefill : begin + 1;
    WEIR_ASSIGN_OR_RETURN(Tensor step, decoder.Feed(tokens.Slice(1, begin, end).Contiguous()));
    Tensor dense = step.Contiguous();
    size_t row = static_cast<size_t>(config.vocab_size) * sizeof(float);
    for (int64_t b = 0; b < batch; ++b)
      for (int64_t t = begin; t < end; ++t)
        std::memcpy(all.data<float>() + (b * time + t) * config.vocab_size,
                    dense.data<float>() + (b * (end - begin) + t - begin) * config.vocab_size, row);
    begin = end;
  }
  return all;
}

Status Logits(const fs::path& hf, const fs::path& tokens_file, const fs::path& out,
              const std::optional<std::string>& graph_flag, int64_t prefill) {
  WEIR_ASSIGN_OR_RETURN(deepseek::HfConfig config, deepseek::ReadHfConfig(hf));
  WEIR_ASSIGN_OR_RETURN(auto rows, ReadTokenFile(tokens_file, config.vocab_size));
  const int64_t batch = static_cast<int64_t>(rows.size());
  const int64_t time = static_cast<int64_t>(rows[0].size());
  if (prefill > time) {
    return InvalidArgument("--prefill " + std::to_string(prefill) + " exceeds the " +
                           std::to_string(time) + " tokens of each sequence in " +
                           tokens_file.string());
  }
  WEIR_ASSIGN_OR_RETURN(auto weights, deepseek::ImportHfWeights(hf, config));

  fs::path graph_file;
  if (graph_flag) {
    graph_file = *graph_flag;
  } else {
    WEIR_ASSIGN_OR_RETURN(graph_file, FindModelGraph());
  }
  WEIR_ASSIGN_OR_RETURN(Graph graph, PrepareGraph(graph_file, {}));
  std::vector<TensorType> types = {{DT_I64, {batch, time}}, {DT_I64, {batch, time}}};
  WEIR_ASSIGN_OR_RETURN(auto program,
                        Program::Build(graph, "DeepseekV3", config.Attrs(DT_F32), types,
                                       OpRegistry::Global(), ProgramOptions()));

  // The converter's names and the graph's must agree exactly.
  ParamStore params;
  std::vector<std::string> problems;
  std::set<std::string> wanted;
  for (const ParamInfo& p : program->params()) {
    wanted.insert(p.name);
    auto it = weights.find(p.name);
    if (it == weights.end()) {
      problems.push_back("the graph's parameter '" + p.name + "' has no HF tensor");
    } else if (it->second.shape() != p.type.shape) {
      problems.push_back("parameter '" + p.name + "' is " + ShapeString(p.type.shape) +
                         " in the graph, " + ShapeString(it->second.shape()) + " from HF");
    } else {
      params.Set(p.name, it->second);
    }
  }
  for (const auto& [name, t] : weights)
    if (!wanted.count(name)) problems.push_back("the graph has no parameter '" + name + "'");
  if (!problems.empty()) {
    std::string message = graph_file.string() + " and the HF converter disagree:";
    for (const std::string& p : problems) message += "\n  " + p;
    return InvalidArgument(message);
  }

  std::vector<double> ids, targets;
  for (const auto& row : rows)
    for (size_t i = 0; i < row.size(); ++i) {
      ids.push_back(static_cast<double>(row[i]));
      targets.push_back(static_cast<double>(i + 1 < row.size() ? row[i + 1] : 0));
    }
  std::vector<Tensor> inputs = {Tensor::FromValues(DT_I64, {batch, time}, ids),
                                Tensor::FromValues(DT_I64, {batch, time}, targets)};
  if (prefill > 0) {
    WEIR_ASSIGN_OR_RETURN(Tensor logits, DecodeLogits(graph, config, params, inputs[0], prefill));
    return WriteNpy(out, logits);
  }
  WEIR_ASSIGN_OR_RETURN(auto outputs, program->Run(inputs, params));
  const auto& names = program->output_names();
  auto it = std::find(names.begin(), names.end(), "logits");
  if (it == names.end())
    return InvalidArgument(graph_file.string() + ": DeepseekV3 has no output 'logits'");
  return WriteNpy(out, outputs.values[it - names.begin()]);
}

}  // namespace

int LogitsCommand(const std::vector<std::string>& argv) {
  Args args;
  if (auto exit = ParseCommand("logits", argv,
                               {{"hf", true, false},
                                {"tokens", true, false},
                                {"out", true, false},
                                {"graph", true, false},
                                {"prefill", true, false}},
                               kHelp, 0, 0, &args))
    return *exit;
  for (const char* flag : {"hf", "tokens", "out"}) {
    if (!args.Has(flag)) {
      std::cerr << "weir logits: --" << flag << " is required\n";
      return 2;
    }
  }
  auto prefill = args.GetInt("prefill", 0);
  if (!prefill.ok() || (args.Has("prefill") && *prefill < 1)) {
    std::cerr << "weir logits: --prefill takes a number of tokens >= 1\n";
    return 2;
  }
  Status s =
      Logits(*args.Get("hf"), *args.Get("tokens"), *args.Get("out"), args.Get("graph"), *prefill);
  if (!s.ok()) {
    std::cerr << "weir logits: " << s.ToString() << "\n";
    return 1;
  }
  return 0;
}

}  // namespace weir::cli
