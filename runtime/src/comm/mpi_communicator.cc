// The MPI backend. Each call is an op whose MPI requests are polled under the communicator's mutex.
//
// Collectives run as a chain of nonblocking MPI collectives (the call record gather, then the data
// phases). MPI matches collectives by the order each process starts them, and later phases start
// only when earlier ones finish, so a rank may start an op's next phase only after every earlier op
// has started all of its own: the queue below enforces that order on every rank alike.
#include "weir/runtime/mpi_communicator.h"

#include <mpi.h>

#include <climits>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <mutex>
#include <thread>

#include "comm/collective.h"

namespace weir {
namespace {

using comm::Clock;
using comm::CollectiveCall;
using comm::CollectiveKind;

std::mutex g_init_mu;
int g_thread_level = -1;  // as granted by MPI; -1 before initialization
// Serializes every MPI call when MPI granted less than MPI_THREAD_MULTIPLE.
std::mutex g_serial_mu;

class MpiCallGuard {
 public:
  MpiCallGuard() {
    if (g_thread_level < MPI_THREAD_MULTIPLE) lock_ = std::unique_lock<std::mutex>(g_serial_mu);
  }

 private:
  std::unique_lock<std::mutex> lock_;
};

Status MpiError(const std::string& where, int code) {
  char text[MPI_MAX_ERROR_STRING];
  int length = 0;
  MPI_Error_string(code, text, &length);
  return Internal(where + ": MPI error: " + std::string(text, length));
}

// Moving data needs only the element size; reductions are done by weir, not by MPI.
MPI_Datatype ElementType(DataType dtype) {
  switch (DataTypeSize(dtype)) {
    case 1:
      return MPI_BYTE;
    case 2:
      return MPI_UINT16_T;
    case 4:
      return MPI_UINT32_T;
    case 8:
      return MPI_UINT64_T;
  }
  LOG(FATAL) << "no MPI element type for " << DataTypeName(dtype);
}

Clock::time_point DeadlineAfter(double seconds) {
  return Clock::now() +
         std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(seconds));
}

// Waits for `request` with polls until `deadline`; false when it passed first.
bool PollUntil(MPI_Request* request, Clock::time_point deadline) {
  for (int polls = 0;; ++polls) {
    int flag = 0;
    {
      MpiCallGuard guard;
      MPI_Test(request, &flag, MPI_STATUS_IGNORE);
    }
    if (flag) return true;
    if (Clock::now() >= deadline) return false;
    if (polls > 100) std::this_thread::sleep_for(std::chrono::microseconds(50));
  }
}

class MpiOp;
class MpiCollectiveOp;

// What a communicator and its ops share.
struct State {
  MPI_Comm coll = MPI_COMM_NULL;  // collectives
  MPI_Comm p2p = MPI_COMM_NULL;   // send / recv: their matching never meets the collectives'
  int rank = 0;
  int size = 1;
  int tag_ub = 32767;

  std::mutex mu;  // guards what follows and every MPI call on coll and p2p
  std::deque<std::shared_ptr<MpiCollectiveOp>> collectives;  // unfinished, in call order
  std::vector<std::shared_ptr<MpiOp>> point_to_point;        // unfinished
  Status broken;  // the timeout after which every call is refused
  // Ops whose MPI requests can never complete after a timeout: their buffers must outlive them,
  // so they stay here (and keep this state alive) until the process ends.
  std::vector<std::shared_ptr<MpiOp>> abandoned;

  void ProgressLocked();
  // `culprit` timed out with `cause`: it fails with that, every other pending call with a
  // reference to it.
  void BreakLocked(MpiOp& culprit, const Status& cause);

  ~State() {
    int finalized = 1;
    MPI_Finalized(&finalized);
    if (finalized) return;
    MpiCallGuard guard;
    if (coll != MPI_COMM_NULL) MPI_Comm_free(&coll);
    if (p2p != MPI_COMM_NULL) MPI_Comm_free(&p2p);
  }
};

class MpiOp : public CommOp, public std::enable_shared_from_this<MpiOp> {
 public:
  MpiOp(std::shared_ptr<State> state, std::string label, double timeout_s)
      : state_(std::move(state)),
        label_(std::move(label)),
        timeout_s_(timeout_s),
        deadline_(DeadlineAfter(timeout_s)) {}

