// The in-process backend: virtual ranks (threads) meeting in one hub.
//
// Collectives: the k-th collective of every rank meets in slot k. A rank that joins checks its
// call against the first rank's; the last rank to join computes every rank's result (outside the
// lock, reading the inputs in rank order) and finishes them all. A slot that can no longer complete
// — a rank refused its arguments, two calls disagree, a rank gave up waiting — fails the ranks
// waiting in it and every rank that joins it later, each with a message from its own side.
// Point to point: per (source, destination, tag), a queue of unmatched sends or of unmatched
// recvs; a send and a recv that meet finish together.
#include <condition_variable>
#include <cstring>
#include <deque>
#include <map>
#include <mutex>
#include <tuple>

#include "comm/collective.h"
#include "weir/runtime/communicator.h"

namespace weir {
namespace {

using comm::Clock;
using comm::CollectiveCall;
using comm::CollectiveKind;

class Hub;

// One rank's call. Its fields are guarded by the hub's mutex.
class LocalOp : public CommOp {
 public:
  enum class Kind { kCollective, kSend, kRecv };

  LocalOp(std::shared_ptr<Hub> hub, Kind kind, int rank, std::string label, double timeout_s)
      : hub_(std::move(hub)),
        kind(kind),
        rank(rank),
        label(std::move(label)),
        timeout_s(timeout_s),
        deadline(Clock::now() + std::chrono::duration_cast<Clock::duration>(
                                    std::chrono::duration<double>(timeout_s))) {}

  bool Test() override;
  Status Wait() override;

  const std::shared_ptr<Hub> hub_;
  const Kind kind;
  const int rank;
  const std::string label;  // "rank 1: all_reduce (tag 7)", "rank 0: send (tag 3) to rank 1"
  const double timeout_s;
  const Clock::time_point deadline;

  // What the call is.
  CollectiveCall call;
  int64_t seq = -1;  // which collective of this rank
  Tensor input;      // contiguous
  std::vector<int64_t> send_counts;
  int peer = -1;  // send / recv
  int tag = 0;

  bool done = false;
  // Every peer is there: the results are being computed, so the deadline no longer applies.
  bool all_joined = false;
  Status status;
  std::condition_variable cv;
};

class Hub {
 public:
  explicit Hub(int size) : size(size), next_seq(size, 0), broken(size) {}

  const int size;
  std::mutex mu;
  std::vector<int64_t> next_seq;
  // Per rank: the timeout after which its communicator refuses further calls.
  std::vector<Status> broken;

  struct Slot {
    explicit Slot(int size) : ops(size), joined(size, false) {}
    std::vector<std::shared_ptr<LocalOp>> ops;  // waiting, by rank
    std::vector<bool> joined;                   // ever joined
    int n_joined = 0;
    int first_rank = -1;
    CollectiveCall first_call;
    enum class Failure { kNone, kInvalid, kMismatch, kAbandoned } failure = Failure::kNone;
    int failure_rank = -1;  // who passed invalid arguments, called something else, or gave up
    CollectiveCall failure_call;
    std::string failure_detail;
  };
  std::map<int64_t, Slot> slots;

  struct Mailbox {
    std::deque<std::shared_ptr<LocalOp>> sends;
    std::deque<std::shared_ptr<LocalOp>> recvs;
  };
  std::map<std::tuple<int, int, int>, Mailbox> mail;  // by (source, destination, tag)

  void FinishLocked(LocalOp& op, Status s) {
    if (op.done) return;
    if (s.code() == StatusCode::kDeadlineExceeded && broken[op.rank].ok()) broken[op.rank] = s;
    op.done = true;
    op.status = std::move(s);
    op.cv.notify_all();
  }

