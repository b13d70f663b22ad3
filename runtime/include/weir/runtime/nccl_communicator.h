// The NCCL backend of weir::Communicator: one rank per GPU, tensors on the device. It lives in its
// own library, weir_comm_nccl (built when CMake finds CUDA and NCCL), so that programs and plugins
// that do not ask for it never link NCCL. This header includes neither CUDA nor NCCL.
//
// How it behaves (the contracts of weir/runtime/communicator.h hold except where said here):
// - Tensors live on the communicator's GPU (cuda:N), dense. A host tensor, one on another GPU or a
//   strided view is refused with an error saying so: a hidden copy would cost a host round trip
//   per call and hand back device results for host inputs. Results are fresh tensors on cuda:N,
//   allocated from that device's runtime (weir/device.h) on the communicator's streams.
// - Inputs must be ready when a call starts: the work that wrote them has finished (the runtime
//   synchronizes a run's stream before its outputs travel), because the communicator's streams do
//   not wait for other streams. Results are ready once Wait() returned OK or Test() returned true.
// - Two NCCL communicators per communicator (one with a single rank), each with its own CUDA
//   stream of the highest priority: the first carries the collectives and the messages from lower
//   to higher ranks, the second the messages from higher to lower ranks (why: below). One thread
//   per communicator drives the calls: it issues the NCCL work, reads what the host must read
//   between steps (call records, message headers, row counts), watches each call's deadline and
//   ncclCommGetAsyncError, and finishes calls. Test() polls the call's CUDA event; Wait() waits for
//   the thread's word (weir::AwaitCallback: inside a TBB task the worker runs other tasks
//   meanwhile, no worker blocks on the GPU).
// - Collectives start at once, in call order. Unless NcclOptions::check_calls is off, each first
//   gathers every rank's call record (one small all-gather and a host round trip), so calls that
//   disagree fail on every rank naming both sides, as in the other backends. all_to_all_v always
//   exchanges its row counts first (ncclAlltoAll), then moves rows with grouped ncclSend/ncclRecv.
// - Reductions: by default (NcclReduction::kRankOrder) ranks exchange chunks with grouped
//   send/recv, each reduces its chunk in rank order on the GPU with the backends' accumulators
//   (f32 for bf16 and f16, wrapping integers, NaN-propagating max) and the chunks are shared
//   again: the results are bitwise those of the local and MPI backends, except NaN payloads of
//   sums. kNccl uses ncclAllReduce / ncclReduceScatter instead: faster (NVLS, trees), the same on
//   every rank, but summed in NCCL's order and with bf16/f16 partial sums rounded per step.
// - Point to point (ncclSend/ncclRecv) starts at once: each message is a small header (tag,
//   dtype, shape) then the data. The receiver pulls one header per recv, reads it on the host and
//   gives the message to the oldest waiting recv of that (source, tag), keeping messages no recv
//   asked for yet; a send to this rank itself is a device copy. An NCCL send or receive blocks its
//   stream until the peer's matching call runs, so the calls of one direction between two ranks
//   run in the order they started: two ranks that send to each other first and then receive are
//   fine (the directions use different streams), but a rank whose recv from a lower rank waits for
//   a message that depends on a later send of its own to a higher rank (or a chain of three ranks
//   doing so) waits until its deadline, where the MPI backend would not. Collectives share the
//   first stream with the upward messages: do not keep point-to-point calls and collectives of one
//   communicator in flight at the same time on ranks that order them differently (use two
//   communicators).
// - Deadlines as in communicator.h: a call that does not finish within timeout_s() fails with
//   kDeadlineExceeded naming the call, its tag and peer, what it waited for and the time it
//   waited; the communicator then calls ncclCommAbort and fails every later call. An NCCL error
//   reported while calls are in flight (ncclCommGetAsyncError) does the same.
// - Destroying the communicator first waits for its calls (each within its deadline), then
//   finalizes NCCL (or aborts it, when calls never finished).
#pragma once

#include <memory>
#include <string>

#include "weir/runtime/communicator.h"

namespace weir {

enum class NcclReduction {
  kRankOrder,  // bitwise the other backends' results (see above)
  kNccl,       // NCCL's own all-reduce and reduce-scatter
};

struct NcclOptions : CommOptions {
  // The GPU of this rank; -1: the only one the process sees, else the launcher's local rank.
  int device = -1;
  NcclReduction reduction = NcclReduction::kRankOrder;
  // Gather every rank's call record before each collective's data moves (see above). Off saves a
  // small all-gather and a host round trip per call; calls that disagree then hang until their
  // deadline (or corrupt data) instead of failing at once.
  bool check_calls = true;
};

// A communicator over the processes of a launch (weir/runtime/launch.h: torchrun, srun, mpirun):
// rank and size from the launcher, one GPU per rank. Rank 0's NCCL unique id reaches the others
// through the world communicator when one is set (weir/runtime/world.h: `weir run` sets the MPI
// one under mpirun), else through the TCP rendezvous at MASTER_ADDR:MASTER_PORT
// (weir/runtime/rendezvous.h; one communicator per port at a time). Creation is collective and
// fails after options.timeout_s when a rank does not join.
StatusOr<std::unique_ptr<Communicator>> MakeNcclCommunicator(const NcclOptions& options = {});

// The same over the ranks of `bootstrap` (an MPI or local communicator; rank r of it becomes rank
// r here), which broadcasts the unique id (as a CPU tensor, with its own deadline). Every rank of
// `bootstrap` calls it.
StatusOr<std::unique_ptr<Communicator>> MakeNcclCommunicator(Communicator& bootstrap,
                                                             const NcclOptions& options = {});

// The NCCL library's version, "2.28.9".
std::string NcclVersion();

// out[i] = parts[0 * stride + i] ⊕ parts[1 * stride + i] ⊕ … ⊕ parts[(count - 1) * stride + i]
// for i in [0, n), in that order, with the backends' accumulators, queued on `stream` (a
// cudaStream_t): the reduction kNccl does not use. Device pointers; `out` may alias no part.
// Exposed so the GPU tests compare it with the host's comm reduction bit for bit.
Status ReduceRanksOnDevice(DataType dtype, ReduceOp op, const void* parts, int64_t stride,
                           int count, int64_t n, void* out, StreamId stream);

}  // namespace weir
