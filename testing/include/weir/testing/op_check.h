// Checks for tensor ops: run one op in a small program, and compare its gradients with central
// finite differences in f64.
#pragma once

#include <map>
#include <string>
#include <vector>

#include "weir/runtime/program.h"
#include "weir/testing/test_util.h"

namespace weir::testing {

struct OpCase {
  OpCase() = default;
  OpCase(std::string op, std::string attrs, std::vector<TensorType> inputs,
         std::map<int, std::vector<double>> values = {}, std::vector<int> no_grad = {})
      : op(std::move(op)),
        attrs(std::move(attrs)),
        inputs(std::move(inputs)),
        values(std::move(values)),
        no_grad(std::move(no_grad)) {}

  std::string op;     // "nn.RMSNorm"
  std::string attrs;  // compact attrs: "eps=1e-5 T=f64"
  std::vector<TensorType> inputs;
  std::map<int, std::vector<double>> values;  // fixed values (ids, targets); others random
  std::vector<int> no_grad;                   // inputs not to check (ids, masks)
  int output = 0;  // the output the loss reduces; -1: all of them (a sum of weighted sums)
  uint64_t seed = 1;
};

// A graph holding function "F": the op over inputs x0..xn; with_loss adds inputs w0.. and output
// "loss" = Σ_k Σ op.output_k ⊙ w_k over the outputs the case reduces, else F returns every
// output of the op.
StatusOr<Graph> OpGraph(const OpCase& c, bool with_loss);

// How many outputs the case's op node has (a variadic output counted from the case's attrs).
int NumCaseOutputs(const OpCase& c);

// Runs the op forward on `device`; returns all its outputs.
StatusOr<std::vector<Tensor>> RunOp(const OpCase& c, const std::map<int, Tensor>& inputs = {},
                                    ParamStore* params = nullptr,
                                    const std::string& device = "cpu");

// The devices this build of weir runs kernels on. Only "cpu" until weir is built with CUDA.
std::vector<std::string> RunnableDevices();

// Conformance: runs the op on every device it has a kernel for, besides the CPU, and compares
// each output with the CPU kernel's within `tolerance` (relative, at least absolute 1e-12);
// reports differences through gtest. Returns the devices compared; devices with a kernel that
// this build cannot run are added to `not_runnable` (a test should say so, not pass silently).
std::vector<std::string> CheckDeviceConformance(const OpCase& c, double tolerance,
                                                std::vector<std::string>* not_runnable);

// Gradient conformance on one device: the case's loss (as CheckGradients builds it) is
// differentiated on `device` and on the CPU, from the same inputs, parameters and loss weights;
// every input and parameter gradient must agree within `tolerance` (relative, at least absolute
// `tolerance` · 1e-3). Returns how many elements it compared.
int CheckDeviceGradients(const OpCase& c, const std::string& device, double tolerance);

// The inputs the case uses (random floats in [-1, 1] unless fixed), deterministic in the seed.
std::vector<Tensor> CaseInputs(const OpCase& c);

// Compares analytic gradients of every float input (not in no_grad) and every parameter with
// central differences; reports failures through gtest. Returns how many elements it checked.
int CheckGradients(const OpCase& c, double tolerance = 1e-6);

}  // namespace weir::testing
