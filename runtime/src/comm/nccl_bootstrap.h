// The host-side pieces of the NCCL communicator (weir/runtime/nccl_communicator.h) that need
// neither a GPU nor NCCL, kept apart so that the unit tests check them on any machine: how rank 0's
// unique id reaches the others and which GPU a rank takes, what a call may be given, how a
// point-to-point message describes itself, how an all-reduce splits its elements by rank, and
// what a timeout says.
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <vector>

#include "comm/collective.h"
#include "weir/runtime/launch.h"

namespace weir::nccl {

// ---------------------------------------------------------------------------------------------
// Bootstrap: every rank must pass rank 0's ncclUniqueId to ncclCommInitRank.

enum class IdExchange {
  kAlone,         // one rank: nothing to share
  kCommunicator,  // broadcast through another weir communicator (the MPI one under mpirun)
  kTcp,           // weir/runtime/rendezvous.h at MASTER_ADDR:MASTER_PORT
};

struct BootstrapInputs {
  LaunchInfo launch;  // DetectLaunch()
  // A communicator that can carry the id (given by the caller, or the world communicator), or
  // size 0 for none.
  int carrier_rank = 0;
  int carrier_size = 0;
  std::string carrier_backend;
  int device_option = -1;  // NcclOptions::device
  int device_count = 0;    // CUDA devices this process sees
  std::string no_device_reason;
};

struct BootstrapPlan {
  IdExchange exchange = IdExchange::kAlone;
  int rank = 0;
  int size = 1;
  int device = 0;  // cuda:device
  std::string host;
  int port = 0;
  // "rank 1 of 4 on cuda:1, unique id over TCP from 10.0.0.1:29500"
  std::string ToString() const;
};

// Which ranks, which GPU and which way the id travels. The carrier wins over MASTER_ADDR (it is
// already connected); one rank needs nothing; otherwise MASTER_ADDR and MASTER_PORT must be set.
// The GPU: device_option when >= 0, else the only GPU a process sees (CUDA_VISIBLE_DEVICES set
// per rank), else the launcher's local rank.
StatusOr<BootstrapPlan> PlanBootstrap(const BootstrapInputs& in);

// ---------------------------------------------------------------------------------------------
// What calls may be given.

// `t` lives on `device`, densely. A tensor without elements passes wherever it is.
Status CheckDeviceTensor(const Tensor& t, Device device, const std::string& where);
// comm::Validate's rules for device tensors on `device`. Messages start "rank R: LABEL: ".
Status ValidateCollective(const comm::CollectiveCall& call, const Tensor& t,
                          const std::vector<int64_t>& counts, int rank, int size, Device device);
Status ValidateSend(const Tensor& t, int dst, int tag, int rank, int size, Device device);

// Every rank's call record (CollectiveCall::Encode, one after the other in rank order): OK when
// they form one operation with `mine`, else a message naming both sides (as the MPI backend's).
Status CheckRecords(const comm::CollectiveCall& mine, const std::vector<int64_t>& records, int rank,
                    int size);

// ---------------------------------------------------------------------------------------------
// Point-to-point messages: NCCL has no tags and the receiver must know the size, so every message
// is a fixed-size header (sent first) and then the data.

constexpr int kHeaderWords = 16;
constexpr int kMaxMessageDims = kHeaderWords - 5;
constexpr int64_t kHeaderMagic = 0x7765697250327032;  // "weirP2p2"
using Header = std::array<int64_t, kHeaderWords>;

struct MessageInfo {
  int sender = 0;
  int tag = 0;
  DataType dtype = DT_F32;
  Shape shape;
};

// CHECK-fails beyond kMaxMessageDims dims (ValidateSend refuses those).
Header EncodeHeader(int sender, int tag, DataType dtype, const Shape& shape);
// A header that did not come from `expected_sender`'s EncodeHeader is DataLoss naming `where`.
StatusOr<MessageInfo> DecodeHeader(const int64_t* words, int expected_sender,
                                   const std::string& where);

// ---------------------------------------------------------------------------------------------
// Work split by rank.

// The first of the elements part j of `parts` holds when n elements split as evenly as possible:
// floor(n * j / parts), without overflow. ChunkBegin(n, parts, parts) == n.
int64_t ChunkBegin(int64_t n, int parts, int j);
// offsets[j] = counts[0] + … + counts[j - 1]; offsets has counts.size() + 1 entries.
std::vector<int64_t> Offsets(const std::vector<int64_t>& counts);

// ---------------------------------------------------------------------------------------------
// Deadlines.

// What a call was waiting for when its deadline passed.
enum class WaitStage {
  kQueued,         // behind an earlier call of this communicator
  kConnecting,     // NCCL still setting up its connections for the call
  kRecords,        // the record gather: every rank's call
  kCounts,         // all_to_all_v: the row counts
  kData,           // a checked collective's data
  kUncheckedData,  // a collective without the record gather (check_calls off)
  kSend,           // a send: the receiver has not taken it
  kRecv,           // a recv: nothing came with its tag
  kRecvData,       // a recv: the header came, the data did not finish
};

// "0.52 s": elapsed time with two decimals.
std::string Elapsed(double seconds);

// The message of a call whose deadline passed, naming the operation (label: "rank 1: recv (tag
// 5) from rank 0"), what it waited for, the peer where there is one, the timeout and the time
// it waited, and that the communicator is now unusable.
std::string TimeoutMessage(const std::string& label, WaitStage stage, int rank, int size, int peer,
                           double timeout_s, double elapsed_s);

}  // namespace weir::nccl