  // The error `op` (at its rank, with its call) gets from a slot that failed.
  Status SlotError(const Slot& slot, const LocalOp& op) const {
    std::string where = op.label + ": ";
    std::string other = "rank " + std::to_string(slot.failure_rank);
    switch (slot.failure) {
      case Slot::Failure::kInvalid:
        return InvalidArgument(where + other + " passed invalid arguments (" + slot.failure_detail +
                               ")");
      case Slot::Failure::kMismatch: {
        // Name whichever side this rank's call disagrees with.
        bool sides_with_first = op.call.Matches(slot.first_call);
        int peer = sides_with_first ? slot.failure_rank : slot.first_rank;
        const CollectiveCall& peer_call = sides_with_first ? slot.failure_call : slot.first_call;
        return InvalidArgument("rank " + std::to_string(op.rank) + ": " + op.call.Describe() +
                               " does not match rank " + std::to_string(peer) + "'s " +
                               peer_call.Describe());
      }
      case Slot::Failure::kAbandoned:
        if (op.all_joined || slot.ops[op.rank] != nullptr) {
          return DeadlineExceeded(where + slot.failure_detail + " (" + other + " gave up waiting)");
        }
        return DeadlineExceeded(where + "joined after " + other + " gave up waiting (" +
                                slot.failure_detail + ")");
      case Slot::Failure::kNone:
        break;
    }
    return Internal(where + "collective slot has not failed");
  }

  void FailSlotLocked(int64_t seq) {
    Slot& slot = slots.at(seq);
    for (auto& waiting : slot.ops) {
      if (waiting == nullptr) continue;
      FinishLocked(*waiting, SlotError(slot, *waiting));
      waiting = nullptr;
    }
    if (slot.n_joined == size) slots.erase(seq);
  }

  void TimeOutLocked(LocalOp& op) {
    if (op.kind == LocalOp::Kind::kCollective) {
      Slot& slot = slots.at(op.seq);
      std::vector<int> missing;
      for (int r = 0; r < size; ++r)
        if (!slot.joined[r]) missing.push_back(r);
      std::string detail =
          comm::RankList(missing) + " did not join within " + comm::Seconds(op.timeout_s);
      slot.ops[op.rank] = nullptr;
      FinishLocked(op, DeadlineExceeded(op.label + ": " + detail));
      slot.failure = Slot::Failure::kAbandoned;
      slot.failure_rank = op.rank;
      slot.failure_detail = detail;
      FailSlotLocked(op.seq);
      return;
    }
    bool is_send = op.kind == LocalOp::Kind::kSend;
    auto key = is_send ? std::make_tuple(op.rank, op.peer, op.tag)
                       : std::make_tuple(op.peer, op.rank, op.tag);
    Mailbox& box = mail.at(key);
    auto& queue = is_send ? box.sends : box.recvs;
    std::erase_if(queue, [&](const std::shared_ptr<LocalOp>& o) { return o.get() == &op; });
    if (box.sends.empty() && box.recvs.empty()) mail.erase(key);
    FinishLocked(op, DeadlineExceeded(op.label + ": rank " + std::to_string(op.peer) +
                                      (is_send ? " did not receive" : " did not send") +
                                      " within " + comm::Seconds(op.timeout_s)));
  }
};

bool LocalOp::Test() {
  std::lock_guard<std::mutex> lock(hub_->mu);
  if (!done && !all_joined && Clock::now() >= deadline) hub_->TimeOutLocked(*this);
  return done;
}

Status LocalOp::Wait() {
  std::unique_lock<std::mutex> lock(hub_->mu);
  while (!done) {
    if (all_joined) {
      cv.wait(lock);
    } else if (cv.wait_until(lock, deadline) == std::cv_status::timeout && !done && !all_joined) {
      hub_->TimeOutLocked(*this);
    }
  }
  return status;
}

// Every rank's result of a collective whose ranks have all joined; ops[r] is rank r's call.
void ComputeCollective(const std::vector<std::shared_ptr<LocalOp>>& ops) {
  const int size = static_cast<int>(ops.size());
  const CollectiveCall& call = ops[0]->call;
  auto each_gets_a_copy = [&](const Tensor& t) {
    ops[0]->result = t;
    for (int r = 1; r < size; ++r) ops[r]->result = t.Clone();
  };
  switch (call.kind) {
    case CollectiveKind::kBarrier:
      return;
    case CollectiveKind::kAllReduce: {
      Tensor out = Tensor::Empty(call.dtype, call.shape);
      std::vector<const void*> parts;
      for (const auto& op : ops) parts.push_back(op->input.raw_data());
      comm::ReduceInOrder(call.dtype, call.reduce, parts, out.numel(), out.raw_data());
      return each_gets_a_copy(out);
    }
    case CollectiveKind::kReduceScatter: {
      Shape block_shape = call.shape;
      block_shape[0] /= size;
      const int64_t block = NumElements(block_shape);
      const size_t block_bytes = static_cast<size_t>(block) * DataTypeSize(call.dtype);
      for (int r = 0; r < size; ++r) {
        Tensor out = Tensor::Empty(call.dtype, block_shape);
        std::vector<const void*> parts;
        for (const auto& op : ops)
          parts.push_back(static_cast<const char*>(op->input.raw_data()) + r * block_bytes);
        comm::ReduceInOrder(call.dtype, call.reduce, parts, block, out.raw_data());
        ops[r]->result = out;
      }
      return;
    }
    case CollectiveKind::kAllGather: {
      Shape shape = call.shape;
      if (shape.empty()) shape.push_back(1);
      shape[0] *= size;
      Tensor out = Tensor::Empty(call.dtype, shape);
      const size_t part_bytes = ops[0]->input.nbytes();
      for (int r = 0; r < size; ++r) {
        if (part_bytes == 0) break;
        std::memcpy(static_cast<char*>(out.raw_data()) + r * part_bytes, ops[r]->input.raw_data(),
                    part_bytes);
      }
      return each_gets_a_copy(out);
    }
    case CollectiveKind::kBroadcast:
      for (int r = 0; r < size; ++r) ops[r]->result = ops[call.root]->input.Clone();
      return;
    case CollectiveKind::kAllToAllV: {
      Shape row_shape(call.shape.begin() + 1, call.shape.end());
      const size_t row_bytes =
          static_cast<size_t>(NumElements(row_shape)) * DataTypeSize(call.dtype);
      for (int dst = 0; dst < size; ++dst) {
        std::vector<int64_t> counts(size);
        int64_t rows = 0;
        for (int src = 0; src < size; ++src) rows += counts[src] = ops[src]->send_counts[dst];
        Shape shape = row_shape;
        shape.insert(shape.begin(), rows);
        Tensor out = Tensor::Empty(call.dtype, shape);
        char* at = static_cast<char*>(out.raw_data());
        for (int src = 0; src < size; ++src) {
          int64_t first_row = 0;
          for (int j = 0; j < dst; ++j) first_row += ops[src]->send_counts[j];
          size_t bytes = counts[src] * row_bytes;
          if (bytes == 0) continue;
          std::memcpy(at,
                      static_cast<const char*>(ops[src]->input.raw_data()) + first_row * row_bytes,
                      bytes);
          at += bytes;
        }
        ops[dst]->result = out;
        ops[dst]->recv_counts = std::move(counts);
      }
      return;
    }
  }
}

class LocalCommunicator : public comm::CollectiveBackend {
 public:
  LocalCommunicator(std::shared_ptr<Hub> hub, int rank, const CommOptions& options)
      : CollectiveBackend(options), hub_(std::move(hub)), rank_(rank) {}