  bool Test() override {
    std::lock_guard<std::mutex> lock(state_->mu);
    state_->ProgressLocked();
    return done_;
  }

  Status Wait() override {
    for (int polls = 0; !Test(); ++polls) {
      // Spin briefly for low latency, then back off so a long wait does not burn a core.
      if (polls < 200) {
        std::this_thread::yield();
      } else {
        std::this_thread::sleep_for(std::chrono::microseconds(polls < 2000 ? 20 : 200));
      }
    }
    std::lock_guard<std::mutex> lock(state_->mu);
    return status_;
  }

  // Under state_->mu: polls the op's requests and starts what may start; true once its MPI work
  // is over (the user may have been told the outcome earlier).
  virtual bool ProgressLocked(bool may_start) = 0;
  // Under state_->mu, past the deadline: the message for the user.
  virtual Status TimeoutStatusLocked() = 0;
  // Whether an MPI request is still pending (an op with one cannot simply be dropped).
  bool active() const { return request_ != MPI_REQUEST_NULL; }

  bool done() const { return done_; }
  const std::string& label() const { return label_; }
  Clock::time_point deadline() const { return deadline_; }

  void FinishLocked(Status s) {
    if (done_) return;
    done_ = true;
    status_ = std::move(s);
  }

 protected:
  // Tests the pending request: true when there is none left.
  StatusOr<bool> TestRequestLocked(MPI_Status* status = MPI_STATUS_IGNORE) {
    if (request_ == MPI_REQUEST_NULL) return true;
    int flag = 0;
    MpiCallGuard guard;
    int rc = MPI_Test(&request_, &flag, status);
    if (rc != MPI_SUCCESS) return MpiError(label_, rc);
    return flag != 0;
  }

  std::shared_ptr<State> state_;
  const std::string label_;
  const double timeout_s_;
  const Clock::time_point deadline_;
  MPI_Request request_ = MPI_REQUEST_NULL;
  bool done_ = false;
  Status status_;
};

// ---------------------------------------------------------------------------------------------
// Collectives.

class MpiCollectiveOp : public MpiOp {
 public:
  MpiCollectiveOp(std::shared_ptr<State> state, CollectiveCall call, Tensor input,
                  std::vector<int64_t> send_counts, Status invalid, double timeout_s)
      : MpiOp(state, "rank " + std::to_string(state->rank) + ": " + call.Label(), timeout_s),
        call_(std::move(call)),
        input_(std::move(input)),
        send_counts_(std::move(send_counts)),
        all_signatures_(static_cast<size_t>(state->size) * CollectiveCall::kSignatureLength) {
    signature_ = call_.Encode();
    // A refused call still takes part in the record gather, so its peers learn of it; its caller
    // hears at once.
    if (!invalid.ok()) FinishLocked(invalid);
  }

  // Every MPI collective this op will start has been started.
  bool all_started() const { return phase_ == kFinal || engine_done_; }

  bool ProgressLocked(bool may_start) override {
    while (!engine_done_) {
      StatusOr<bool> idle = TestRequestLocked();
      if (!idle.ok()) return Fail(idle.status());
      if (!*idle) return false;
      if (!may_start && phase_ != kFinal) return false;
      Status s = NextPhaseLocked();
      if (!s.ok()) return Fail(s);
    }
    return true;
  }

  Status TimeoutStatusLocked() override {
    std::string within = " within " + comm::Seconds(timeout_s_);
    if (phase_ == kNotStarted) {
      return DeadlineExceeded(label_ + ": an earlier collective of rank " +
                              std::to_string(state_->rank) + " did not finish" + within +
                              ", so this one never started");
    }
    if (phase_ == kRecords) {
      std::vector<int> others;
      for (int r = 0; r < state_->size; ++r)
        if (r != state_->rank) others.push_back(r);
      // MPI does not say which ranks have joined a pending collective.
      if (others.size() == 1) {
        return DeadlineExceeded(label_ + ": " + comm::RankList(others) + " did not join" + within);
      }
      std::string who = others.size() <= 8
                            ? comm::RankList(others)
                            : "the other " + std::to_string(others.size()) + " ranks";
      return DeadlineExceeded(label_ + ": not all of " + who + " joined" + within +
                              " (MPI cannot tell which did not)");
    }
    return DeadlineExceeded(label_ + ": every rank joined, but the data exchange did not finish" +
                            within);
  }

