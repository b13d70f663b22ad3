// The NCCL backend (weir/runtime/nccl_communicator.h).
//
// An Engine per communicator owns one or two "lanes" (an NCCL communicator and its stream) and a
// thread that drives the calls. Work reaches a lane as "units", strictly one after the other: a
// collective call, one send, one header pull, or a copy to this rank itself. A unit is a short
// sequence of steps; a step is stream work around at most one NCCL group, followed by the unit's
// CUDA event. Where the next step needs something on the host (every rank's call record, the row
// counts of an all_to_all_v, a message's header) the thread waits for that event before it builds
// the next step; otherwise it queues the next step at once. Because a lane's next unit starts only
// after the previous one queued all its steps, every rank issues its NCCL work on a lane in the
// order of its calls, which is what NCCL needs to match them.
//
// Why two lanes: an NCCL send blocks its stream until the peer's matching receive runs, and the
// receiver learns a message's size only from its header, on the host. On one stream, two ranks
// sending to each other before receiving would each wait behind their own send. Lane 0 carries
// the collectives and the messages from lower to higher ranks, lane 1 those from higher to lower,
// so the two directions between a pair of ranks never share a stream.
//
// The communicators are nonblocking (ncclConfig_t::blocking = 0): an NCCL call that would wait
// for peers (connection setup) returns ncclInProgress, and the thread polls
// ncclCommGetAsyncError instead of hanging, so every deadline holds. Only the thread makes NCCL
// calls after creation (and the destructor, once the thread has ended).
#include "weir/runtime/nccl_communicator.h"

#include <cuda_runtime.h>
#include <nccl.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <functional>
#include <list>
#include <map>
#include <mutex>
#include <optional>
#include <thread>

#include "comm/collective.h"
#include "comm/nccl_bootstrap.h"
#include "weir/device.h"
#include "weir/runtime/launch.h"
#include "weir/runtime/rendezvous.h"
#include "weir/runtime/world.h"

namespace weir {
namespace {

using comm::Clock;
using comm::CollectiveCall;
using comm::CollectiveKind;
using nccl::WaitStage;

// Callbacks of finished calls' waiters, run after the engine's mutex is released.
using Wakeups = std::vector<std::function<void()>>;

// How long the thread sleeps between looks: while NCCL finishes queueing a group (it polls
// ncclCommGetAsyncError), while work is on the stream (host callbacks wake it sooner; this bounds
// how late it sees an asynchronous error or a deadline), and when idle.
constexpr auto kEnqueuePoll = std::chrono::microseconds(100);
constexpr auto kBusyPoll = std::chrono::milliseconds(2);
constexpr auto kIdlePoll = std::chrono::milliseconds(100);
// How long shutting down waits for the stream to drain before it leaks the buffers on it.
constexpr double kDrainSeconds = 10;
// The tag of the unique id's broadcast through a bootstrap communicator.
constexpr int kBootstrapTag = 0x6e63;  // "nc"

Status CudaStatus(const std::string& what, cudaError_t error) {
  return Unavailable(what + ": " + cudaGetErrorName(error) + " (" + cudaGetErrorString(error) +
                     ")");
}

Status NcclStatus(const std::string& what, ncclResult_t result, ncclComm_t comm) {
  std::string detail = ncclGetErrorString(result);
  const char* last = ncclGetLastError(comm);
  if (last != nullptr && *last != '\0') detail += ": " + std::string(last);
  std::string message = what + ": NCCL error: " + detail;
  if (result == ncclInvalidArgument || result == ncclInvalidUsage) return Internal(message);
  return Unavailable(message);
}

double SecondsSince(Clock::time_point t) {
  return std::chrono::duration<double>(Clock::now() - t).count();
}

Clock::time_point After(Clock::time_point t, double seconds) {
  return t + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(seconds));
}

ncclDataType_t NcclType(DataType dtype) {
  switch (dtype) {
    case DT_F32:
      return ncclFloat32;
    case DT_F64:
      return ncclFloat64;
    case DT_BF16:
      return ncclBfloat16;
    case DT_F16:
      return ncclFloat16;
    case DT_I32:
      return ncclInt32;
    case DT_I64:
      return ncclInt64;
    default:
      break;
  }
  LOG(FATAL) << "no NCCL reduction type for " << DataTypeName(dtype);
  return ncclFloat32;
}

// Sets the calling thread's CUDA device and restores the previous one.
class DeviceGuard {
 public:
  explicit DeviceGuard(int device) {
    if (cudaGetDevice(&previous_) != cudaSuccess) previous_ = -1;
    cudaSetDevice(device);
  }
  ~DeviceGuard() {
    if (previous_ >= 0) cudaSetDevice(previous_);
  }
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;

 private:
  int previous_ = -1;
};

char* Bytes(const Tensor& t) { return static_cast<char*>(t.raw_data()); }

// ---------------------------------------------------------------------------------------------
// Waking the engine's thread: by the threads that start or wait for calls, and by the stream
// itself (cudaLaunchHostFunc) when a step the thread waits for has finished.

struct Waker {
  std::mutex mu;
  std::condition_variable cv;
  bool signaled = false;

  void Signal() {
    {
      std::lock_guard<std::mutex> lock(mu);
      signaled = true;
    }
    cv.notify_all();
  }
};

// A host function on the stream: no CUDA calls allowed, only the signal. It owns its argument,
// so it may run after the engine is gone.
void CUDART_CB WakeFromStream(void* arg) {
  auto* waker = static_cast<std::shared_ptr<Waker>*>(arg);
  (*waker)->Signal();
  delete waker;
}

// ---------------------------------------------------------------------------------------------
// Page-locked host memory for what the host writes to or reads from the device between steps:
// asynchronous copies from pageable memory may wait for the whole stream.

class PinnedPool {
 public:
  PinnedPool() = default;
  PinnedPool(const PinnedPool&) = delete;
  PinnedPool& operator=(const PinnedPool&) = delete;
  ~PinnedPool() {
    for (auto& [bytes, p] : free_) cudaFreeHost(p);
  }

  // A block of at least `bytes`, its size in *size.
  StatusOr<void*> Take(size_t bytes, size_t* size) {
    size_t rounded = 4096;
    while (rounded < bytes) rounded *= 2;
    *size = rounded;
    std::lock_guard<std::mutex> lock(mu_);
    auto it = free_.find(rounded);
    if (it != free_.end()) {
      void* p = it->second;
      free_.erase(it);
      return p;
    }
    void* p = nullptr;
    cudaError_t error = cudaHostAlloc(&p, rounded, cudaHostAllocPortable);
    if (error != cudaSuccess) {
      cudaGetLastError();
      return CudaStatus("NCCL communicator: cudaHostAlloc(" + std::to_string(rounded) + ")", error);
    }
    return p;
  }

  void Give(void* p, size_t size) {
    std::lock_guard<std::mutex> lock(mu_);
    free_.emplace(size, p);
  }

 private:
  std::mutex mu_;
  std::multimap<size_t, void*> free_;
};

// A block of a PinnedPool of 64-bit words, given back when destroyed.
class PinnedWords {
 public:
  PinnedWords() = default;
  PinnedWords(const PinnedWords&) = delete;
  PinnedWords& operator=(const PinnedWords&) = delete;
  ~PinnedWords() {
    if (data_ != nullptr) pool_->Give(data_, size_);
  }

  void Reset() {
    if (data_ != nullptr) pool_->Give(data_, size_);
    data_ = nullptr;
  }

  Status Take(PinnedPool* pool, size_t words) {
    Reset();
    WEIR_ASSIGN_OR_RETURN(void* p, pool->Take(words * sizeof(int64_t), &size_));
    pool_ = pool;
    data_ = static_cast<int64_t*>(p);
    return Status::Ok();
  }
  int64_t* words() const { return data_; }

 private:
  PinnedPool* pool_ = nullptr;
  int64_t* data_ = nullptr;
  size_t size_ = 0;
};

// ---------------------------------------------------------------------------------------------
// ---------------------------------------------------------------------------------------------

class Engine;

// A call as its handle sees it. Fields below the constructor belong to the engine's mutex, except
// `finished`, which publishes the outcome (status, result, recv_counts) to Test() and Wait().
class NcclOp : public CommOp {
 public:
  NcclOp(std::shared_ptr<Engine> engine, std::string label_text, double timeout, int peer_rank)
      : label(std::move(label_text)),
        timeout_s(timeout),
        start(Clock::now()),
        deadline(After(start, timeout)),
        peer(peer_rank),
        engine_(std::move(engine)) {}

  bool Test() override;
  Status Wait() override;

  const std::string label;  // "rank 1: send (tag 5) to rank 2"
  const double timeout_s;
  const Clock::time_point start;
  const Clock::time_point deadline;
  const int peer;  // -1 for collectives
  WaitStage stage = WaitStage::kQueued;
  bool connecting = false;  // its unit waits for NCCL to finish queueing a group
  bool done = false;
  Status status;
  Wakeups waiters;
  std::atomic<bool> finished{false};

