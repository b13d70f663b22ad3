// Which rank this process is, as its launcher said: torchrun, Slurm's srun or Open MPI's mpirun.
//
// When several launchers' variables are set, the one closest to the process wins, because a
// launcher started inside another's job inherits the outer one's variables unchanged:
//   1. Open MPI   OMPI_COMM_WORLD_RANK, OMPI_COMM_WORLD_SIZE, OMPI_COMM_WORLD_LOCAL_RANK
//                 (mpirun inside a Slurm allocation: the job's SLURM_PROCID is stale)
//   2. torchrun   RANK, WORLD_SIZE, LOCAL_RANK (torchrun under srun: SLURM_PROCID numbers the
//                 node's agent, not the worker)
//   3. Slurm      SLURM_PROCID, SLURM_NTASKS (or SLURM_NPROCS), SLURM_LOCALID
//   4. none       rank 0 of 1
// A launcher counts as present when its rank variable is set; its size variable must then be set
// too. MASTER_ADDR and MASTER_PORT (torchrun's rendezvous; Slurm scripts often export them) are
// read whichever launcher wins. Values must be plain decimal integers with 0 <= rank < size and
// 0 <= local rank < size; anything else is an error naming the variable and its value.
#pragma once

#include <string>
#include <vector>

#include "weir/status.h"

namespace weir {

struct LaunchInfo {
  std::string launcher = "none";  // "openmpi", "torchrun", "slurm" or "none"
  int rank = 0;
  int world_size = 1;
  int local_rank = 0;       // 0 when the launcher does not set it
  std::string master_addr;  // empty when MASTER_ADDR is not set
  int master_port = 0;      // 0 when MASTER_PORT is not set
  // Other launchers whose variables were also set (and lost to `launcher`), for logs.
  std::vector<std::string> also_set;

  // "rank 1 of 4 (local rank 1) from torchrun"
  std::string ToString() const;
};

// Reads the environment (getenv; call it before starting threads that change it).
StatusOr<LaunchInfo> DetectLaunch();

}  // namespace weir