 private:
  enum Phase { kNotStarted, kRecords, kData1, kFinal };

  bool Fail(const Status& s) {
    FinishLocked(s);
    engine_done_ = true;
    return true;
  }
  void SucceedLocked() {
    FinishLocked(Status::Ok());
    engine_done_ = true;
  }

  int64_t numel() const { return NumElements(call_.shape); }
  size_t element_bytes() const { return DataTypeSize(call_.dtype); }

  // The phase just finished (or none, at first): use its data, then start the next one.
  Status NextPhaseLocked() {
    MpiCallGuard guard;
    MPI_Comm comm = state_->coll;
    const int size = state_->size;
    const int rank = state_->rank;
    int rc = MPI_SUCCESS;
    switch (phase_) {
      case kNotStarted:
        rc = MPI_Iallgather(signature_.data(), CollectiveCall::kSignatureLength, MPI_INT64_T,
                            all_signatures_.data(), CollectiveCall::kSignatureLength, MPI_INT64_T,
                            comm, &request_);
        phase_ = kRecords;
        break;
      case kRecords: {
        WEIR_RETURN_IF_ERROR(CheckRecords());
        if (engine_done_) return Status::Ok();
        rc = StartFirstDataPhase(comm, size, rank);
        break;
      }
      case kData1:
        rc = StartSecondDataPhase(comm, size, rank);
        break;
      case kFinal:
        FinishDataLocked();
        return Status::Ok();
    }
    if (rc != MPI_SUCCESS) return MpiError(label_, rc);
    return Status::Ok();
  }

  // Every rank's call record is here: is this one operation?
  Status CheckRecords() {
    if (!call_.valid) {  // the caller already has its error
      engine_done_ = true;
      return Status::Ok();
    }
    for (int r = 0; r < state_->size; ++r) {
      CollectiveCall::Signature s;
      std::copy_n(all_signatures_.begin() + r * CollectiveCall::kSignatureLength, s.size(),
                  s.begin());
      CollectiveCall peer = CollectiveCall::Decode(s);
      if (!peer.valid) {
        return InvalidArgument(label_ + ": rank " + std::to_string(r) +
                               " passed invalid arguments (its error says which)");
      }
      if (!call_.Matches(peer)) {
        return InvalidArgument("rank " + std::to_string(state_->rank) + ": " + call_.Describe() +
                               " does not match rank " + std::to_string(r) + "'s " +
                               peer.Describe());
      }
    }
    return Status::Ok();
  }