 private:
  std::shared_ptr<Engine> engine_;
};

// One step of a unit (see the top of the file).
struct Step {
  std::function<Status()> before;       // stream work before the group
  std::function<ncclResult_t()> group;  // the NCCL calls of one group; empty for none
  std::function<Status()> after;        // stream work after the group
  bool host_reads = false;              // the next step needs this one's results on the host
};

// What a NCCL group issues: a list of calls, or no group at all when the list is empty.
std::function<ncclResult_t()> Group(std::vector<std::function<ncclResult_t()>> calls) {
  if (calls.empty()) return nullptr;
  return [calls = std::move(calls)] {
    for (const auto& call : calls) {
      ncclResult_t r = call();
      if (r != ncclSuccess && r != ncclInProgress) return r;
    }
    return ncclSuccess;
  };
}

class Unit;

// An NCCL communicator, its stream and the units it runs, one after the other.
struct Lane {
  enum class Phase { kReady, kEnqueuing, kWaitingHost };

  const char* name = "";
  ncclComm_t comm = nullptr;
  cudaStream_t stream = nullptr;
  bool aborted = false;
  // Under the engine's mutex.
  std::deque<std::shared_ptr<Unit>> queue;
  std::shared_ptr<Unit> current;
  Phase phase = Phase::kReady;
  Step step;                                   // the current unit's step while NCCL queues it
  std::list<std::shared_ptr<Unit>> in_flight;  // all steps queued, the last not yet finished

  bool busy() const { return current != nullptr || !in_flight.empty() || !queue.empty(); }
};

class Unit {
 public:
  Unit(Engine* engine, Lane* lane) : engine_(engine), lane_(lane) {}
  virtual ~Unit() {
    if (event != nullptr) cudaEventDestroy(event);
  }
  Unit(const Unit&) = delete;
  Unit& operator=(const Unit&) = delete;

  // Under the engine's mutex, on its thread: the next step, or nullopt once every step is queued.
  // An error leaves NCCL work on the stream that may never match its peers': the engine aborts.
  virtual StatusOr<std::optional<Step>> NextStep(Wakeups* wake) = 0;
  // Every step finished on the device: finish the calls it carries.
  virtual void Complete(Wakeups* wake) = 0;
  virtual void ForEachOp(const std::function<void(NcclOp&)>& f) = 0;

  cudaEvent_t event = nullptr;  // recorded after each step
  bool recorded = false;

 protected:
  Engine* engine_;
  Lane* lane_;
};

// A point-to-point call.
struct P2p {
  std::shared_ptr<NcclOp> op;
  bool is_send = false;
  int peer = 0;
  int tag = 0;
  Tensor tensor;  // a send's input; a recv's result once its message is known
};

// A message the receiver pulled before any recv asked for it; a recv that takes it before its
// data arrived finishes with the unit that carries it.
struct Carried {
  Tensor tensor;
  bool ready = false;                           // the data has arrived
  std::vector<std::shared_ptr<P2p>> claimants;  // recvs that took it before it was ready
};

class Engine {
 public:
  Engine(int rank_, int size_, int device_index, DeviceRuntime* runtime_,
         std::vector<std::unique_ptr<Lane>> lanes, const NcclOptions& options_)
      : rank(rank_),
        size(size_),
        device{DeviceType::kCuda, device_index},
        runtime(runtime_),
        options(options_),
        waiting_recvs(static_cast<size_t>(size_)),
        stash(static_cast<size_t>(size_)),
        lanes_(std::move(lanes)) {}
  ~Engine() { Shutdown(); }
  Engine(const Engine&) = delete;
  Engine& operator=(const Engine&) = delete;

  void StartThread(const std::shared_ptr<Engine>& self) {
    self_ = self;  // weak: the handles' ops keep the engine alive, not the engine itself
    thread_ = std::thread([this] { Run(); });
  }
  void Shutdown();

  // --- For the communicator (any thread).
  CommHandle StartCollective(CollectiveCall call, const Tensor& t,
                             const std::vector<int64_t>& counts, double timeout_s);
  CommHandle StartP2p(bool is_send, const Tensor& t, int peer, int tag, double timeout_s);

  // --- For the handles (any thread).
  // Test(): finishes the calls whose last event completed.
  void Poll();
  // Calls `done` once `op` has finished (at once when it has).
  void AddWaiter(NcclOp& op, std::function<void()> done);

  // --- For the units (under mu, on the thread).
  // Device memory ordered on `lane`'s stream.
  StatusOr<Tensor> EmptyOn(const Lane* lane, DataType dtype, const Shape& shape) const;
  void FinishLocked(NcclOp& op, Status status, Wakeups* wake);
  // Queues one more header pull from `peer` (a pulled message went to the stash).
  void PullLocked(int peer);

  const int rank;
  const int size;
  const Device device;
  DeviceRuntime* const runtime;
  const NcclOptions options;
  PinnedPool pinned;

  std::mutex mu;
  // Point-to-point state (under mu), per peer.
  std::vector<std::deque<std::shared_ptr<P2p>>> waiting_recvs;  // no message yet, in start order
  std::vector<std::map<int, std::deque<std::shared_ptr<Carried>>>> stash;  // by tag

 private:
  using Phase = Lane::Phase;

  // Lane 0 carries the collectives and the messages from lower to higher ranks, lane 1 those from
  // higher to lower: two ranks' messages to each other never share a stream, so neither waits
  // behind the other's blocked send (see the header). One rank has lane 0 only.
  Lane& LaneFor(bool is_send, int peer) {
    if (lanes_.size() == 1 || peer == rank) return *lanes_[0];
    const bool upward = is_send ? peer > rank : peer < rank;
    return *lanes_[upward ? 0 : 1];
  }

  void Run();
  void PassLocked(Wakeups* wake);
  bool AdvanceLocked(Lane& lane, Wakeups* wake);
  bool StepQueuedLocked(Lane& lane, Wakeups* wake);
  void PollInFlightLocked(Wakeups* wake, bool on_thread);
  // Whether ncclCommGetAsyncError reports no error on `lane`.
  bool NcclHealthyLocked(Lane& lane);
  void CheckAsyncErrorLocked(Wakeups* wake);
  void CheckDeadlinesLocked(Wakeups* wake);
  void WakeFromStreamLocked(Lane& lane);
  void SetConnectingLocked(Lane& lane, bool connecting);
  NcclOp* FirstLiveOp(Unit* unit);
  // Something failed with NCCL work possibly pending: abort NCCL and fail every call.
  void BreakLocked(const Status& cause, NcclOp* culprit, Wakeups* wake);
  void BreakInUnitLocked(Lane& lane, const Status& cause, Wakeups* wake);
  Status BrokenLocked(const std::string& label) const;
  bool LiveLocked();
  Clock::duration NextWaitLocked();
  Status PrepareBuffers(const CollectiveCall& call, const Tensor& t, Tensor* result,
                        Tensor* gathered) const;
  void Abandon(Lane& lane);

  std::weak_ptr<Engine> self_;
  std::shared_ptr<Waker> waker_ = std::make_shared<Waker>();
  std::thread thread_;
  std::vector<std::unique_ptr<Lane>> lanes_;

  // Under mu.
  Status broken_;
  bool stopping_ = false;
  bool shut_down_ = false;
  std::vector<std::shared_ptr<Unit>> abandoned_;  // kept until the streams drained
  std::list<std::shared_ptr<NcclOp>> live_;       // unfinished calls, for their deadlines
  std::map<int, std::deque<std::shared_ptr<P2p>>> self_sends_;  // to this rank, by tag
};

CommHandle Finished(Status status) { return CommHandle(FinishedCommOp(std::move(status))); }

// ---------------------------------------------------------------------------------------------
// A collective call.

class CollectiveUnit : public Unit {
 public:
  CollectiveUnit(Engine* engine, Lane* lane, std::shared_ptr<NcclOp> op, CollectiveCall call,
                 Tensor input, std::vector<int64_t> send_counts, Tensor result, Tensor gathered)
      : Unit(engine, lane),
        op_(std::move(op)),
        call_(std::move(call)),
        input_(std::move(input)),
        send_counts_(std::move(send_counts)),
        result_(std::move(result)),
        gathered_(std::move(gathered)) {}

  StatusOr<std::optional<Step>> NextStep(Wakeups* wake) override {
    const bool records = engine_->options.check_calls || call_.kind == CollectiveKind::kBarrier;
    switch (next_) {
      case Next::kRecords:
        if (records) {
          next_ = Next::kCheckRecords;
          return RecordsStep();
        }
        next_ = call_.kind == CollectiveKind::kAllToAllV ? Next::kCounts : Next::kData;
        return NextStep(wake);
      case Next::kCheckRecords: {
        next_ = Next::kDone;
        // An invalid call's caller already has its error; it only told its peers.
        if (!call_.valid) return std::optional<Step>();
        const int64_t words = CollectiveCall::kSignatureLength;
        std::vector<int64_t> all(host_.words() + words,
                                 host_.words() + words * (1 + engine_->size));
        Status match = nccl::CheckRecords(call_, all, engine_->rank, engine_->size);
        // Every rank sees the disagreement (each checks all records), so all stop here and no
        // NCCL work is left unmatched: the communicator stays usable.
        if (!match.ok()) {
          engine_->FinishLocked(*op_, match, wake);
          return std::optional<Step>();
        }
        if (call_.kind == CollectiveKind::kBarrier) return std::optional<Step>();
        next_ = call_.kind == CollectiveKind::kAllToAllV ? Next::kCounts : Next::kData;
        return NextStep(wake);
      }
      case Next::kCounts:
        next_ = Next::kReadCounts;
        return CountsStep();
      case Next::kReadCounts:
        WEIR_RETURN_IF_ERROR(ReadCounts());
        next_ = Next::kData;
        return NextStep(wake);
      case Next::kData:
        return DataStep();
      case Next::kShare:
        next_ = Next::kDone;
        return ShareStep();
      case Next::kDone:
        return std::optional<Step>();
    }
    return std::optional<Step>();
  }

