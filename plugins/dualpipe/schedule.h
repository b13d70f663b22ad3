// Pipeline schedules as data: for GPipe, 1F1B, ZB1P, DualPipe and DualPipeV, the instruction list
// each rank runs (forward and backward chunks, deferred weight gradients, overlapped forward &
// backward pairs, sends and receives). The runtime only executes such lists; validate.h checks
// them and simulates their timing.
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "weir/status.h"

namespace weir::dualpipe {

enum class ScheduleKind { kGPipe, k1F1B, kZB1P, kDualPipe, kDualPipeV };

// The name the CLI and JSON use ("gpipe", "1f1b", "zb1p", "dualpipe", "dualpipev").
std::string_view ScheduleKindName(ScheduleKind kind);
StatusOr<ScheduleKind> ParseScheduleKind(std::string_view name);

enum class OpKind {
  kForward,          // F: one stage's forward for one micro-batch (the last stage adds the loss)
  kBackward,         // B: input and weight gradients together
  kBackwardInput,    // Bi: input gradients only; the weight gradients wait for a W
  kWeight,           // W: the weight gradients a Bi deferred
  kForwardBackward,  // F&B: a forward and a backward of two micro-batches, overlapped
  kSend,
  kRecv,
};

std::string_view OpKindName(OpKind kind);

// What a send or receive carries: a forward's output or a backward's input gradient.
enum class Payload { kActivation, kGradient };

struct Instruction {
  OpKind kind = OpKind::kForward;
  // The micro-batch and the stage of its path (0 .. Schedule::stages-1) the work is for. For a
  // send or receive, the stage that produced the tensor: an activation of stage s goes to stage
  // s+1, a gradient of stage s to stage s-1.
  int micro_batch = -1;
  int stage = -1;
  // Which of the rank's model chunks (parameter copies) runs it; -1 for sends and receives.
  int chunk = -1;
  // kForwardBackward only: the overlapped backward (micro_batch/stage/chunk are its forward).
  int backward_micro_batch = -1;
  int backward_stage = -1;
  int backward_chunk = -1;
  // kSend/kRecv only.
  int peer = -1;
  Payload payload = Payload::kActivation;

  bool operator==(const Instruction&) const = default;
};

// Where one stage of one micro-batch's path runs.
struct Location {
  int rank = -1;
  int chunk = -1;
  bool operator==(const Location&) const = default;
};

struct Schedule {
  ScheduleKind kind = ScheduleKind::k1F1B;
  int ranks = 0;
  int micro_batches = 0;
  int stages = 0;  // stages on a micro-batch's path: 2P for DualPipeV, else P
  // chunk_stage[r][c]: the model stage rank r's chunk c holds. DualPipe: rank r holds stages r
  // and P-1-r (every stage twice); DualPipeV: r and 2P-1-r; the others: r.
  std::vector<std::vector<int>> chunk_stage;
  // route[m][s]: where stage s of micro-batch m runs. DualPipe sends the first M/2 micro-batches
  // down from rank 0 (chunk 0) and the second half up from rank P-1 (chunk 1).
  std::vector<std::vector<Location>> route;
  std::vector<std::vector<Instruction>> programs;  // per rank, in execution order
};

// The per-rank instruction lists of `kind` for `ranks` pipeline ranks and `micro_batches`
// micro-batches, or InvalidArgument saying which constraint the combination breaks (DualPipe:
// even P, even M, M >= 2P; DualPipeV: M >= 2P; all: P >= 1, M >= 1).
StatusOr<Schedule> MakeSchedule(ScheduleKind kind, int ranks, int micro_batches);

// A compute instruction as the DualPipe README writes it: "F3", "Bi2", "W0"; DualPipe names the
// direction and its own micro-batch number ("FD3", "BiU1"), DualPipeV the chunk ("Fa3", "Fb3");
// a pair is "[FD3&BU1]"; sends and receives read "send A3.s1>r2" / "recv G3.s2<r2".
std::string InstructionLabel(const Schedule& schedule, const Instruction& instruction);

// The micro-batch number printed for micro_batch m (DualPipe counts each direction from 0).
int DisplayMicroBatch(const Schedule& schedule, int micro_batch);

}  // namespace weir::dualpipe