  int StartFirstDataPhase(MPI_Comm comm, int size, int rank) {
    const MPI_Datatype element = ElementType(call_.dtype);
    switch (call_.kind) {
      case CollectiveKind::kBarrier:
        // Gathering the records already needed every rank.
        SucceedLocked();
        return MPI_SUCCESS;
      case CollectiveKind::kAllGather: {
        Shape shape = call_.shape;
        if (shape.empty()) shape.push_back(1);
        shape[0] *= size;
        result = Tensor::Empty(call_.dtype, shape);
        phase_ = kFinal;
        return MPI_Iallgather(input_.raw_data(), static_cast<int>(numel()), element,
                              result.raw_data(), static_cast<int>(numel()), element, comm,
                              &request_);
      }
      case CollectiveKind::kBroadcast:
        result = rank == call_.root ? input_.Clone() : Tensor::Empty(call_.dtype, call_.shape);
        phase_ = kFinal;
        return MPI_Ibcast(result.raw_data(), static_cast<int>(numel()), element, call_.root, comm,
                          &request_);
      case CollectiveKind::kAllReduce: {
        // Rank j reduces elements [begin(j), begin(j + 1)).
        const int64_t n = numel();
        auto begin = [&](int j) { return static_cast<int>(n * j / size); };
        counts_.assign(size, 0);
        displs_.assign(size, 0);
        recv_counts_.assign(size, begin(rank + 1) - begin(rank));
        recv_displs_.assign(size, 0);
        for (int j = 0; j < size; ++j) {
          counts_[j] = begin(j + 1) - begin(j);
          displs_[j] = begin(j);
          recv_displs_[j] = j * recv_counts_[j];
        }
        gathered_ = Tensor::Empty(call_.dtype, {static_cast<int64_t>(size) * recv_counts_[0]});
        phase_ = kData1;
        return MPI_Ialltoallv(input_.raw_data(), counts_.data(), displs_.data(), element,
                              gathered_.raw_data(), recv_counts_.data(), recv_displs_.data(),
                              element, comm, &request_);
      }
      case CollectiveKind::kReduceScatter: {
        const int block = static_cast<int>(numel() / size);
        gathered_ = Tensor::Empty(call_.dtype, {numel()});
        phase_ = kFinal;
        return MPI_Ialltoall(input_.raw_data(), block, element, gathered_.raw_data(), block,
                             element, comm, &request_);
      }
      case CollectiveKind::kAllToAllV:
        incoming_rows_.assign(size, 0);
        phase_ = kData1;
        return MPI_Ialltoall(send_counts_.data(), 1, MPI_INT64_T, incoming_rows_.data(), 1,
                             MPI_INT64_T, comm, &request_);
    }
    return MPI_ERR_OTHER;
  }

  int StartSecondDataPhase(MPI_Comm comm, int size, int rank) {
    const MPI_Datatype element = ElementType(call_.dtype);
    if (call_.kind == CollectiveKind::kAllReduce) {
      const int chunk = recv_counts_[0];
      std::vector<const void*> parts;
      for (int i = 0; i < size; ++i)
        parts.push_back(static_cast<const char*>(gathered_.raw_data()) +
                        static_cast<size_t>(i) * chunk * element_bytes());
      reduced_ = Tensor::Empty(call_.dtype, {chunk});
      comm::ReduceInOrder(call_.dtype, call_.reduce, parts, chunk, reduced_.raw_data());
      result = Tensor::Empty(call_.dtype, call_.shape);
      phase_ = kFinal;
      return MPI_Iallgatherv(reduced_.raw_data(), counts_[rank], element, result.raw_data(),
                             counts_.data(), displs_.data(), element, comm, &request_);
    }
    // all_to_all_v: the counts are here; move the rows.
    Shape row_shape(call_.shape.begin() + 1, call_.shape.end());
    const int64_t row_bytes = NumElements(row_shape) * static_cast<int64_t>(element_bytes());
    int64_t rows_in = 0, rows_out = 0;
    counts_.assign(size, 0);
    displs_.assign(size, 0);
    recv_counts_.assign(size, 0);
    recv_displs_.assign(size, 0);
    for (int j = 0; j < size; ++j) {
      if (rows_in > INT_MAX || rows_out > INT_MAX || incoming_rows_[j] > INT_MAX) {
        // Only this rank sees it; its peers time out, which the header documents.
        Fail(InvalidArgument(label_ + ": more than 2^31 - 1 rows to receive"));
        return MPI_SUCCESS;
      }
      counts_[j] = static_cast<int>(send_counts_[j]);
      displs_[j] = static_cast<int>(rows_out);
      recv_counts_[j] = static_cast<int>(incoming_rows_[j]);
      recv_displs_[j] = static_cast<int>(rows_in);
      rows_out += send_counts_[j];
      rows_in += incoming_rows_[j];
    }
    Shape shape = row_shape;
    shape.insert(shape.begin(), rows_in);
    result = Tensor::Empty(call_.dtype, shape);
    recv_counts = incoming_rows_;
    MPI_Datatype row_type;
    int rc = MPI_Type_contiguous(static_cast<int>(row_bytes), MPI_BYTE, &row_type);
    if (rc == MPI_SUCCESS) rc = MPI_Type_commit(&row_type);
    if (rc != MPI_SUCCESS) return rc;
    phase_ = kFinal;
    rc = MPI_Ialltoallv(input_.raw_data(), counts_.data(), displs_.data(), row_type,
                        result.raw_data(), recv_counts_.data(), recv_displs_.data(), row_type, comm,
                        &request_);
    // Pending operations keep their own reference to the type.
    MPI_Type_free(&row_type);
    return rc;
  }