  void Complete(Wakeups* wake) override {
    if (!op_->done) {
      op_->result = result_;
      if (call_.kind == CollectiveKind::kAllToAllV) op_->recv_counts = recv_counts_;
      engine_->FinishLocked(*op_, Status::Ok(), wake);
    }
    input_ = gathered_ = words_ = Tensor();
  }

  void ForEachOp(const std::function<void(NcclOp&)>& f) override { f(*op_); }

 private:
  enum class Next { kRecords, kCheckRecords, kCounts, kReadCounts, kData, kShare, kDone };

  int64_t numel() const { return NumElements(call_.shape); }
  size_t element_bytes() const { return DataTypeSize(call_.dtype); }
  std::string label() const { return op_->label; }

  // Every rank's call record, gathered: whether they form one operation.
  StatusOr<std::optional<Step>> RecordsStep() {
    op_->stage = WaitStage::kRecords;
    const int64_t words = CollectiveCall::kSignatureLength;
    const int size = engine_->size;
    WEIR_RETURN_IF_ERROR(host_.Take(&engine_->pinned, static_cast<size_t>(words * (1 + size))));
    CollectiveCall::Signature signature = call_.Encode();
    std::copy(signature.begin(), signature.end(), host_.words());
    WEIR_ASSIGN_OR_RETURN(words_, engine_->EmptyOn(lane_, DT_I64, {words * (1 + size)}));
    int64_t* host = host_.words();
    auto* device = static_cast<int64_t*>(words_.raw_data());
    cudaStream_t stream = lane_->stream;
    ncclComm_t comm = lane_->comm;
    const size_t record_bytes = static_cast<size_t>(words) * sizeof(int64_t);
    Step step;
    step.before = [=, this] {
      return Check(cudaMemcpyAsync(device, host, record_bytes, cudaMemcpyHostToDevice, stream),
                   "copying the call record to the device");
    };
    step.group = [=] {
      return ncclAllGather(device, device + words, record_bytes, ncclUint8, comm, stream);
    };
    step.after = [=, this] {
      return Check(cudaMemcpyAsync(host + words, device + words, record_bytes * size,
                                   cudaMemcpyDeviceToHost, stream),
                   "copying the call records to the host");
    };
    step.host_reads = true;
    return std::optional<Step>(std::move(step));
  }

  // all_to_all_v: how many rows each rank sends to each.
  StatusOr<std::optional<Step>> CountsStep() {
    op_->stage = engine_->options.check_calls ? WaitStage::kCounts : WaitStage::kUncheckedData;
    const int size = engine_->size;
    WEIR_RETURN_IF_ERROR(host_.Take(&engine_->pinned, static_cast<size_t>(2 * size)));
    std::copy(send_counts_.begin(), send_counts_.end(), host_.words());
    WEIR_ASSIGN_OR_RETURN(words_,
                          engine_->EmptyOn(lane_, DT_I64, {2 * static_cast<int64_t>(size)}));
    int64_t* host = host_.words();
    auto* device = static_cast<int64_t*>(words_.raw_data());
    cudaStream_t stream = lane_->stream;
    ncclComm_t comm = lane_->comm;
    const size_t bytes = static_cast<size_t>(size) * sizeof(int64_t);
    Step step;
    step.before = [=, this] {
      return Check(cudaMemcpyAsync(device, host, bytes, cudaMemcpyHostToDevice, stream),
                   "copying the row counts to the device");
    };
    step.group = [=] { return ncclAlltoAll(device, device + size, 1, ncclInt64, comm, stream); };
    step.after = [=, this] {
      return Check(
          cudaMemcpyAsync(host + size, device + size, bytes, cudaMemcpyDeviceToHost, stream),
          "copying the row counts to the host");
    };
    step.host_reads = true;
    return std::optional<Step>(std::move(step));
  }

  Status ReadCounts() {
    const int size = engine_->size;
    recv_counts_.assign(host_.words() + size, host_.words() + 2 * size);
    int64_t rows = 0;
    for (int i = 0; i < size; ++i) {
      if (recv_counts_[i] < 0) {
        return DataLoss(label() + ": rank " + std::to_string(i) + " announced " +
                        std::to_string(recv_counts_[i]) + " rows");
      }
      rows += recv_counts_[i];
    }
    Shape shape = call_.shape;
    shape[0] = rows;
    WEIR_ASSIGN_OR_RETURN(result_, engine_->EmptyOn(lane_, call_.dtype, shape));
    return Status::Ok();
  }

  Status Check(cudaError_t error, const char* what) const {
    if (error == cudaSuccess) return Status::Ok();
    return CudaStatus(label() + ": " + what, error);
  }

  // A device-to-device copy on the stream (nothing for zero bytes).
  std::function<Status()> Copy(void* dst, const void* src, size_t bytes) const {
    if (bytes == 0) return nullptr;
    cudaStream_t stream = lane_->stream;
    return [=, this] {
      return Check(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, stream),
                   "copying this rank's own part");
    };
  }

  StatusOr<std::optional<Step>> DataStep() {
    op_->stage = engine_->options.check_calls || call_.kind == CollectiveKind::kAllToAllV
                     ? WaitStage::kData
                     : WaitStage::kUncheckedData;
    next_ = Next::kDone;
    const int size = engine_->size;
    const int rank = engine_->rank;
    ncclComm_t comm = lane_->comm;
    cudaStream_t stream = lane_->stream;
    const size_t es = element_bytes();
    const size_t bytes = static_cast<size_t>(numel()) * es;
    const char* in = Bytes(input_);
    char* out = Bytes(result_);
    const bool rank_order = engine_->options.reduction == NcclReduction::kRankOrder;
    Step step;
    std::vector<std::function<ncclResult_t()>> calls;
    switch (call_.kind) {
      case CollectiveKind::kBarrier:
        break;  // the record gather was the barrier
      case CollectiveKind::kAllGather:
        if (bytes > 0) {
          calls.push_back([=] { return ncclAllGather(in, out, bytes, ncclUint8, comm, stream); });
        }
        break;
      case CollectiveKind::kBroadcast:
        if (bytes > 0) {
          const int root = call_.root;
          const void* send = rank == root ? static_cast<const void*>(in) : out;
          calls.push_back(
              [=] { return ncclBroadcast(send, out, bytes, ncclUint8, root, comm, stream); });
        }
        break;
      case CollectiveKind::kAllReduce: {
        const int64_t n = numel();
        if (n == 0) break;
        const ncclRedOp_t op = call_.reduce == ReduceOp::kSum ? ncclSum : ncclMax;
        const ncclDataType_t type = NcclType(call_.dtype);
        if (!rank_order) {
          calls.push_back([=] { return ncclAllReduce(in, out, n, type, op, comm, stream); });
          break;
        }
        // Rank j reduces elements [begin(j), begin(j + 1)): everyone sends it their slice of
        // them, it reduces them in rank order, then shares the result (ShareStep).
        auto begin = [=](int j) { return nccl::ChunkBegin(n, size, j); };
        const int64_t mine = begin(rank + 1) - begin(rank);
        char* parts = Bytes(gathered_);
        step.before = Copy(parts + rank * mine * es, in + begin(rank) * es, mine * es);
        for (int j = 0; j < size; ++j) {
          if (j == rank) continue;
          const size_t to_j = (begin(j + 1) - begin(j)) * es;
          const char* from = in + begin(j) * es;
          if (to_j > 0) {
            calls.push_back([=] { return ncclSend(from, to_j, ncclUint8, j, comm, stream); });
          }
          if (mine > 0) {
            char* into = parts + j * mine * es;
            calls.push_back([=] { return ncclRecv(into, mine * es, ncclUint8, j, comm, stream); });
          }
        }
        const DataType dtype = call_.dtype;
        const ReduceOp reduce = call_.reduce;
        char* reduced = out + begin(rank) * es;
        step.after = [=] {
          return ReduceRanksOnDevice(dtype, reduce, parts, mine, size, mine, reduced,
                                     reinterpret_cast<StreamId>(stream));
        };
        next_ = Next::kShare;
        break;
      }
      case CollectiveKind::kReduceScatter: {
        const int64_t block = numel() / size;
        if (block == 0) break;
        const ncclRedOp_t op = call_.reduce == ReduceOp::kSum ? ncclSum : ncclMax;
        const ncclDataType_t type = NcclType(call_.dtype);
        if (!rank_order) {
          calls.push_back(
              [=] { return ncclReduceScatter(in, out, block, type, op, comm, stream); });
          break;
        }
        char* parts = Bytes(gathered_);
        const size_t block_bytes = block * es;
        step.before = Copy(parts + rank * block_bytes, in + rank * block_bytes, block_bytes);
        for (int j = 0; j < size; ++j) {
          if (j == rank) continue;
          const char* from = in + j * block_bytes;
          char* into = parts + j * block_bytes;
          calls.push_back([=] { return ncclSend(from, block_bytes, ncclUint8, j, comm, stream); });
          calls.push_back([=] { return ncclRecv(into, block_bytes, ncclUint8, j, comm, stream); });
        }
        const DataType dtype = call_.dtype;
        const ReduceOp reduce = call_.reduce;
        step.after = [=] {
          return ReduceRanksOnDevice(dtype, reduce, parts, block, size, block, out,
                                     reinterpret_cast<StreamId>(stream));
        };
        break;
      }
      case CollectiveKind::kAllToAllV: {
        Shape row_shape(call_.shape.begin() + 1, call_.shape.end());
        const size_t row_bytes = static_cast<size_t>(NumElements(row_shape)) * es;
        if (row_bytes == 0) break;
        std::vector<int64_t> send_at = nccl::Offsets(send_counts_);
        std::vector<int64_t> recv_at = nccl::Offsets(recv_counts_);
        step.before = Copy(out + recv_at[rank] * row_bytes, in + send_at[rank] * row_bytes,
                           send_counts_[rank] * row_bytes);
        for (int j = 0; j < size; ++j) {
          if (j == rank) continue;
          const size_t to_j = send_counts_[j] * row_bytes;
          const size_t from_j = recv_counts_[j] * row_bytes;
          const char* from = in + send_at[j] * row_bytes;
          char* into = out + recv_at[j] * row_bytes;
          if (to_j > 0) {
            calls.push_back([=] { return ncclSend(from, to_j, ncclUint8, j, comm, stream); });
          }
          if (from_j > 0) {
            calls.push_back([=] { return ncclRecv(into, from_j, ncclUint8, j, comm, stream); });
          }
        }
        break;
      }
    }
    step.group = Group(std::move(calls));
    return std::optional<Step>(std::move(step));
  }