  int rank() const override { return rank_; }
  int size() const override { return hub_->size; }
  std::string backend() const override { return "local"; }

  CommHandle StartSend(const Tensor& t, int dst, int tag) override {
    return StartPointToPoint(LocalOp::Kind::kSend, &t, dst, tag);
  }
  CommHandle StartRecv(int src, int tag) override {
    return StartPointToPoint(LocalOp::Kind::kRecv, nullptr, src, tag);
  }

 private:
  using Slot = Hub::Slot;

  // Under the hub's mutex: the error for any call after this rank timed out.
  Status BrokenLocked(const std::string& label) const {
    const Status& cause = hub_->broken[rank_];
    if (cause.ok()) return cause;
    return FailedPrecondition(label + ": the communicator is unusable after an earlier timeout (" +
                              cause.message() + ")");
  }

  CommHandle StartCollective(CollectiveCall call, const Tensor& t,
                             const std::vector<int64_t>& send_counts) override {
    if (call.kind != CollectiveKind::kBarrier && t.defined()) {
      call.dtype = t.dtype();
      call.shape = t.shape();
    }
    Status valid = comm::Validate(call, t, send_counts, rank_, size());
    call.valid = valid.ok();
    auto op = std::make_shared<LocalOp>(hub_, LocalOp::Kind::kCollective, rank_,
                                        "rank " + std::to_string(rank_) + ": " + call.Label(),
                                        timeout_s());
    op->call = call;
    op->send_counts = send_counts;
    if (valid.ok() && call.kind != CollectiveKind::kBarrier) op->input = t.Contiguous();
    CommHandle handle(op);

    std::unique_lock<std::mutex> lock(hub_->mu);
    if (Status broken = BrokenLocked(op->label); !broken.ok()) {
      hub_->FinishLocked(*op, broken);
      return handle;
    }
    op->seq = hub_->next_seq[rank_]++;
    Slot& slot = hub_->slots.try_emplace(op->seq, size()).first->second;
    slot.joined[rank_] = true;
    ++slot.n_joined;
    if (slot.failure == Slot::Failure::kNone) {
      if (!valid.ok()) {
        slot.failure = Slot::Failure::kInvalid;
        slot.failure_rank = rank_;
        slot.failure_detail = valid.message();
      } else if (slot.first_rank < 0) {
        slot.first_rank = rank_;
        slot.first_call = call;
      } else if (!call.Matches(slot.first_call)) {
        slot.failure = Slot::Failure::kMismatch;
        slot.failure_rank = rank_;
        slot.failure_call = call;
      }
    }
    if (slot.failure != Slot::Failure::kNone) {
      hub_->FinishLocked(*op, valid.ok() ? hub_->SlotError(slot, *op) : valid);
      hub_->FailSlotLocked(op->seq);
      return handle;
    }
    slot.ops[rank_] = op;
    if (slot.n_joined < size()) return handle;

    std::vector<std::shared_ptr<LocalOp>> ops = std::move(slot.ops);
    hub_->slots.erase(op->seq);
    for (auto& o : ops) o->all_joined = true;
    lock.unlock();
    ComputeCollective(ops);
    lock.lock();
    for (auto& o : ops) hub_->FinishLocked(*o, Status::Ok());
    return handle;
  }