  void FinishDataLocked() {
    if (call_.kind == CollectiveKind::kReduceScatter) {
      const int size = state_->size;
      const int64_t block = numel() / size;
      std::vector<const void*> parts;
      for (int i = 0; i < size; ++i)
        parts.push_back(static_cast<const char*>(gathered_.raw_data()) +
                        static_cast<size_t>(i * block) * element_bytes());
      Shape shape = call_.shape;
      shape[0] /= size;
      result = Tensor::Empty(call_.dtype, shape);
      comm::ReduceInOrder(call_.dtype, call_.reduce, parts, block, result.raw_data());
    }
    gathered_ = reduced_ = Tensor();
    SucceedLocked();
  }

  const CollectiveCall call_;
  const Tensor input_;
  const std::vector<int64_t> send_counts_;
  CollectiveCall::Signature signature_;
  std::vector<int64_t> all_signatures_;
  Phase phase_ = kNotStarted;
  bool engine_done_ = false;
  // Data phase buffers; MPI reads and writes them until the phase's request completes.
  std::vector<int> counts_, displs_, recv_counts_, recv_displs_;
  std::vector<int64_t> incoming_rows_;
  Tensor gathered_, reduced_;
};

// ---------------------------------------------------------------------------------------------
// Point to point. A message is a header (magic, dtype, dims) followed by the data, so the receiver
// learns the dtype and shape from one matched probe (MPI_Improbe is safe with several threads).

constexpr int64_t kMessageMagic = 0x7765697254656e73;  // "weirTens"

class MpiSendOp : public MpiOp {
 public:
  MpiSendOp(std::shared_ptr<State> state, std::string label, double timeout_s, int dst, int tag)
      : MpiOp(std::move(state), std::move(label), timeout_s), dst_(dst), tag_(tag) {}

  Status StartLocked(const Tensor& t) {
    Tensor dense = t.Contiguous();
    std::vector<int64_t> header = {kMessageMagic, static_cast<int64_t>(t.dtype()), t.rank()};
    header.insert(header.end(), t.shape().begin(), t.shape().end());
    const size_t header_bytes = header.size() * sizeof(int64_t);
    if (header_bytes + dense.nbytes() > static_cast<size_t>(INT_MAX)) {
      return InvalidArgument(label_ + ": " + t.DebugString() +
                             " is more than the 2 GiB one MPI message carries");
    }
    buffer_.resize(header_bytes + dense.nbytes());
    std::memcpy(buffer_.data(), header.data(), header_bytes);
    if (dense.nbytes() > 0)
      std::memcpy(buffer_.data() + header_bytes, dense.raw_data(), dense.nbytes());
    MpiCallGuard guard;
    // Synchronous mode: the send completes once the receiver matched it, as in the local backend.
    int rc = MPI_Issend(buffer_.data(), static_cast<int>(buffer_.size()), MPI_BYTE, dst_, tag_,
                        state_->p2p, &request_);
    if (rc != MPI_SUCCESS) return MpiError(label_, rc);
    return Status::Ok();
  }

  bool ProgressLocked(bool) override {
    if (done_) return true;
    StatusOr<bool> idle = TestRequestLocked();
    if (!idle.ok())
      FinishLocked(idle.status());
    else if (*idle)
      FinishLocked(Status::Ok());
    return done_;
  }

  Status TimeoutStatusLocked() override {
    return DeadlineExceeded(label_ + ": rank " + std::to_string(dst_) + " did not receive within " +
                            comm::Seconds(timeout_s_));
  }

 private:
  const int dst_;
  const int tag_;
  std::vector<char> buffer_;
};

class MpiRecvOp : public MpiOp {
 public:
  MpiRecvOp(std::shared_ptr<State> state, std::string label, double timeout_s, int src, int tag)
      : MpiOp(std::move(state), std::move(label), timeout_s), src_(src), tag_(tag) {}