  // all_reduce in rank order: rank j's reduced slice to every rank.
  StatusOr<std::optional<Step>> ShareStep() {
    const int size = engine_->size;
    const int rank = engine_->rank;
    ncclComm_t comm = lane_->comm;
    cudaStream_t stream = lane_->stream;
    const size_t es = element_bytes();
    const int64_t n = numel();
    auto begin = [=](int j) { return nccl::ChunkBegin(n, size, j); };
    char* out = Bytes(result_);
    const size_t mine = (begin(rank + 1) - begin(rank)) * es;
    const char* reduced = out + begin(rank) * es;
    std::vector<std::function<ncclResult_t()>> calls;
    for (int j = 0; j < size; ++j) {
      if (j == rank) continue;
      const size_t from_j = (begin(j + 1) - begin(j)) * es;
      char* into = out + begin(j) * es;
      if (mine > 0) {
        calls.push_back([=] { return ncclSend(reduced, mine, ncclUint8, j, comm, stream); });
      }
      if (from_j > 0) {
        calls.push_back([=] { return ncclRecv(into, from_j, ncclUint8, j, comm, stream); });
      }
    }
    Step step;
    step.group = Group(std::move(calls));
    return std::optional<Step>(std::move(step));
  }

  std::shared_ptr<NcclOp> op_;
  const CollectiveCall call_;
  Tensor input_;
  const std::vector<int64_t> send_counts_;
  Tensor result_;
  Tensor gathered_;  // rank-order reductions: every rank's part of this rank's chunk
  Tensor words_;     // device side of the call records or row counts
  PinnedWords host_;
  std::vector<int64_t> recv_counts_;
  Next next_ = Next::kRecords;
};

// ---------------------------------------------------------------------------------------------
// Point to point. A message is a header (tag, dtype, shape) and then its data. The sender sends
// both in one group; the receiver pulls one header per waiting recv, reads it on the host, and
// receives the data into the oldest waiting recv of that tag (or into the stash).

class SendUnit : public Unit {
 public:
  SendUnit(Engine* engine, Lane* lane, std::shared_ptr<P2p> send)
      : Unit(engine, lane), send_(std::move(send)) {}

  StatusOr<std::optional<Step>> NextStep(Wakeups*) override {
    if (issued_) return std::optional<Step>();
    issued_ = true;
    send_->op->stage = WaitStage::kSend;
    const int64_t words = nccl::kHeaderWords;
    WEIR_RETURN_IF_ERROR(host_.Take(&engine_->pinned, static_cast<size_t>(words)));
    nccl::Header h =
        nccl::EncodeHeader(engine_->rank, send_->tag, send_->tensor.dtype(), send_->tensor.shape());
    std::copy(h.begin(), h.end(), host_.words());
    WEIR_ASSIGN_OR_RETURN(header_, engine_->EmptyOn(lane_, DT_I64, {words}));
    const int64_t* host = host_.words();
    auto* device = static_cast<int64_t*>(header_.raw_data());
    const char* data = Bytes(send_->tensor);
    const size_t bytes = send_->tensor.nbytes();
    const size_t header_bytes = words * sizeof(int64_t);
    const int peer = send_->peer;
    ncclComm_t comm = lane_->comm;
    cudaStream_t stream = lane_->stream;
    const std::string label = send_->op->label;
    Step step;
    step.before = [=] {
      cudaError_t e = cudaMemcpyAsync(device, host, header_bytes, cudaMemcpyHostToDevice, stream);
      return e == cudaSuccess ? Status::Ok() : CudaStatus(label + ": copying its header", e);
    };
    std::vector<std::function<ncclResult_t()>> calls;
    calls.push_back([=] { return ncclSend(device, header_bytes, ncclUint8, peer, comm, stream); });
    if (bytes > 0) {
      calls.push_back([=] { return ncclSend(data, bytes, ncclUint8, peer, comm, stream); });
    }
    step.group = Group(std::move(calls));
    return std::optional<Step>(std::move(step));
  }

  void Complete(Wakeups* wake) override {
    engine_->FinishLocked(*send_->op, Status::Ok(), wake);
    send_->tensor = Tensor();
    header_ = Tensor();
  }

  void ForEachOp(const std::function<void(NcclOp&)>& f) override { f(*send_->op); }

 private:
  std::shared_ptr<P2p> send_;
  bool issued_ = false;
  PinnedWords host_;
  Tensor header_;
};

class PullUnit : public Unit {
 public:
  PullUnit(Engine* engine, Lane* lane, int peer) : Unit(engine, lane), peer_(peer) {}

  StatusOr<std::optional<Step>> NextStep(Wakeups*) override {
    switch (next_) {
      case Next::kHeader:
        next_ = Next::kData;
        return HeaderStep();
      case Next::kData:
        next_ = Next::kDone;
        return DataStep();
      case Next::kDone:
        break;
    }
    return std::optional<Step>();
  }

  void Complete(Wakeups* wake) override {
    if (matched_ != nullptr) {
      matched_->op->result = matched_->tensor;
      engine_->FinishLocked(*matched_->op, Status::Ok(), wake);
      matched_.reset();
    }
    if (carried_ != nullptr) {
      carried_->ready = true;
      for (auto& recv : carried_->claimants) {
        recv->op->result = carried_->tensor;
        engine_->FinishLocked(*recv->op, Status::Ok(), wake);
      }
      carried_->claimants.clear();
      carried_.reset();
    }
    header_ = Tensor();
  }

  void ForEachOp(const std::function<void(NcclOp&)>& f) override {
    if (matched_ != nullptr) f(*matched_->op);
    if (carried_ != nullptr)
      for (auto& recv : carried_->claimants) f(*recv->op);
  }

 private:
  enum class Next { kHeader, kData, kDone };

  std::string Where() const {
    return "rank " + std::to_string(engine_->rank) + ": receiving from rank " +
           std::to_string(peer_);
  }

  StatusOr<std::optional<Step>> HeaderStep() {
    const int64_t words = nccl::kHeaderWords;
    WEIR_RETURN_IF_ERROR(host_.Take(&engine_->pinned, static_cast<size_t>(words)));
    WEIR_ASSIGN_OR_RETURN(header_, engine_->EmptyOn(lane_, DT_I64, {words}));
    int64_t* host = host_.words();
    auto* device = static_cast<int64_t*>(header_.raw_data());
    const size_t header_bytes = words * sizeof(int64_t);
    const int peer = peer_;
    ncclComm_t comm = lane_->comm;
    cudaStream_t stream = lane_->stream;
    const std::string where = Where();
    Step step;
    step.group = [=] { return ncclRecv(device, header_bytes, ncclUint8, peer, comm, stream); };
    step.after = [=] {
      cudaError_t e = cudaMemcpyAsync(host, device, header_bytes, cudaMemcpyDeviceToHost, stream);
      return e == cudaSuccess ? Status::Ok() : CudaStatus(where + ": copying a header", e);
    };
    step.host_reads = true;
    return std::optional<Step>(std::move(step));
  }

  // The header is on the host: the message goes to the oldest waiting recv of its tag, or into
  // the stash (and the recv this pull was for needs another).
  StatusOr<std::optional<Step>> DataStep() {
    WEIR_ASSIGN_OR_RETURN(nccl::MessageInfo info,
                          nccl::DecodeHeader(host_.words(), peer_, Where()));
    WEIR_ASSIGN_OR_RETURN(Tensor target, engine_->EmptyOn(lane_, info.dtype, info.shape));
    auto& waiting = engine_->waiting_recvs[peer_];
    auto it = std::find_if(waiting.begin(), waiting.end(),
                           [&](const std::shared_ptr<P2p>& r) { return r->tag == info.tag; });
    if (it != waiting.end()) {
      matched_ = *it;
      waiting.erase(it);
      matched_->tensor = target;
      matched_->op->stage = WaitStage::kRecvData;
    } else {
      carried_ = std::make_shared<Carried>();
      carried_->tensor = target;
      engine_->stash[peer_][info.tag].push_back(carried_);
      engine_->PullLocked(peer_);
    }
    Step step;
    const size_t bytes = target.nbytes();
    if (bytes > 0) {
      char* into = Bytes(target);
      const int peer = peer_;
      ncclComm_t comm = lane_->comm;
      cudaStream_t stream = lane_->stream;
      step.group = [=] { return ncclRecv(into, bytes, ncclUint8, peer, comm, stream); };
    }
    return std::optional<Step>(std::move(step));
  }

