#!/usr/bin/env bash
# The MPI communicator across processes: runs mpi_comm_test (every call checked, then the
# mismatch and timeout cases) under Open MPI's mpirun with 2 ranks and reports how long it took.
#   mpi_test.sh MPIRUN PROGRAM      (either empty: skipped, exit 77)
set -euo pipefail
mpirun=${1:-}
program=${2:-}
if [ -z "$mpirun" ] || ! command -v "$mpirun" > /dev/null; then
  echo "mpi_test: SKIPPED: mpirun not found (tools/setup installs openmpi-bin)"
  exit 77
fi
if [ -z "$program" ]; then
  echo "mpi_test: SKIPPED: weir_mpi_comm_test was not built (CMake found no MPI;" \
    "tools/setup installs libopenmpi-dev)"
  exit 77
fi
# --allow-run-as-root: containers often run tests as root, which mpirun refuses by default.
# --oversubscribe: more ranks than cores is fine for a test.
# --mca btl self,vader: shared memory only, so no network interface is needed between ranks.
# btl_vader_single_copy_mechanism none: the default (CMA, process_vm_readv) is denied inside
#   containers without CAP_SYS_PTRACE and fails large messages; copying through the shared
#   segment always works.
# The launcher itself still needs the loopback interface up (PMIx listens on it).
start=$(date +%s%N)
"$mpirun" -np "${MPI_TEST_RANKS:-2}" --allow-run-as-root --oversubscribe \
  --mca btl self,vader --mca btl_vader_single_copy_mechanism none "$program"
end=$(date +%s%N)
echo "mpi_test: passed in $(( (end - start) / 1000000 )) ms (mpirun included)"
