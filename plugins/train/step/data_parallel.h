// Data parallelism for train.Step (DESIGN.md §6): every rank computes the gradients of its share
// of the rows of a batch, and the ranks combine them before one optimizer step. Ranks are either
// virtual (threads of this process, each in its own TBB arena, talking through the in-process
// communicator) or processes started by a launcher (the world communicator, MPI).
#pragma once

#include <map>
#include <string>
#include <vector>

#include "weir/runtime/communicator.h"
#include "weir/runtime/program.h"

namespace weir::train {

// Rows [r·n/ranks, (r+1)·n/ranks) of every input (dim 0 is the batch); n must divide. With one
// rank, the inputs themselves.
StatusOr<std::vector<Tensor>> RowShard(const std::vector<Tensor>& inputs, int rank, int ranks);

// Combines one rank's outputs with every other rank's through `comm`, in place and the same on
// every rank: parameter gradients and scalar outputs are averaged (each rank's loss is a mean
// over its rows), state statistics summed (they are sums over rows). Deterministic: the
// communicator reduces in rank order.
Status CombineOverRanks(Communicator& comm, Program::Outputs& outputs);

// sums[name] += t, summed in f32; the first call stores a copy of t in f32, so a sum never
// keeps t's storage (a program run's arena) alive.
void AddToSum(std::map<std::string, Tensor>& sums, const std::string& name, const Tensor& t);

// ZeRO-1: the rank that keeps the optimizer state of, and updates, each parameter — the largest
// parameters first, each to the rank with the fewest elements so far (ties: by name).
std::map<std::string, int> OptimizerShards(const std::map<std::string, Tensor>& params, int ranks);

}  // namespace weir::train