  const int peer_;
  Next next_ = Next::kHeader;
  PinnedWords host_;
  Tensor header_;
  std::shared_ptr<P2p> matched_;      // the recv it serves
  std::shared_ptr<Carried> carried_;  // or the message it keeps for a recv to come
};

// A send to this rank itself, met on the host by its recv: one device copy.
class CopyUnit : public Unit {
 public:
  CopyUnit(Engine* engine, Lane* lane, std::shared_ptr<P2p> send, std::shared_ptr<P2p> recv)
      : Unit(engine, lane), send_(std::move(send)), recv_(std::move(recv)) {}

  StatusOr<std::optional<Step>> NextStep(Wakeups*) override {
    if (issued_) return std::optional<Step>();
    issued_ = true;
    send_->op->stage = WaitStage::kSend;
    recv_->op->stage = WaitStage::kRecvData;
    WEIR_ASSIGN_OR_RETURN(recv_->tensor,
                          engine_->EmptyOn(lane_, send_->tensor.dtype(), send_->tensor.shape()));
    Step step;
    const size_t bytes = send_->tensor.nbytes();
    if (bytes > 0) {
      void* dst = recv_->tensor.raw_data();
      const void* src = send_->tensor.raw_data();
      cudaStream_t stream = lane_->stream;
      const std::string label = send_->op->label;
      step.after = [=] {
        cudaError_t e = cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, stream);
        return e == cudaSuccess ? Status::Ok() : CudaStatus(label + ": copying", e);
      };
    }
    return std::optional<Step>(std::move(step));
  }

  void Complete(Wakeups* wake) override {
    engine_->FinishLocked(*send_->op, Status::Ok(), wake);
    recv_->op->result = recv_->tensor;
    engine_->FinishLocked(*recv_->op, Status::Ok(), wake);
    send_->tensor = Tensor();
  }

  void ForEachOp(const std::function<void(NcclOp&)>& f) override {
    f(*send_->op);
    f(*recv_->op);
  }

 private:
  std::shared_ptr<P2p> send_;
  std::shared_ptr<P2p> recv_;
  bool issued_ = false;
};

// ---------------------------------------------------------------------------------------------
// Engine.

StatusOr<Tensor> Engine::EmptyOn(const Lane* lane, DataType dtype, const Shape& shape) const {
  const size_t bytes = static_cast<size_t>(NumElements(shape)) * DataTypeSize(dtype);
  if (bytes == 0) {
    return Tensor::FromStorage(Storage::Wrap(nullptr, 0, nullptr, device), dtype, shape);
  }
  WEIR_ASSIGN_OR_RETURN(std::shared_ptr<Storage> storage,
                        runtime->Allocate(bytes, reinterpret_cast<StreamId>(lane->stream)));
  return Tensor::FromStorage(std::move(storage), dtype, shape);
}

void Engine::FinishLocked(NcclOp& op, Status status, Wakeups* wake) {
  if (op.done) return;
  op.status = std::move(status);
  op.done = true;
  op.connecting = false;
  op.finished.store(true, std::memory_order_release);
  for (auto& waiter : op.waiters) wake->push_back(std::move(waiter));
  op.waiters.clear();
}

void Engine::PullLocked(int peer) {
  Lane& lane = LaneFor(/*is_send=*/false, peer);
  lane.queue.push_back(std::make_shared<PullUnit>(this, &lane, peer));
}

Status Engine::BrokenLocked(const std::string& label) const {
  if (shut_down_) return FailedPrecondition(label + ": the NCCL communicator has been destroyed");
  if (broken_.ok()) return Status::Ok();
  return FailedPrecondition(label +
                            ": the NCCL communicator is unusable after an earlier failure (" +
                            broken_.message() + ")");
}

Status Engine::PrepareBuffers(const CollectiveCall& call, const Tensor& t, Tensor* result,
                              Tensor* gathered) const {
  const bool rank_order = options.reduction == NcclReduction::kRankOrder;
  const Lane* lane = lanes_[0].get();
  switch (call.kind) {
    case CollectiveKind::kAllReduce: {
      WEIR_ASSIGN_OR_RETURN(*result, EmptyOn(lane, t.dtype(), t.shape()));
      if (rank_order) {
        const int64_t mine =
            nccl::ChunkBegin(t.numel(), size, rank + 1) - nccl::ChunkBegin(t.numel(), size, rank);
        WEIR_ASSIGN_OR_RETURN(*gathered, EmptyOn(lane, t.dtype(), {mine * size}));
      }
      return Status::Ok();
    }
    case CollectiveKind::kAllGather: {
      Shape shape = t.shape();
      if (shape.empty()) shape.push_back(1);
      shape[0] *= size;
      WEIR_ASSIGN_OR_RETURN(*result, EmptyOn(lane, t.dtype(), shape));
      return Status::Ok();
    }
    case CollectiveKind::kReduceScatter: {
      Shape shape = t.shape();
      shape[0] /= size;
      WEIR_ASSIGN_OR_RETURN(*result, EmptyOn(lane, t.dtype(), shape));
      if (rank_order) {
        WEIR_ASSIGN_OR_RETURN(*gathered, EmptyOn(lane, t.dtype(), {t.numel()}));
      }
      return Status::Ok();
    }
    case CollectiveKind::kBroadcast: {
      WEIR_ASSIGN_OR_RETURN(*result, EmptyOn(lane, t.dtype(), t.shape()));
      return Status::Ok();
    }
    case CollectiveKind::kAllToAllV:  // the result's size is known after the counts
    case CollectiveKind::kBarrier:
      return Status::Ok();
  }
  return Status::Ok();
}

CommHandle Engine::StartCollective(CollectiveCall call, const Tensor& t,
                                   const std::vector<int64_t>& counts, double timeout_s) {
  if (call.kind != CollectiveKind::kBarrier && t.defined()) {
    call.dtype = t.dtype();
    call.shape = t.shape();
  }
  const std::string label = "rank " + std::to_string(rank) + ": " + call.Label();
  Status valid = nccl::ValidateCollective(call, t, counts, rank, size, device);
  Tensor result, gathered;
  if (valid.ok()) {
    valid = PrepareBuffers(call, t, &result, &gathered);
    if (!valid.ok()) valid = Status(valid).Prepend(label);
  }
  call.valid = valid.ok();
  if (!call.valid) call.shape.clear();  // its record carries no shape (Encode takes few dims)
  auto op = std::make_shared<NcclOp>(self_.lock(), label, timeout_s, -1);
  std::lock_guard<std::mutex> lock(mu);
  if (Status broken = BrokenLocked(label); !broken.ok()) return Finished(broken);
  const bool records = options.check_calls || call.kind == CollectiveKind::kBarrier;
  if (!valid.ok()) {
    op->status = valid;
    op->done = true;
    op->finished.store(true, std::memory_order_release);
    // Its peers learn of it from the record gather; without one they wait for their deadline.
    if (!records) return CommHandle(op);
  } else {
    live_.push_back(op);
  }
  Lane* lane = lanes_[0].get();
  lane->queue.push_back(std::make_shared<CollectiveUnit>(this, lane, op, std::move(call), t, counts,
                                                         std::move(result), std::move(gathered)));
  waker_->Signal();
  return CommHandle(op);
}

CommHandle Engine::StartP2p(bool is_send, const Tensor& t, int peer, int tag, double timeout_s) {
  const std::string label = "rank " + std::to_string(rank) + ": " + (is_send ? "send" : "recv") +
                            " (tag " + std::to_string(tag) + ") " + (is_send ? "to" : "from") +
                            " rank " + std::to_string(peer);
  Status valid = is_send ? nccl::ValidateSend(t, peer, tag, rank, size, device)
                         : comm::ValidatePeer("recv", peer, tag, rank, size);
  if (!valid.ok()) return Finished(valid);
  auto op = std::make_shared<NcclOp>(self_.lock(), label, timeout_s, peer);
  auto p = std::make_shared<P2p>();
  p->op = op;
  p->is_send = is_send;
  p->peer = peer;
  p->tag = tag;
  if (is_send) p->tensor = t;
  Wakeups wake;
  {
    std::lock_guard<std::mutex> lock(mu);
    if (Status broken = BrokenLocked(label); !broken.ok()) return Finished(broken);
    live_.push_back(op);
    Lane& lane = LaneFor(is_send, peer);
    if (peer == rank) {
      // Sends to this rank meet its recvs here, by tag in start order.
      if (is_send) {
        auto& waiting = waiting_recvs[rank];
        auto it = std::find_if(waiting.begin(), waiting.end(),
                               [&](const std::shared_ptr<P2p>& r) { return r->tag == tag; });
        if (it != waiting.end()) {
          lane.queue.push_back(std::make_shared<CopyUnit>(this, &lane, p, *it));
          waiting.erase(it);
        } else {
          op->stage = WaitStage::kSend;
          self_sends_[tag].push_back(p);
        }
      } else {
        auto found = self_sends_.find(tag);
        if (found != self_sends_.end()) {
          lane.queue.push_back(std::make_shared<CopyUnit>(this, &lane, found->second.front(), p));
          found->second.pop_front();
          if (found->second.empty()) self_sends_.erase(found);
        } else {
          op->stage = WaitStage::kRecv;
          waiting_recvs[rank].push_back(p);
        }
      }
    } else if (is_send) {
      lane.queue.push_back(std::make_shared<SendUnit>(this, &lane, p));
    } else {
      auto kept = stash[peer].find(tag);
      if (kept != stash[peer].end()) {
        // A message that came before its recv.
        std::shared_ptr<Carried> carried = kept->second.front();
        kept->second.pop_front();
        if (kept->second.empty()) stash[peer].erase(kept);
        p->tensor = carried->tensor;
        if (carried->ready) {
          op->result = carried->tensor;
          FinishLocked(*op, Status::Ok(), &wake);
        } else {
          op->stage = WaitStage::kRecvData;
          carried->claimants.push_back(p);
        }
      } else {
        op->stage = WaitStage::kRecv;
        waiting_recvs[peer].push_back(p);
        PullLocked(peer);
      }
    }
    waker_->Signal();
  }
  for (auto& w : wake) w();
  return CommHandle(op);
}

