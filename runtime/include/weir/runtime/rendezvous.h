// A TCP rendezvous: rank 0 of a launch hands a small blob to every other rank through
// MASTER_ADDR:MASTER_PORT (torchrun's variables, read by weir/runtime/launch.h). NCCL needs it:
// rank 0 makes the communicator's unique id and every rank must pass the same one to
// ncclCommInitRank; without MPI, this is how the id travels.
//
// Rank 0 listens on the port and answers each rank that connects and names itself; the others
// connect (retrying until rank 0 listens) and read the blob. Every step has the deadline
// `timeout_s` from the call: rank 0 names the ranks that never came, the others the address they
// could not reach. A connection that does not speak the protocol (a stray client, a port scan)
// is dropped and does not count.
#pragma once

#include <string>

#include "weir/status.h"

namespace weir {

struct RendezvousOptions {
  std::string host = "127.0.0.1";  // rank 0's address (MASTER_ADDR)
  int port = 29500;                // MASTER_PORT
  int rank = 0;
  int size = 1;
  double timeout_s = 300;
};

// On rank 0 `blob` is what to share (at most 1 MiB) and is returned; on the others, what rank 0
// shared.
StatusOr<std::string> ShareFromRankZero(const RendezvousOptions& options, const std::string& blob);

}  // namespace weir
