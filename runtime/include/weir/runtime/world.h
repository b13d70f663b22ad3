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

}  // namespace weir