void Engine::Poll() {
  Wakeups wake;
  {
    DeviceGuard guard(device.index);  // events and frees of this device
    std::lock_guard<std::mutex> lock(mu);
    PollInFlightLocked(&wake, /*on_thread=*/false);
  }
  for (auto& w : wake) w();
}

void Engine::AddWaiter(NcclOp& op, std::function<void()> done) {
  {
    std::lock_guard<std::mutex> lock(mu);
    if (!op.done) {
      op.waiters.push_back(std::move(done));
      return;
    }
  }
  done();
}

NcclOp* Engine::FirstLiveOp(Unit* unit) {
  NcclOp* first = nullptr;
  if (unit == nullptr) return nullptr;
  unit->ForEachOp([&](NcclOp& op) {
    if (first == nullptr && !op.done) first = &op;
  });
  return first;
}

void Engine::SetConnectingLocked(Lane& lane, bool connecting) {
  if (lane.current != nullptr) {
    lane.current->ForEachOp([&](NcclOp& op) { op.connecting = connecting; });
  }
}

void Engine::BreakInUnitLocked(Lane& lane, const Status& cause, Wakeups* wake) {
  BreakLocked(cause, FirstLiveOp(lane.current.get()), wake);
}

void Engine::WakeFromStreamLocked(Lane& lane) {
  auto* arg = new std::shared_ptr<Waker>(waker_);
  if (cudaLaunchHostFunc(lane.stream, WakeFromStream, arg) != cudaSuccess) {
    // The thread still polls; it only sees the end of the step later.
    delete arg;
    cudaGetLastError();
  }
}

bool Engine::StepQueuedLocked(Lane& lane, Wakeups* wake) {
  if (lane.step.after) {
    Status s = lane.step.after();
    if (!s.ok()) {
      BreakInUnitLocked(lane, s, wake);
      return false;
    }
  }
  Unit& unit = *lane.current;
  if (unit.event == nullptr) {
    cudaError_t e = cudaEventCreateWithFlags(&unit.event, cudaEventDisableTiming);
    if (e != cudaSuccess) {
      unit.event = nullptr;
      BreakInUnitLocked(lane, CudaStatus("NCCL communicator: cudaEventCreate", e), wake);
      return false;
    }
  }
  cudaError_t e = cudaEventRecord(unit.event, lane.stream);
  if (e != cudaSuccess) {
    BreakInUnitLocked(lane, CudaStatus("NCCL communicator: cudaEventRecord", e), wake);
    return false;
  }
  unit.recorded = true;
  const bool host_reads = lane.step.host_reads;
  lane.step = Step();
  if (host_reads) {
    WakeFromStreamLocked(lane);
    lane.phase = Phase::kWaitingHost;
  } else {
    lane.phase = Phase::kReady;
  }
  return true;
}

bool Engine::AdvanceLocked(Lane& lane, Wakeups* wake) {
  if (lane.phase == Phase::kEnqueuing) {
    ncclResult_t state = ncclInProgress;
    ncclResult_t r = ncclCommGetAsyncError(lane.comm, &state);
    if (r != ncclSuccess) state = r;
    if (state == ncclInProgress) return false;
    SetConnectingLocked(lane, false);
    if (state != ncclSuccess) {
      NcclOp* op = FirstLiveOp(lane.current.get());
      BreakInUnitLocked(
          lane,
          NcclStatus(op != nullptr ? op->label : "rank " + std::to_string(rank), state, lane.comm),
          wake);
      return false;
    }
    lane.phase = Phase::kReady;
    return StepQueuedLocked(lane, wake);
  }
  if (lane.phase == Phase::kWaitingHost) {
    cudaError_t e = cudaEventQuery(lane.current->event);
    if (e == cudaErrorNotReady) return false;
    if (e != cudaSuccess) {
      BreakInUnitLocked(lane, CudaStatus("NCCL communicator: waiting for a step", e), wake);
      return false;
    }
    // What the host reads next is only what the peers sent while NCCL reports no error.
    if (!NcclHealthyLocked(lane)) {
      CheckAsyncErrorLocked(wake);
      return false;
    }
    lane.phase = Phase::kReady;
    return true;
  }
  if (lane.current == nullptr) {
    if (lane.queue.empty()) return false;
    lane.current = std::move(lane.queue.front());
    lane.queue.pop_front();
  }
  StatusOr<std::optional<Step>> next = lane.current->NextStep(wake);
  if (!next.ok()) {
    BreakInUnitLocked(lane, next.status(), wake);
    return false;
  }
  if (!next->has_value()) {
    // Every step is queued: the unit finishes with its last event.
    std::shared_ptr<Unit> unit = std::move(lane.current);
    lane.current.reset();
    if (unit->recorded) {
      WakeFromStreamLocked(lane);
      lane.in_flight.push_back(std::move(unit));
    } else {
      unit->Complete(wake);
    }
    return true;
  }
  lane.step = std::move(**next);
  if (lane.step.before) {
    Status s = lane.step.before();
    if (!s.ok()) {
      BreakInUnitLocked(lane, s, wake);
      return false;
    }
  }
  if (lane.step.group) {
    ncclResult_t r = ncclGroupStart();
    if (r == ncclSuccess) {
      ncclResult_t calls = lane.step.group();
      ncclResult_t end = ncclGroupEnd();  // closes the group even when a call failed
      r = (calls != ncclSuccess && calls != ncclInProgress) ? calls : end;
    }
    if (r == ncclInProgress) {
      lane.phase = Phase::kEnqueuing;
      SetConnectingLocked(lane, true);
      return false;
    }
    if (r != ncclSuccess) {
      NcclOp* op = FirstLiveOp(lane.current.get());
      BreakInUnitLocked(lane,
                        NcclStatus((op != nullptr ? op->label : "rank " + std::to_string(rank)) +
                                       ": queueing NCCL work",
                                   r, lane.comm),
                        wake);
      return false;
    }
  }
  return StepQueuedLocked(lane, wake);
}

void Engine::PollInFlightLocked(Wakeups* wake, bool on_thread) {
  if (!broken_.ok()) return;
  for (auto& lane : lanes_) {
    bool checked = false;
    for (auto it = lane->in_flight.begin(); it != lane->in_flight.end();) {
      cudaError_t e = cudaEventQuery((*it)->event);
      if (e == cudaErrorNotReady) {
        ++it;
        continue;
      }
      // Kernels that NCCL ended because of an error (a peer's abort, a network failure) also
      // complete their events: the results count only while NCCL reports no error.
      if (e == cudaSuccess && !checked) {
        checked = true;
        if (!NcclHealthyLocked(*lane)) e = cudaErrorUnknown;
      }
      if (e != cudaSuccess) {
        // Only the thread aborts NCCL: another caller leaves the error for it to find.
        if (on_thread) CheckAsyncErrorLocked(wake);
        if (on_thread && broken_.ok()) {
          BreakLocked(CudaStatus("NCCL communicator: a call's work on the GPU failed", e),
                      FirstLiveOp(it->get()), wake);
        }
        return;
      }
      (*it)->Complete(wake);
      it = lane->in_flight.erase(it);
    }
  }
}

bool Engine::NcclHealthyLocked(Lane& lane) {
  ncclResult_t state = ncclSuccess;
  ncclResult_t r = ncclCommGetAsyncError(lane.comm, &state);
  if (r != ncclSuccess) state = r;
  // ncclInProgress: the lane's current group is still being queued, which says nothing about
  // the work queued before it.
  return state == ncclSuccess || state == ncclInProgress;
}

