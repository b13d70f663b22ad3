// Communicators: how ranks exchange tensors (DESIGN.md §6; docs/parallel.md shows how to use them).
//
// One interface, several backends: in-process virtual ranks (MakeLocalCommunicators, below) and
// MPI processes (weir/runtime/mpi_communicator.h, in the separate library weir_comm_mpi so that
// neither libweir_runtime nor any plugin links MPI).
//
// Every call is asynchronous: Start…() returns a CommHandle at once and Wait()/Test() finish it;
// the blocking helpers (Send, AllReduce, …) start and wait. Every call has a deadline: timeout_s()
// seconds after it starts. A call that its peers do not join in time fails with kDeadlineExceeded
// and a message naming this rank, the operation, the peers it waited for and the timeout, e.g.
// "rank 1: all_reduce (tag 7): rank 3 did not join within 5 s". Nothing waits forever.
//
// Contracts:
// - Collectives: the k-th collective call of every rank forms one operation, so every rank calls
//   them in the same order. Calls that disagree (an all_reduce meeting a broadcast, different
//   dtypes, shapes, tags or roots) fail on every rank with a message naming both sides.
// - Point to point: a send completes once the matching recv has taken it (rendezvous, like
//   MPI_Issend), so two ranks that exchange start both calls before waiting on either. Sends and
//   recvs match by (source, destination, tag) in the order they were started. The receiver learns
//   the dtype and shape from the sender.
// - Tensors are CPU tensors of any layout. Inputs are read until the call completes: do not write
//   to them before Wait() returns. Results are fresh tensors owned by the caller.
// - Reductions combine in rank order (((x0 + x1) + x2) + …) with a fixed accumulator per dtype —
//   f32 and f64 in themselves, bf16 and f16 in f32 rounded once at the end, i32 and i64 in
//   themselves, wrapping around — so every rank, every run and every backend gets bitwise the same
//   result. Max propagates NaN.
// - After a call times out the communicator is unusable: later calls fail at once. (The MPI backend
//   cannot cancel an MPI collective; a process whose call timed out should exit.)
// - Thread-safety: every method may be called from any thread; handles may be waited on from any
//   thread. Starting collectives from several threads at once leaves their order undefined.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "weir/status.h"
#include "weir/tensor.h"

namespace weir {

enum class ReduceOp { kSum, kMax };
// "sum", "max".
const char* ReduceOpName(ReduceOp op);

struct CommOptions {
  // Seconds each call may take, from its start, before it fails with kDeadlineExceeded.
  double timeout_s = 300;
};

// One call in progress, as a backend implements it. Users hold it through CommHandle.
class CommOp {
 public:
  virtual ~CommOp() = default;
  // Does not block: true once the call has finished, successfully or not (a deadline that has
  // passed finishes it with kDeadlineExceeded).
  virtual bool Test() = 0;
  // Blocks until the call finishes or its deadline passes; returns how it finished.
  virtual Status Wait() = 0;

  // Filled by the backend before the call finishes successfully.
  Tensor result;
  std::vector<int64_t> recv_counts;
};

// A call that already finished with `status` (an argument error found before anything was sent).
std::shared_ptr<CommOp> FinishedCommOp(Status status);

class CommHandle {
 public:
  CommHandle() = default;  // a finished call with nothing to return
  explicit CommHandle(std::shared_ptr<CommOp> op) : op_(std::move(op)) {}

  bool Test() { return op_ == nullptr || op_->Test(); }
  Status Wait() { return op_ == nullptr ? Status::Ok() : op_->Wait(); }
  // After Wait() returned OK: what the call produced (empty for send and barrier).
  const Tensor& result() const;
  // After an all_to_all_v's Wait() returned OK: how many rows came from each rank.
  const std::vector<int64_t>& recv_counts() const;

 private:
  std::shared_ptr<CommOp> op_;
};

class Communicator {
 public:
  virtual ~Communicator() = default;

  virtual int rank() const = 0;
  virtual int size() const = 0;
  // "local", "mpi".
  virtual std::string backend() const = 0;

  // Calls started afterwards get this deadline. CHECK-fails unless seconds > 0.
  void set_timeout_s(double seconds);
  double timeout_s() const { return timeout_s_.load(); }

  // --- Asynchronous calls. Tags are >= 0 (MPI: at most its MPI_TAG_UB, at least 32767). For
  // collectives the tag labels the call in messages and must agree across ranks.

  // Sends `t` to rank `dst`; completes once `dst` has received it.
  virtual CommHandle StartSend(const Tensor& t, int dst, int tag) = 0;
  // Receives what rank `src` sends with `tag`; result() has the sender's dtype and shape.
  virtual CommHandle StartRecv(int src, int tag) = 0;
  // result(): the elementwise sum or max over ranks of `t` (same dtype and shape on every rank).
  virtual CommHandle StartAllReduce(const Tensor& t, ReduceOp op, int tag = 0) = 0;
  // result(): every rank's `t` (same dtype and shape everywhere) concatenated along dim 0 in rank
  // order: [size * d0, d1, …]; a scalar gives [size].
  virtual CommHandle StartAllGather(const Tensor& t, int tag = 0) = 0;
  // `t` is [size * m, …] on every rank; result() is rows [rank * m, (rank + 1) * m) of the
  // reduction over ranks: [m, …].
  virtual CommHandle StartReduceScatter(const Tensor& t, ReduceOp op = ReduceOp::kSum,
                                        int tag = 0) = 0;
  // `t` is [n, …] with n = sum(send_counts); rows are sent in order, send_counts[j] of them to
  // rank j. result() holds the rows received, by source rank: [sum(recv_counts()), …];
  // recv_counts()[i] is how many came from rank i. The row shape (t's dims after the first) and
  // the dtype agree across ranks; counts may be zero.
  virtual CommHandle StartAllToAllV(const Tensor& t, const std::vector<int64_t>& send_counts,
                                    int tag = 0) = 0;
  // result(): `root`'s `t` on every rank. Other ranks pass a tensor of the same dtype and shape
  // (its values are not read).
  virtual CommHandle StartBroadcast(const Tensor& t, int root, int tag = 0) = 0;
  // Completes once every rank has started its barrier.
  virtual CommHandle StartBarrier(int tag = 0) = 0;

  // --- Blocking helpers: start, then wait.
  Status Send(const Tensor& t, int dst, int tag);
  StatusOr<Tensor> Recv(int src, int tag);
  StatusOr<Tensor> AllReduce(const Tensor& t, ReduceOp op, int tag = 0);
  StatusOr<Tensor> AllGather(const Tensor& t, int tag = 0);
  StatusOr<Tensor> ReduceScatter(const Tensor& t, ReduceOp op = ReduceOp::kSum, int tag = 0);
  struct AllToAllVResult {
    Tensor tensor;
    std::vector<int64_t> recv_counts;
  };
  StatusOr<AllToAllVResult> AllToAllV(const Tensor& t, const std::vector<int64_t>& send_counts,
                                      int tag = 0);
  StatusOr<Tensor> Broadcast(const Tensor& t, int root, int tag = 0);
  Status Barrier(int tag = 0);

 protected:
  explicit Communicator(const CommOptions& options);

 private:
  std::atomic<double> timeout_s_;
};

// `size` in-process ranks sharing one hub: communicator r is rank r. Each is meant for its own
// thread (a virtual rank); a call blocks only in Wait(). The hub lives until the last communicator
// and handle are gone.
std::vector<std::unique_ptr<Communicator>> MakeLocalCommunicators(int size,
                                                                  const CommOptions& options = {});

}  // namespace weir
