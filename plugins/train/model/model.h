// The "model" resource: a tensor function of the graph (the architecture), its attrs (the size),
// and the parameters, shared by every node that names the model (a trainer, an evaluator, a
// generator) without copies.
#pragma once

#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "weir/registrar.h"
#include "weir/runtime/program.h"

namespace weir::train {

class Model : public Resource {
 public:
  // `options` carries the execution choices (recompute, concurrent nodes); the loss is set per
  // program.
  Model(const Graph* graph, const OpRegistry* ops, std::string function,
        std::map<std::string, AttrValue> attrs, uint64_t seed, ProgramOptions options)
      : graph_(graph),
        ops_(ops),
        function_(std::move(function)),
        attrs_(std::move(attrs)),
        seed_(seed),
        options_(std::move(options)) {}

  // The compiled function for these input types (cached), with its parameters created on first
  // use. `loss` empty: forward only.
  StatusOr<std::shared_ptr<const Program>> GetProgram(const std::vector<TensorType>& inputs,
                                                      const std::string& loss);

  // Parameters (f32 masters). Callers that write them (optimizer steps) hold mutex().
  ParamStore& params() { return params_; }
  // Parameters to start from instead of the initializers (a converted Hugging Face checkpoint,
  // a training checkpoint), by name; `source` names them in errors.
  void SetInitial(std::map<std::string, Tensor> values, std::string source) {
    initial_ = std::move(values);
    initial_source_ = std::move(source);
  }
  std::mutex& mutex() { return mu_; }
  const std::string& function() const { return function_; }

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
};

void RegisterModel(Registrar& r);

}  // namespace weir::train