void Engine::CheckAsyncErrorLocked(Wakeups* wake) {
  for (auto& lane : lanes_) {
    if (lane->phase == Phase::kEnqueuing) continue;  // AdvanceLocked polls it then
    ncclResult_t state = ncclSuccess;
    ncclResult_t r = ncclCommGetAsyncError(lane->comm, &state);
    if (r != ncclSuccess) state = r;
    if (state == ncclSuccess || state == ncclInProgress) continue;
    NcclOp* culprit = nullptr;
    for (auto& op : live_) {
      if (!op->done) {
        culprit = op.get();
        break;
      }
    }
    std::string what = culprit != nullptr
                           ? culprit->label + ": NCCL failed while it was in flight (after " +
                                 nccl::Elapsed(SecondsSince(culprit->start)) + ")"
                           : "rank " + std::to_string(rank) + ": NCCL failed";
    Status cause = NcclStatus(what, state, lane->comm);
    BreakLocked(Status(cause.code(), cause.message() +
                                         "; the NCCL communicator was aborted and fails every "
                                         "later call"),
                culprit, wake);
    return;
  }
}

void Engine::CheckDeadlinesLocked(Wakeups* wake) {
  const Clock::time_point now = Clock::now();
  NcclOp* expired = nullptr;
  for (auto it = live_.begin(); it != live_.end();) {
    if ((*it)->done) {
      it = live_.erase(it);
      continue;
    }
    if (now >= (*it)->deadline && (expired == nullptr || (*it)->deadline < expired->deadline)) {
      expired = it->get();
    }
    ++it;
  }
  if (expired == nullptr) return;
  WaitStage stage = expired->connecting ? WaitStage::kConnecting : expired->stage;
  BreakLocked(
      DeadlineExceeded(nccl::TimeoutMessage(expired->label, stage, rank, size, expired->peer,
                                            expired->timeout_s, SecondsSince(expired->start))),
      expired, wake);
}

void Engine::Abandon(Lane& lane) {
  if (lane.current != nullptr) abandoned_.push_back(std::move(lane.current));
  lane.current.reset();
  for (auto& unit : lane.in_flight) abandoned_.push_back(std::move(unit));
  lane.in_flight.clear();
  for (auto& unit : lane.queue) abandoned_.push_back(std::move(unit));
  lane.queue.clear();
  lane.step = Step();
  lane.phase = Phase::kReady;
}

void Engine::BreakLocked(const Status& cause, NcclOp* culprit, Wakeups* wake) {
  if (!broken_.ok()) return;
  broken_ = cause;
  for (auto& lane : lanes_) {
    if (lane->comm != nullptr && !lane->aborted) {
      // Kernels waiting for peers exit; the calls below never complete.
      ncclCommAbort(lane->comm);
      lane->aborted = true;
    }
  }
  if (culprit != nullptr) FinishLocked(*culprit, cause, wake);
  for (auto& op : live_) {
    FinishLocked(*op,
                 FailedPrecondition(op->label +
                                    ": the NCCL communicator is unusable after an earlier "
                                    "failure (" +
                                    cause.message() + ")"),
                 wake);
  }
  live_.clear();
  // Work may still sit on the streams: its buffers stay until they drained.
  for (auto& lane : lanes_) Abandon(*lane);
  self_sends_.clear();
  for (auto& waiting : waiting_recvs) waiting.clear();
  for (auto& kept : stash) kept.clear();
}

bool Engine::LiveLocked() {
  for (auto it = live_.begin(); it != live_.end();) {
    if ((*it)->done) {
      it = live_.erase(it);
    } else {
      return true;
    }
  }
  return false;
}

Clock::duration Engine::NextWaitLocked() {
  if (!broken_.ok()) return kIdlePoll;
  Clock::duration wait = kIdlePoll;
  for (const auto& lane : lanes_) {
    if (lane->phase == Phase::kEnqueuing) {
      wait = std::min<Clock::duration>(wait, kEnqueuePoll);
    } else if (lane->busy()) {
      wait = std::min<Clock::duration>(wait, kBusyPoll);
    }
  }
  const Clock::time_point now = Clock::now();
  for (const auto& op : live_) {
    if (!op->done) wait = std::min<Clock::duration>(wait, op->deadline - now);
  }
  return std::max<Clock::duration>(wait, Clock::duration::zero());
}

void Engine::PassLocked(Wakeups* wake) {
  if (!broken_.ok()) return;
  CheckAsyncErrorLocked(wake);
  for (auto& lane : lanes_) {
    for (int i = 0; i < 4096 && broken_.ok() && AdvanceLocked(*lane, wake); ++i) {
    }
  }
  PollInFlightLocked(wake, /*on_thread=*/true);
  if (broken_.ok()) CheckDeadlinesLocked(wake);
}

void Engine::Run() {
  cudaSetDevice(device.index);
  Clock::duration wait = kIdlePoll;
  for (;;) {
    {
      std::unique_lock<std::mutex> lock(waker_->mu);
      waker_->cv.wait_for(lock, wait, [&] { return waker_->signaled; });
      waker_->signaled = false;
    }
    Wakeups wake;
    bool exit = false;
    {
      std::lock_guard<std::mutex> lock(mu);
      PassLocked(&wake);
      exit = stopping_ && !LiveLocked();
      wait = NextWaitLocked();
    }
    for (auto& w : wake) w();
    if (exit) return;
  }
}

void Engine::Shutdown() {
  {
    std::lock_guard<std::mutex> lock(mu);
    if (shut_down_ || stopping_) return;
    stopping_ = true;
  }
  waker_->Signal();
  // The thread ends once every call finished, each within its deadline.
  if (thread_.joinable()) thread_.join();

  std::lock_guard<std::mutex> lock(mu);
  shut_down_ = true;
  DeviceGuard guard(device.index);
  Wakeups wake;
  PollInFlightLocked(&wake, /*on_thread=*/true);
  // Units left (an invalid call's record gather its peers never joined) hold NCCL work that will
  // not finish: abort instead of finalizing.
  bool units_left = false;
  for (const auto& lane : lanes_) units_left = units_left || lane->busy();
  for (auto& lane : lanes_) {
    if (lane->comm == nullptr || lane->aborted) continue;
    bool finalized = false;
    if (broken_.ok() && !units_left) {
      // Flushes NCCL's work and waits for the peers' proxies; bounded like every call.
      ncclResult_t r = ncclCommFinalize(lane->comm);
      const Clock::time_point deadline = After(Clock::now(), options.timeout_s);
      while (r == ncclSuccess || r == ncclInProgress) {
        ncclResult_t state = ncclInProgress;
        r = ncclCommGetAsyncError(lane->comm, &state);
        if (r != ncclSuccess) break;
        if (state == ncclSuccess) {
          finalized = ncclCommDestroy(lane->comm) == ncclSuccess;
          break;
        }
        if (state != ncclInProgress || Clock::now() >= deadline) break;
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
      }
      if (!finalized) {
        LOG(WARNING) << "rank " << rank << ": finalizing the NCCL communicator (" << lane->name
                     << ") failed or timed out; aborting it";
      }
    }
    if (!finalized) ncclCommAbort(lane->comm);
    lane->aborted = true;
    lane->comm = nullptr;
  }
  for (auto& lane : lanes_) Abandon(*lane);
  // The buffers of work still on a stream must outlive it.
  const Clock::time_point drain_deadline = After(Clock::now(), kDrainSeconds);
  bool drained = true;
  for (auto& lane : lanes_) {
    cudaError_t state = cudaStreamQuery(lane->stream);
    while (state == cudaErrorNotReady && Clock::now() < drain_deadline) {
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
      state = cudaStreamQuery(lane->stream);
    }
    drained = drained && state != cudaErrorNotReady;
  }
  if (!drained) {
    LOG(WARNING) << "rank " << rank
                 << ": the NCCL communicator's streams did not drain; their buffers are leaked";
    new std::vector<std::shared_ptr<Unit>>(std::move(abandoned_));
    for (auto& kept : stash) {
      for (auto& [tag, queue] : kept) new std::deque<std::shared_ptr<Carried>>(std::move(queue));
    }
  }
  abandoned_.clear();
  for (auto& kept : stash) kept.clear();
  self_sends_.clear();
  for (auto& waiting : waiting_recvs) waiting.clear();
  cudaGetLastError();
  for (auto& lane : lanes_) {
    cudaStreamDestroy(lane->stream);
    lane->stream = nullptr;
  }
  for (auto& w : wake) w();
}

// ---------------------------------------------------------------------------------------------

bool NcclOp::Test() {
  if (finished.load(std::memory_order_acquire)) return true;
  engine_->Poll();
  return finished.load(std::memory_order_acquire);
}

Status NcclOp::Wait() {
  if (!finished.load(std::memory_order_acquire)) {
    AwaitCallback(
        [this](std::function<void()> done) { engine_->AddWaiter(*this, std::move(done)); });
  }
  // The acquire pairs with FinishLocked's release: status and results are visible from here.
  CHECK(finished.load(std::memory_order_acquire)) << label << ": woken before it finished";
  return status;
}

class NcclCommunicator : public comm::CollectiveBackend {
 public:
  NcclCommunicator(std::shared_ptr<Engine> engine, const CommOptions& options)
      : CollectiveBackend(options), engine_(std::move(engine)) {}
  ~NcclCommunicator() override { engine_->Shutdown(); }

  int rank() const override { return engine_->rank; }
  int size() const override { return engine_->size; }
  std::string backend() const override { return "nccl"; }

  CommHandle StartSend(const Tensor& t, int dst, int tag) override {
    return engine_->StartP2p(true, t, dst, tag, timeout_s());
  }
  CommHandle StartRecv(int src, int tag) override {
    return engine_->StartP2p(false, Tensor(), src, tag, timeout_s());
  }