  CommHandle StartPointToPoint(LocalOp::Kind kind, const Tensor* t, int peer, int tag) {
    bool is_send = kind == LocalOp::Kind::kSend;
    const char* what = is_send ? "send" : "recv";
    if (Status valid = comm::ValidatePeer(what, peer, tag, rank_, size()); !valid.ok()) {
      return CommHandle(FinishedCommOp(valid));
    }
    std::string label = "rank " + std::to_string(rank_) + ": " + what + " (tag " +
                        std::to_string(tag) + ") " + (is_send ? "to" : "from") + " rank " +
                        std::to_string(peer);
    if (is_send) {
      if (!t->defined()) return CommHandle(FinishedCommOp(InvalidArgument(label + ": no tensor")));
      if (t->device().type != DeviceType::kCpu) {
        return CommHandle(
            FinishedCommOp(InvalidArgument(label + ": the tensor is on " + t->device().ToString() +
                                           "; this communicator moves CPU tensors")));
      }
    }
    auto op = std::make_shared<LocalOp>(hub_, kind, rank_, label, timeout_s());
    op->peer = peer;
    op->tag = tag;
    if (is_send) op->input = t->Contiguous();
    CommHandle handle(op);

    std::unique_lock<std::mutex> lock(hub_->mu);
    if (Status broken = BrokenLocked(op->label); !broken.ok()) {
      hub_->FinishLocked(*op, broken);
      return handle;
    }
    auto key = is_send ? std::make_tuple(rank_, peer, tag) : std::make_tuple(peer, rank_, tag);
    Hub::Mailbox& box = hub_->mail[key];
    auto& waiting_peers = is_send ? box.recvs : box.sends;
    if (waiting_peers.empty()) {
      (is_send ? box.sends : box.recvs).push_back(op);
      return handle;
    }
    std::shared_ptr<LocalOp> other = waiting_peers.front();
    waiting_peers.pop_front();
    if (box.sends.empty() && box.recvs.empty()) hub_->mail.erase(key);
    LocalOp& send = is_send ? *op : *other;
    LocalOp& recv = is_send ? *other : *op;
    send.all_joined = recv.all_joined = true;
    lock.unlock();
    recv.result = send.input.Clone();
    lock.lock();
    hub_->FinishLocked(send, Status::Ok());
    hub_->FinishLocked(recv, Status::Ok());
    return handle;
  }

  std::shared_ptr<Hub> hub_;
  const int rank_;
};

}  // namespace

std::vector<std::unique_ptr<Communicator>> MakeLocalCommunicators(int size,
                                                                  const CommOptions& options) {
  CHECK_GE(size, 1) << "a communicator has at least one rank";
  auto hub = std::make_shared<Hub>(size);
  std::vector<std::unique_ptr<Communicator>> comms;
  for (int r = 0; r < size; ++r)
    comms.push_back(std::make_unique<LocalCommunicator>(hub, r, options));
  return comms;
}

}  // namespace weir
