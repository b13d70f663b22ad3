#include "weir/runtime/communicator.h"

#include "weir/runtime/world.h"

namespace weir {

const char* ReduceOpName(ReduceOp op) { return op == ReduceOp::kSum ? "sum" : "max"; }

namespace {

class FinishedOp : public CommOp {
 public:
  explicit FinishedOp(Status status) : status_(std::move(status)) {}
  bool Test() override { return true; }
  Status Wait() override { return status_; }

 private:
  Status status_;
};

}  // namespace

std::shared_ptr<CommOp> FinishedCommOp(Status status) {
  return std::make_shared<FinishedOp>(std::move(status));
}

const Tensor& CommHandle::result() const {
  static const Tensor kNone;
  return op_ == nullptr ? kNone : op_->result;
}

const std::vector<int64_t>& CommHandle::recv_counts() const {
  static const std::vector<int64_t> kNone;
  return op_ == nullptr ? kNone : op_->recv_counts;
}

Communicator::Communicator(const CommOptions& options) : timeout_s_(options.timeout_s) {
  CHECK_GT(options.timeout_s, 0) << "a communicator's timeout is a positive number of seconds";
}

void Communicator::set_timeout_s(double seconds) {
  CHECK_GT(seconds, 0) << "a communicator's timeout is a positive number of seconds";
  timeout_s_.store(seconds);
}

namespace {

StatusOr<Tensor> ResultOf(CommHandle handle) {
  WEIR_RETURN_IF_ERROR(handle.Wait());
  return handle.result();
}

}  // namespace

Status Communicator::Send(const Tensor& t, int dst, int tag) {
  return StartSend(t, dst, tag).Wait();
}

StatusOr<Tensor> Communicator::Recv(int src, int tag) { return ResultOf(StartRecv(src, tag)); }

StatusOr<Tensor> Communicator::AllReduce(const Tensor& t, ReduceOp op, int tag) {
  return ResultOf(StartAllReduce(t, op, tag));
}

StatusOr<Tensor> Communicator::AllGather(const Tensor& t, int tag) {
  return ResultOf(StartAllGather(t, tag));
}

StatusOr<Tensor> Communicator::ReduceScatter(const Tensor& t, ReduceOp op, int tag) {
  return ResultOf(StartReduceScatter(t, op, tag));
}

StatusOr<Communicator::AllToAllVResult> Communicator::AllToAllV(
    const Tensor& t, const std::vector<int64_t>& send_counts, int tag) {
  CommHandle handle = StartAllToAllV(t, send_counts, tag);
  WEIR_RETURN_IF_ERROR(handle.Wait());
  return AllToAllVResult{handle.result(), handle.recv_counts()};
}

StatusOr<Tensor> Communicator::Broadcast(const Tensor& t, int root, int tag) {
  return ResultOf(StartBroadcast(t, root, tag));
}

Status Communicator::Barrier(int tag) { return StartBarrier(tag).Wait(); }

}  // namespace weir

namespace weir {
namespace {
std::shared_ptr<Communicator>& World() {
  static std::shared_ptr<Communicator> world;
  return world;
}
}  // namespace

void SetWorldCommunicator(std::shared_ptr<Communicator> world) { World() = std::move(world); }
Communicator* WorldCommunicator() { return World().get(); }

namespace {
thread_local Communicator* shard_group = nullptr;
}  // namespace

Communicator* ShardGroup() { return shard_group; }
ShardGroupScope::ShardGroupScope(Communicator* group) : previous_(shard_group) {
  shard_group = group;
}
ShardGroupScope::~ShardGroupScope() { shard_group = previous_; }

}  // namespace weir