  bool ProgressLocked(bool) override {
    if (done_) return true;
    if (!matched_) {
      int flag = 0;
      MPI_Message message;
      MPI_Status status;
      MpiCallGuard guard;
      int rc = MPI_Improbe(src_, tag_, state_->p2p, &flag, &message, &status);
      if (rc != MPI_SUCCESS) return Finish(MpiError(label_, rc));
      if (!flag) return false;
      matched_ = true;
      int bytes = 0;
      MPI_Get_count(&status, MPI_BYTE, &bytes);
      buffer_.resize(bytes);
      rc = MPI_Imrecv(buffer_.data(), bytes, MPI_BYTE, &message, &request_);
      if (rc != MPI_SUCCESS) return Finish(MpiError(label_, rc));
    }
    StatusOr<bool> idle = TestRequestLocked();
    if (!idle.ok()) return Finish(idle.status());
    if (!*idle) return false;
    return Finish(Unpack());
  }

  Status TimeoutStatusLocked() override {
    std::string within = " within " + comm::Seconds(timeout_s_);
    if (!matched_) {
      return DeadlineExceeded(label_ + ": rank " + std::to_string(src_) + " did not send" + within);
    }
    return DeadlineExceeded(label_ + ": the message from rank " + std::to_string(src_) +
                            " did not arrive completely" + within);
  }

 private:
  bool Finish(Status s) {
    FinishLocked(std::move(s));
    return true;
  }

  Status Unpack() {
    auto header_at = [&](size_t i) {
      int64_t v;
      std::memcpy(&v, buffer_.data() + i * sizeof(int64_t), sizeof(v));
      return v;
    };
    const std::string bad = label_ + ": the message is not a weir tensor";
    if (buffer_.size() < 3 * sizeof(int64_t) || header_at(0) != kMessageMagic) {
      return DataLoss(bad);
    }
    const int64_t ndims = header_at(2);
    if (ndims < 0 || buffer_.size() < (3 + ndims) * sizeof(int64_t)) return DataLoss(bad);
    Shape shape;
    for (int64_t d = 0; d < ndims; ++d) shape.push_back(header_at(3 + d));
    const auto dtype = static_cast<DataType>(header_at(1));
    const size_t header_bytes = (3 + ndims) * sizeof(int64_t);
    result = Tensor::Empty(dtype, shape);
    if (header_bytes + result.nbytes() != buffer_.size()) return DataLoss(bad);
    if (result.nbytes() > 0)
      std::memcpy(result.raw_data(), buffer_.data() + header_bytes, result.nbytes());
    buffer_.clear();
    return Status::Ok();
  }

  const int src_;
  const int tag_;
  bool matched_ = false;
  std::vector<char> buffer_;
};

// ---------------------------------------------------------------------------------------------

void State::ProgressLocked() {
  if (!broken.ok()) return;
  // An op may start its next MPI collective only once every earlier op has started all of its.
  bool earlier_all_started = true;
  for (auto it = collectives.begin(); it != collectives.end();) {
    MpiCollectiveOp& op = **it;
    bool finished = op.ProgressLocked(earlier_all_started);
    earlier_all_started = earlier_all_started && op.all_started();
    it = finished ? collectives.erase(it) : it + 1;
  }
  std::erase_if(point_to_point,
                [](const std::shared_ptr<MpiOp>& op) { return op->ProgressLocked(true); });
  const Clock::time_point now = Clock::now();
  auto expired = [&](const std::shared_ptr<MpiOp>& op) {
    return !op->done() && now >= op->deadline();
  };
  for (const auto& op : collectives) {
    if (expired(op)) return BreakLocked(*op, op->TimeoutStatusLocked());
  }
  for (const auto& op : point_to_point) {
    if (expired(op)) return BreakLocked(*op, op->TimeoutStatusLocked());
  }
}

void State::BreakLocked(MpiOp& culprit, const Status& cause) {
  broken = cause;
  culprit.FinishLocked(cause);
  auto drop = [&](const std::shared_ptr<MpiOp>& op) {
    op->FinishLocked(FailedPrecondition(
        op->label() + ": the communicator is unusable after an earlier timeout (" +
        cause.message() + ")"));
    if (op->active()) abandoned.push_back(op);
  };
  for (const auto& op : collectives) drop(op);
  for (const auto& op : point_to_point) drop(op);
  collectives.clear();
  point_to_point.clear();
}

class MpiCommunicator : public comm::CollectiveBackend {
 public:
  MpiCommunicator(std::shared_ptr<State> state, const CommOptions& options)
      : CollectiveBackend(options), state_(std::move(state)) {}

