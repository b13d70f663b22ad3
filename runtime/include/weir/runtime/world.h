// The communicator of the processes a launcher started (mpirun, torchrun, srun), for the whole
// process: the program that owns the process (the weir CLI, which links the MPI backend) sets it
// once before it runs graphs; nodes that train data-parallel across processes (train.Step) read
// it. Null in a process that was not launched as one of several ranks.
#pragma once

#include <memory>

#include "weir/runtime/communicator.h"

namespace weir {

void SetWorldCommunicator(std::shared_ptr<Communicator> world);
// Null when none was set.
Communicator* WorldCommunicator();

// The ranks the calling thread's rank shards parameters over inside tensor programs (expert
// parallelism: each holds some experts and ops exchange tokens with the others), or null: ops
// keep all their parameters local. A trainer sets it on each rank's thread (ShardGroupScope);
// a Program run carries it to every thread that runs one of its nodes, as it does traces.
Communicator* ShardGroup();

class ShardGroupScope {
 public:
  explicit ShardGroupScope(Communicator* group);
  ~ShardGroupScope();
  ShardGroupScope(const ShardGroupScope&) = delete;
  ShardGroupScope& operator=(const ShardGroupScope&) = delete;

 private:
  Communicator* previous_;
};

}  // namespace weir
