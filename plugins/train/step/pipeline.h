// Pipeline parallelism for train.Step (DESIGN.md §6): the model's training function is cut into
// stages (ProgramOptions::pipeline), each rank runs its instruction list of a schedule from
// plugins/dualpipe (forwards, backwards split into input and weight gradients, overlapped
// forward & backward pairs, sends and receives of activations and their gradients), and the
// ranks then combine what they computed so every rank takes the same optimizer step.
#pragma once

#include <atomic>
#include <memory>
#include <vector>

#include "dualpipe/schedule.h"
#include "weir/runtime/communicator.h"
#include "weir/runtime/program.h"

namespace weir::train {

struct PipelinePlan {
  dualpipe::Schedule schedule;
  // The program of every stage on a micro-batch's path (schedule.stages of them), built with
  // deferred weight gradients so Bi and W can run apart.
  std::vector<std::shared_ptr<const Program>> stages;
  // The whole function's program (never run): the trained parameters and output names every
  // rank reports, in the same order.
  std::shared_ptr<const Program> whole;
};

// Runs rank comm.rank()'s instruction list of plan.schedule over `micro_batches` (the function's
// inputs of each), then combines over the ranks. Every rank returns the same outputs, as one
// rank running the whole batch would: each trained parameter's gradient (of the mean of the
// micro-batches' losses; DualPipe's two copies of a stage summed), the whole function's scalar
// outputs averaged over micro-batches (other outputs left empty: shape [0]), state statistics
// summed. `abort` is shared by the virtual ranks of one process: a rank that fails sets it, and the
// others stop waiting for tensors that will not come. `batch` numbers the call (the trainer's
// batch count) in traces: each instruction is an event, and an arrow joins a send to its receive.
StatusOr<Program::Outputs> RunPipelineRank(const PipelinePlan& plan,
                                           const std::vector<std::vector<Tensor>>& micro_batches,
                                           const ParamStore& params, Communicator& comm,
                                           std::atomic<bool>* abort, int64_t batch = 0);

}  // namespace weir::train