  int rank() const override { return state_->rank; }
  int size() const override { return state_->size; }
  std::string backend() const override { return "mpi"; }

  CommHandle StartSend(const Tensor& t, int dst, int tag) override {
    std::string label = Label("send", tag, "to", dst);
    if (Status s = CheckPeer("send", dst, tag); !s.ok()) return Finished(s);
    if (!t.defined()) return Finished(InvalidArgument(label + ": no tensor"));
    if (t.device().type != DeviceType::kCpu) {
      return Finished(InvalidArgument(label + ": the tensor is on " + t.device().ToString() +
                                      "; this communicator moves CPU tensors"));
    }
    auto op = std::make_shared<MpiSendOp>(state_, label, timeout_s(), dst, tag);
    std::lock_guard<std::mutex> lock(state_->mu);
    if (Status s = BrokenLocked(label); !s.ok()) return Finished(s);
    if (Status s = op->StartLocked(t); !s.ok()) return Finished(s);
    state_->point_to_point.push_back(op);
    return CommHandle(op);
  }

  CommHandle StartRecv(int src, int tag) override {
    std::string label = Label("recv", tag, "from", src);
    if (Status s = CheckPeer("recv", src, tag); !s.ok()) return Finished(s);
    auto op = std::make_shared<MpiRecvOp>(state_, label, timeout_s(), src, tag);
    std::lock_guard<std::mutex> lock(state_->mu);
    if (Status s = BrokenLocked(label); !s.ok()) return Finished(s);
    state_->point_to_point.push_back(op);
    state_->ProgressLocked();
    return CommHandle(op);
  }

 private:
  static CommHandle Finished(Status s) { return CommHandle(FinishedCommOp(std::move(s))); }

  std::string Label(const char* what, int tag, const char* direction, int peer) const {
    return "rank " + std::to_string(rank()) + ": " + what + " (tag " + std::to_string(tag) + ") " +
           direction + " rank " + std::to_string(peer);
  }

  Status CheckPeer(const char* what, int peer, int tag) const {
    WEIR_RETURN_IF_ERROR(comm::ValidatePeer(what, peer, tag, rank(), size()));
    if (tag > state_->tag_ub) {
      return InvalidArgument(Label(what, tag, std::string(what) == "send" ? "to" : "from", peer) +
                             ": MPI takes tags up to " + std::to_string(state_->tag_ub));
    }
    return Status::Ok();
  }

  Status BrokenLocked(const std::string& label) const {
    if (state_->broken.ok()) return Status::Ok();
    return FailedPrecondition(label + ": the communicator is unusable after an earlier timeout (" +
                              state_->broken.message() + ")");
  }

  CommHandle StartCollective(CollectiveCall call, const Tensor& t,
                             const std::vector<int64_t>& send_counts) override {
    if (call.kind != CollectiveKind::kBarrier && t.defined()) {
      call.dtype = t.dtype();
      call.shape = t.shape();
    }
    Status valid = comm::Validate(call, t, send_counts, rank(), size());
    if (valid.ok() && call.kind != CollectiveKind::kBarrier && t.numel() > INT_MAX) {
      valid = InvalidArgument("rank " + std::to_string(rank()) + ": " + call.Label() + ": " +
                              t.DebugString() + " has more than the 2^31 - 1 elements MPI counts");
    }
    call.valid = valid.ok();
    Tensor input = valid.ok() && call.kind != CollectiveKind::kBarrier ? t.Contiguous() : Tensor();
    std::lock_guard<std::mutex> lock(state_->mu);
    if (Status s = BrokenLocked("rank " + std::to_string(rank()) + ": " + call.Label()); !s.ok()) {
      return Finished(s);
    }
    auto op =
        std::make_shared<MpiCollectiveOp>(state_, call, input, send_counts, valid, timeout_s());
    state_->collectives.push_back(op);
    state_->ProgressLocked();
    return CommHandle(op);
  }