 protected:
  CommHandle StartCollective(CollectiveCall call, const Tensor& t,
                             const std::vector<int64_t>& send_counts) override {
    return engine_->StartCollective(std::move(call), t, send_counts, timeout_s());
  }

 private:
  std::shared_ptr<Engine> engine_;
};

// ---------------------------------------------------------------------------------------------
// Creation.

int CudaDeviceCount(std::string* why) {
  int count = 0;
  cudaError_t error = cudaGetDeviceCount(&count);
  if (error != cudaSuccess) {
    *why = std::string(cudaGetErrorName(error)) + ": " + cudaGetErrorString(error);
    cudaGetLastError();
    return 0;
  }
  return count;
}

// Rank 0's ids (empty when it could not make them) to every rank of `carrier`, as a CPU tensor:
// a flag byte, then the ids.
StatusOr<std::string> ShareThrough(Communicator& carrier, const std::string& ids, size_t bytes) {
  Tensor t = Tensor::Zeros(DT_U8, {1 + static_cast<int64_t>(bytes)});
  if (carrier.rank() == 0 && ids.size() == bytes) {
    t.data<uint8_t>()[0] = 1;
    std::memcpy(t.data<uint8_t>() + 1, ids.data(), bytes);
  }
  WEIR_ASSIGN_OR_RETURN(Tensor got, carrier.Broadcast(t, 0, kBootstrapTag));
  Tensor dense = got.Contiguous();
  const uint8_t* data = dense.data<uint8_t>();
  if (data[0] != 1) return std::string();
  return std::string(reinterpret_cast<const char*>(data + 1), bytes);
}

// Initializes a nonblocking NCCL communicator and waits for it until `deadline`.
StatusOr<ncclComm_t> InitComm(const ncclUniqueId& id, int size, int rank, const char* name,
                              Clock::time_point start, Clock::time_point deadline, double timeout_s,
                              const std::string& who) {
  ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
  config.blocking = 0;  // every wait is ours, under a deadline
  config.commName = name;
  ncclComm_t comm = nullptr;
  ncclResult_t r = ncclCommInitRankConfig(&comm, size, id, rank, &config);
  auto fail = [&](Status s) {
    if (comm != nullptr) ncclCommAbort(comm);
    return s;
  };
  if (r != ncclSuccess && r != ncclInProgress) {
    return fail(NcclStatus(who + ": ncclCommInitRankConfig", r, comm));
  }
  for (int polls = 0;; ++polls) {
    ncclResult_t state = ncclInProgress;
    r = ncclCommGetAsyncError(comm, &state);
    if (r != ncclSuccess) state = r;
    if (state == ncclSuccess) return comm;
    if (state != ncclInProgress) return fail(NcclStatus(who, state, comm));
    if (Clock::now() >= deadline) {
      return fail(DeadlineExceeded(who + ": not all of the " + std::to_string(size) +
                                   " ranks joined within " + comm::Seconds(timeout_s) +
                                   " (gave up after " + nccl::Elapsed(SecondsSince(start)) + ")"));
    }
    std::this_thread::sleep_for(polls < 100 ? std::chrono::microseconds(100)
                                            : std::chrono::microseconds(2000));
  }
}

StatusOr<std::unique_ptr<Communicator>> Create(Communicator* carrier, const NcclOptions& options) {
  if (!(options.timeout_s > 0)) {
    return InvalidArgument("NCCL communicator: timeout_s must be a positive number of seconds");
  }
  const Clock::time_point start = Clock::now();
  const Clock::time_point deadline = After(start, options.timeout_s);
  WEIR_ASSIGN_OR_RETURN(LaunchInfo launch, DetectLaunch());
  nccl::BootstrapInputs in;
  in.launch = launch;
  in.device_option = options.device;
  in.device_count = CudaDeviceCount(&in.no_device_reason);
  if (carrier == nullptr) {
    // Reuse the process's world communicator (the MPI one under `weir run` and mpirun).
    Communicator* world = WorldCommunicator();
    if (world != nullptr && world->size() > 1 && world->size() == launch.world_size &&
        world->backend() != "nccl") {
      carrier = world;
    }
  }
  if (carrier != nullptr) {
    in.carrier_rank = carrier->rank();
    in.carrier_size = carrier->size();
    in.carrier_backend = carrier->backend();
  }
  WEIR_ASSIGN_OR_RETURN(nccl::BootstrapPlan plan, nccl::PlanBootstrap(in));
  const std::string who = "rank " + std::to_string(plan.rank) +
                          ": creating the NCCL communicator (" + plan.ToString() + ")";
  WEIR_ASSIGN_OR_RETURN(DeviceRuntime * runtime,
                        FindDeviceRuntime("cuda:" + std::to_string(plan.device)));
  if (runtime == nullptr) {
    return Internal(who + ": cuda:" + std::to_string(plan.device) + " has no device runtime");
  }
  DeviceGuard guard(plan.device);

  // Lane 0 (collectives, messages to higher ranks) and, with peers, lane 1 (messages to lower
  // ranks): one NCCL communicator each. Rank 0 makes their ids; an empty blob tells the others
  // that it could not.
  const int lanes = plan.size > 1 ? 2 : 1;
  const size_t id_bytes = NCCL_UNIQUE_ID_BYTES;
  std::vector<ncclUniqueId> ids(static_cast<size_t>(lanes));
  Status made;
  std::string blob;
  if (plan.rank == 0) {
    for (auto& id : ids) {
      ncclResult_t r = ncclGetUniqueId(&id);
      if (r != ncclSuccess) {
        made = NcclStatus(who + ": ncclGetUniqueId", r, nullptr);
        blob.clear();
        break;
      }
      blob.append(id.internal, id_bytes);
    }
  }
  switch (plan.exchange) {
    case nccl::IdExchange::kAlone:
      break;
    case nccl::IdExchange::kCommunicator: {
      auto shared = ShareThrough(*carrier, blob, id_bytes * lanes);
      if (!shared.ok()) return Status(shared.status()).Prepend(who + ": sharing the unique id");
      blob = *shared;
      break;
    }
    case nccl::IdExchange::kTcp: {
      RendezvousOptions rendezvous;
      rendezvous.host = plan.host;
      rendezvous.port = plan.port;
      rendezvous.rank = plan.rank;
      rendezvous.size = plan.size;
      rendezvous.timeout_s =
          std::max(0.001, std::chrono::duration<double>(deadline - Clock::now()).count());
      auto shared = ShareFromRankZero(rendezvous, blob);
      if (!shared.ok()) return Status(shared.status()).Prepend(who + ": sharing the unique id");
      blob = *shared;
      break;
    }
  }
  WEIR_RETURN_IF_ERROR(made);
  if (blob.size() != id_bytes * lanes) {
    return Unavailable(who + ": rank 0 could not make the NCCL unique id (its error says why)");
  }
  for (int i = 0; i < lanes; ++i)
    std::memcpy(ids[i].internal, blob.data() + i * id_bytes, id_bytes);

  std::vector<std::unique_ptr<Lane>> made_lanes;
  auto release = [&] {
    for (auto& lane : made_lanes) {
      if (lane->comm != nullptr) ncclCommAbort(lane->comm);
      if (lane->stream != nullptr) cudaStreamDestroy(lane->stream);
    }
  };
  int least = 0, greatest = 0;
  if (cudaError_t e = cudaDeviceGetStreamPriorityRange(&least, &greatest); e != cudaSuccess) {
    cudaGetLastError();
    return CudaStatus(who + ": cudaDeviceGetStreamPriorityRange", e);
  }
  const char* names[] = {"weir", "weir-down"};
  for (int i = 0; i < lanes; ++i) {
    auto lane = std::make_unique<Lane>();
    lane->name = names[i];
    // The highest priority: communication kernels get SMs before the compute they overlap.
    cudaError_t e = cudaStreamCreateWithPriority(&lane->stream, cudaStreamNonBlocking, greatest);
    if (e != cudaSuccess) {
      cudaGetLastError();
      release();
      return CudaStatus(who + ": creating its stream", e);
    }
    made_lanes.push_back(std::move(lane));
    auto comm = InitComm(ids[static_cast<size_t>(i)], plan.size, plan.rank, names[i], start,
                         deadline, options.timeout_s, who);
    if (!comm.ok()) {
      release();
      return comm.status();
    }
    made_lanes.back()->comm = *comm;
  }

  auto engine = std::make_shared<Engine>(plan.rank, plan.size, plan.device, runtime,
                                         std::move(made_lanes), options);
  engine->StartThread(engine);
  return std::unique_ptr<Communicator>(std::make_unique<NcclCommunicator>(engine, options));
}

}  // namespace

StatusOr<std::unique_ptr<Communicator>> MakeNcclCommunicator(const NcclOptions& options) {
  return Create(nullptr, options);
}

StatusOr<std::unique_ptr<Communicator>> MakeNcclCommunicator(Communicator& bootstrap,
                                                             const NcclOptions& options) {
  return Create(&bootstrap, options);
}

std::string NcclVersion() {
  int version = 0;
  if (ncclGetVersion(&version) != ncclSuccess) return "";
  // NCCL_VERSION(X, Y, Z) is X * 10000 + Y * 100 + Z from 2.9 on.
  return std::to_string(version / 10000) + "." + std::to_string(version % 10000 / 100) + "." +
         std::to_string(version % 100);
}

}  // namespace weir
