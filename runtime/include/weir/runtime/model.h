// A model: a tensor function of the graph (the architecture), its attrs (the size) and its
// parameters, shared by every node that names the model resource — a trainer, an evaluator, a
// generator — without copies. The train plugin registers the "model" resource kind; the class
// lives in the SDK so that any plugin can use a model another plugin trains (a GRPO generator
// and its trainer share one policy).
#pragma once

#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "weir/registrar.h"
#include "weir/runtime/lora.h"
#include "weir/runtime/program.h"

namespace weir {

// Default visibility: plugins are built with hidden symbols, and those that cast a resource to a
// Model must find this class's type information in libweir_runtime.
class __attribute__((visibility("default"))) Model : public Resource {
 public:
  // `options` carries the execution choices (recompute, concurrent nodes); the loss is set per
  // program.
  Model(const Graph* graph, const OpRegistry* ops, std::string function,
        std::map<std::string, AttrValue> attrs, uint64_t seed, ProgramOptions options);
  ~Model() override;

  // The compiled function for these input types (cached), with its parameters created on first
  // use. `loss` empty: forward only. `function` empty: the model's own function; another function
  // of the graph that calls it inline (a loss head around it) shares its parameters by name and
  // gets the model's attrs it declares, then `function_attrs` (its own knobs). `pipeline`: one
  // stage of the function cut for pipeline parallelism, built with deferred weight gradients.
  StatusOr<std::shared_ptr<const Program>> GetProgram(
      const std::vector<TensorType>& inputs, const std::string& loss,
      const std::string& function = "", const std::map<std::string, AttrValue>& function_attrs = {},
      const ProgramOptions::Pipeline& pipeline = {});

  // Parameters (f32 masters). Callers that write them (optimizer steps) hold mutex().
  ParamStore& params() { return params_; }
  // Parameters to start from instead of the initializers (a converted Hugging Face checkpoint,
  // a training checkpoint), by name; `source` names them in errors.
  void SetInitial(std::map<std::string, Tensor> values, std::string source) {
    initial_ = std::move(values);
    initial_source_ = std::move(source);
  }
  // Adapters on the targets, trained alone (before the first GetProgram).
  void SetLora(LoraConfig lora) {
    lora_ = std::move(lora);
    lora_.AddTo(options_);
  }
  const LoraConfig& lora() const { return lora_; }
  // Runs every program with this rewrite too (an expert-parallel op in place of moe.Experts).
  // Only before the first program is built: programs already made would not have it.
  Status AddRewrite(const NodeRewrite& rewrite);
  // The parameters for inference without the adapter ops (incremental decoding): params() with
  // the adapters merged into their base weights, recomputed after each change; params() itself
  // without adapters. Callers hold mutex().
  StatusOr<const ParamStore*> InferenceParams();
  std::mutex& mutex() { return mu_; }
  const std::string& function() const { return function_; }
  const std::map<std::string, AttrValue>& attrs() const { return attrs_; }
  const Graph& graph() const { return *graph_; }
  const OpRegistry& ops() const { return *ops_; }
  // Counts changes to the parameters (trainers call Updated() after each optimizer step and
  // after restoring a checkpoint), so a reader can tell which version of the weights it saw.
  int64_t version() const { return version_; }
  void Updated() { ++version_; }

 private:
  const Graph* graph_;
  const OpRegistry* ops_;
  std::string function_;
  std::map<std::string, AttrValue> attrs_;
  uint64_t seed_;
  ProgramOptions options_;
  std::mutex mu_;
  ParamStore params_;
  std::map<std::string, std::shared_ptr<const Program>> programs_;
  std::map<std::string, Tensor> initial_;
  std::string initial_source_;
  int64_t version_ = 0;
  LoraConfig lora_;
  ParamStore merged_;
  int64_t merged_version_ = -1;
};

}  // namespace weir
