// Checking and simulating pipeline schedules: every stage of every micro-batch runs forward and
// backward once where the placement puts it, in dependency order, every cross-rank tensor has one
// send and one matching receive, and an event-driven simulation runs the lists to the end
// (or names the ranks whose receives wait on each other). The simulation gives each rank's busy
// and idle time, the bubble and the peak number of activations held.
#pragma once

#include <optional>
#include <vector>

#include "schedule.h"
#include "weir/status.h"

namespace weir::dualpipe {

// Time units per instruction. A Bi takes backward - weight; sends and receives take no rank time,
// but a tensor arrives `comm` after its send.
struct Durations {
  double forward = 1;
  double backward = 2;  // the full backward (input and weight gradients)
  double weight = 1;
  double forward_backward = 3;  // an overlapped F&B pair
  double comm = 0;
};

struct Timing {
  double start = 0;
  double end = 0;
};

struct RankStats {
  double busy = 0;
  double bubble = 0;  // makespan - busy: the time this rank idles within the step
  // The most micro-batch stages whose activations this rank holds at once: one is held from the
  // start of its forward to the end of its input backward (B or Bi; an F&B pair holds both).
  int peak_activations = 0;
  std::vector<Timing> timings;  // per instruction of the rank's program
};

struct Simulation {
  double makespan = 0;
  double max_bubble = 0;
  std::vector<RankStats> ranks;
};

// The static checks: placement, completeness, dependency order within each rank, and matched
// sends and receives. Every problem is reported, naming the rank, the instruction's index in its
// program and its label.
Status CheckSchedule(const Schedule& schedule);

// CheckSchedule, then the simulation. A deadlock is FailedPrecondition naming the cycle of ranks
// and the instructions they wait at and for.
StatusOr<Simulation> Simulate(const Schedule& schedule, const Durations& durations = {});

// The bubble the DualPipe README (spec §5.4) gives for the schedule, with PP the number of stages:
// 1F1B (PP-1)(F+B), ZB1P (PP-1)(F+B-2W), DualPipe and DualPipeV (PP/2-1)(F&B+B-3W); none for
// GPipe.
std::optional<double> FormulaBubble(const Schedule& schedule, const Durations& durations);

}  // namespace weir::dualpipe
