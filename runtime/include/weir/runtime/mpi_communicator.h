// The MPI backend of weir::Communicator: one rank per process, launched by Open MPI's mpirun.
// It lives in its own library, weir_comm_mpi (built when CMake finds MPI), so that programs and
// plugins that do not ask for MPI never link it. This header does not include mpi.h.
//
// How it behaves (docs/parallel.md has more):
// - MPI is initialized on first use with MPI_THREAD_MULTIPLE requested (MpiThreadLevel() says what
//   was granted; below MULTIPLE every MPI call is serialized behind one process-wide mutex), and
//   finalized at exit when weir initialized it. A program that initialized MPI itself keeps it.
// - Calls are nonblocking MPI operations that Test()/Wait() poll against the call's deadline; any
//   poll progresses every pending call of the communicator, so waiting on one call never starves
//   another that a peer needs.
// - Reductions do not use MPI's: chunks travel with MPI_Ialltoallv, each rank reduces its chunk in
//   rank order, and MPI_Iallgatherv shares the chunks. The results are bitwise those of the local
//   backend on every rank, and bf16 accumulates in f32 without a custom MPI_Op.
// - Every collective first gathers a small record of each rank's call, so calls that disagree
//   (operation, tag, dtype, shape, root) fail on every rank naming both sides, and a rank that
//   passed invalid arguments fails its peers too. This costs one small MPI_Iallgather per call.
//   Mismatches between a collective and a point-to-point call cannot be seen: they time out.
// - On timeout MPI cannot cancel the pending collective: the call fails, the communicator refuses
//   every later call, and its buffers are kept until exit. The process should then end: return
//   from main, or MpiAbort() to take the whole job down at once.
// - Counts are MPI ints: a call moves at most 2^31 - 1 elements (rows, for all_to_all_v) per rank
//   and a send at most 2 GiB.
#pragma once

#include <memory>
#include <string>

#include "weir/runtime/communicator.h"

namespace weir {

// A communicator over every process of the MPI job (a duplicate of MPI_COMM_WORLD: weir's
// messages never meet the program's own). Every process creates its communicators in the same
// order; creation is collective and fails after options.timeout_s when a process does not join.
StatusOr<std::unique_ptr<Communicator>> MakeMpiCommunicator(const CommOptions& options = {});

// "MPI_THREAD_MULTIPLE", "MPI_THREAD_SERIALIZED", …; "" before MPI is initialized.
std::string MpiThreadLevel();

// MPI_Abort(MPI_COMM_WORLD, exit_code): ends every process of the job.
[[noreturn]] void MpiAbort(int exit_code);

}  // namespace weir