  std::shared_ptr<State> state_;
};

const char* ThreadLevelName(int level) {
  switch (level) {
    case MPI_THREAD_SINGLE:
      return "MPI_THREAD_SINGLE";
    case MPI_THREAD_FUNNELED:
      return "MPI_THREAD_FUNNELED";
    case MPI_THREAD_SERIALIZED:
      return "MPI_THREAD_SERIALIZED";
    case MPI_THREAD_MULTIPLE:
      return "MPI_THREAD_MULTIPLE";
  }
  return "";
}

void FinalizeAtExit() {
  int finalized = 1;
  MPI_Finalized(&finalized);
  if (!finalized) MPI_Finalize();
}

Status InitializeMpi() {
  std::lock_guard<std::mutex> lock(g_init_mu);
  int initialized = 0, finalized = 0;
  MPI_Initialized(&initialized);
  MPI_Finalized(&finalized);
  if (finalized) return FailedPrecondition("MPI communicator: MPI has already been finalized");
  if (initialized) {
    if (g_thread_level < 0) MPI_Query_thread(&g_thread_level);
    return Status::Ok();
  }
  int provided = MPI_THREAD_SINGLE;
  int rc = MPI_Init_thread(nullptr, nullptr, MPI_THREAD_MULTIPLE, &provided);
  if (rc != MPI_SUCCESS) return Unavailable("MPI communicator: MPI_Init_thread failed");
  g_thread_level = provided;
  std::atexit(FinalizeAtExit);
  return Status::Ok();
}

}  // namespace

std::string MpiThreadLevel() {
  std::lock_guard<std::mutex> lock(g_init_mu);
  return g_thread_level < 0 ? "" : ThreadLevelName(g_thread_level);
}

void MpiAbort(int exit_code) {
  MPI_Abort(MPI_COMM_WORLD, exit_code);
  std::abort();  // MPI_Abort does not return; this tells the compiler so
}

StatusOr<std::unique_ptr<Communicator>> MakeMpiCommunicator(const CommOptions& options) {
  WEIR_RETURN_IF_ERROR(InitializeMpi());
  auto state = std::make_shared<State>();
  {
    MpiCallGuard guard;
    MPI_Comm_rank(MPI_COMM_WORLD, &state->rank);
    MPI_Comm_size(MPI_COMM_WORLD, &state->size);
    int* tag_ub = nullptr;
    int flag = 0;
    MPI_Comm_get_attr(MPI_COMM_WORLD, MPI_TAG_UB, &tag_ub, &flag);
    if (flag && tag_ub != nullptr) state->tag_ub = *tag_ub;
  }
  const Clock::time_point deadline = DeadlineAfter(options.timeout_s);
  for (MPI_Comm* comm : {&state->coll, &state->p2p}) {
    MPI_Request request;
    {
      MpiCallGuard guard;
      int rc = MPI_Comm_idup(MPI_COMM_WORLD, comm, &request);
      if (rc != MPI_SUCCESS) return MpiError("MPI communicator", rc);
    }
    if (!PollUntil(&request, deadline)) {
      // The duplicate may still complete later and write `comm`: the state must outlive it.
      new std::shared_ptr<State>(state);
      return DeadlineExceeded("rank " + std::to_string(state->rank) +
                              ": creating the MPI communicator: not all of the " +
                              std::to_string(state->size) + " ranks joined within " +
                              comm::Seconds(options.timeout_s));
    }
    MpiCallGuard guard;
    MPI_Comm_set_errhandler(*comm, MPI_ERRORS_RETURN);
  }
  return std::unique_ptr<Communicator>(std::make_unique<MpiCommunicator>(state, options));
}

}  // namespace weir
