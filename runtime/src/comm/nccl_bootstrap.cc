#include "comm/nccl_bootstrap.h"

#include <algorithm>
#include <cstdio>
#include <limits>

namespace weir::nccl {

std::string BootstrapPlan::ToString() const {
  std::string s = "rank " + std::to_string(rank) + " of " + std::to_string(size) +
                  " on cuda:" + std::to_string(device);
  switch (exchange) {
    case IdExchange::kAlone:
      return s;
    case IdExchange::kCommunicator:
      return s + ", unique id through the bootstrap communicator";
    case IdExchange::kTcp:
      return s + ", unique id over TCP from " + host + ":" + std::to_string(port);
  }
  return s;
}

namespace {

StatusOr<int> ChooseDevice(const BootstrapInputs& in, const std::string& who) {
  if (in.device_count <= 0) {
    std::string why = in.no_device_reason.empty() ? "" : " (" + in.no_device_reason + ")";
    return Unavailable(
        who + ": the NCCL communicator needs a CUDA device and this process sees none" + why);
  }
  std::string visible = " (this process sees " + std::to_string(in.device_count) + " CUDA device" +
                        (in.device_count == 1 ? "" : "s") + ")";
  if (in.device_option >= 0) {
    if (in.device_option >= in.device_count) {
      return InvalidArgument(who + ": NcclOptions::device is " + std::to_string(in.device_option) +
                             ", but there is no cuda:" + std::to_string(in.device_option) +
                             visible);
    }
    return in.device_option;
  }
  // CUDA_VISIBLE_DEVICES set per rank (Slurm's gres, many launch scripts) leaves one device.
  if (in.device_count == 1) return 0;
  if (in.launch.local_rank >= in.device_count) {
    return InvalidArgument(who + ": local rank " + std::to_string(in.launch.local_rank) +
                           " has no GPU of its own" + visible +
                           "; start at most one rank per GPU on a host, or set "
                           "NcclOptions::device or CUDA_VISIBLE_DEVICES");
  }
  return in.launch.local_rank;
}

}  // namespace

StatusOr<BootstrapPlan> PlanBootstrap(const BootstrapInputs& in) {
  BootstrapPlan plan;
  std::string who = "NCCL communicator: " + in.launch.ToString();
  if (in.carrier_size > 0) {
    if (in.carrier_backend == "nccl") {
      return InvalidArgument(
          who +
          ": an NCCL communicator cannot carry the unique id of another (it moves device "
          "tensors); bootstrap through the MPI communicator or MASTER_ADDR/MASTER_PORT");
    }
    if (in.carrier_rank < 0 || in.carrier_rank >= in.carrier_size) {
      return InvalidArgument(who + ": the bootstrap communicator's rank " +
                             std::to_string(in.carrier_rank) + " is not in [0, " +
                             std::to_string(in.carrier_size) + ")");
    }
    plan.rank = in.carrier_rank;
    plan.size = in.carrier_size;
    plan.exchange = plan.size == 1 ? IdExchange::kAlone : IdExchange::kCommunicator;
    who = "NCCL communicator: rank " + std::to_string(plan.rank) + " of " +
          std::to_string(plan.size) + " (" + in.carrier_backend + " bootstrap)";
  } else {
    plan.rank = in.launch.rank;
    plan.size = in.launch.world_size;
    if (plan.size == 1) {
      plan.exchange = IdExchange::kAlone;
    } else if (!in.launch.master_addr.empty() && in.launch.master_port > 0) {
      plan.exchange = IdExchange::kTcp;
      plan.host = in.launch.master_addr;
      plan.port = in.launch.master_port;
    } else {
      std::string missing = in.launch.master_addr.empty() && in.launch.master_port == 0
                                ? "MASTER_ADDR and MASTER_PORT are not set"
                            : in.launch.master_addr.empty() ? "MASTER_ADDR is not set"
                                                            : "MASTER_PORT is not set";
      return FailedPrecondition(
          who + ": rank 0's NCCL unique id must reach every rank, but " + missing +
          " and no communicator was given to carry it. torchrun sets both; with srun or mpirun "
          "export MASTER_ADDR (rank 0's host) and MASTER_PORT (a free port), or pass a "
          "communicator: MakeNcclCommunicator(*mpi_communicator, options), or set the world "
          "communicator first (SetWorldCommunicator)");
    }
  }
  WEIR_ASSIGN_OR_RETURN(plan.device, ChooseDevice(in, who));
  return plan;
}

// ---------------------------------------------------------------------------------------------

Status CheckDeviceTensor(const Tensor& t, Device device, const std::string& where) {
  if (t.numel() == 0) return Status::Ok();  // nothing moves: where it lives does not matter
  if (t.device() != device) {
    if (t.device().type == DeviceType::kCpu) {
      // A copy here would hide a host round trip in every call and give device results for host
      // inputs; the caller knows better where the tensor should live.
      return InvalidArgument(where + "the tensor " + t.DebugString() + " is on " +
                             t.device().ToString() + "; the NCCL communicator moves tensors on " +
                             device.ToString() +
                             " (copy it there first, or use the MPI or local communicator for "
                             "host tensors)");
    }
    return InvalidArgument(where + "the tensor " + t.DebugString() + " is on " +
                           t.device().ToString() + ", but this communicator's GPU is " +
                           device.ToString());
  }
  if (!t.is_contiguous()) {
    return InvalidArgument(where + "the tensor " + t.DebugString() +
                           " is a strided view; the NCCL communicator moves dense device tensors "
                           "(make it contiguous on the device first)");
  }
  return Status::Ok();
}

Status ValidateCollective(const comm::CollectiveCall& call, const Tensor& t,
                          const std::vector<int64_t>& counts, int rank, int size, Device device) {
  return comm::Validate(call, t, counts, rank, size,
                        [device](const Tensor& tensor, const std::string& where) {
                          return CheckDeviceTensor(tensor, device, where);
                        });
}

Status ValidateSend(const Tensor& t, int dst, int tag, int rank, int size, Device device) {
  WEIR_RETURN_IF_ERROR(comm::ValidatePeer("send", dst, tag, rank, size));
  std::string where = "rank " + std::to_string(rank) + ": send (tag " + std::to_string(tag) +
                      ") to rank " + std::to_string(dst) + ": ";
  if (!t.defined()) return InvalidArgument(where + "no tensor given");
  WEIR_RETURN_IF_ERROR(CheckDeviceTensor(t, device, where));
  if (t.rank() > kMaxMessageDims) {
    return InvalidArgument(where + "sends take tensors of at most " +
                           std::to_string(kMaxMessageDims) + " dims, got " + t.DebugString());
  }
  return Status::Ok();
}

Status CheckRecords(const comm::CollectiveCall& mine, const std::vector<int64_t>& records, int rank,
                    int size) {
  using comm::CollectiveCall;
  CHECK_EQ(records.size(), static_cast<size_t>(size) * CollectiveCall::kSignatureLength);
  const std::string label = "rank " + std::to_string(rank) + ": " + mine.Label();
  for (int r = 0; r < size; ++r) {
    CollectiveCall::Signature s;
    std::copy_n(records.begin() + static_cast<int64_t>(r) * CollectiveCall::kSignatureLength,
                s.size(), s.begin());
    CollectiveCall peer = CollectiveCall::Decode(s);
    if (!peer.valid) {
      return InvalidArgument(label + ": rank " + std::to_string(r) +
                             " passed invalid arguments (its error says which)");
    }
    if (!mine.Matches(peer)) {
      return InvalidArgument("rank " + std::to_string(rank) + ": " + mine.Describe() +
                             " does not match rank " + std::to_string(r) + "'s " + peer.Describe());
    }
  }
  return Status::Ok();
}

// ---------------------------------------------------------------------------------------------

Header EncodeHeader(int sender, int tag, DataType dtype, const Shape& shape) {
  CHECK_LE(shape.size(), static_cast<size_t>(kMaxMessageDims));
  Header h{};
  h[0] = kHeaderMagic;
  h[1] = sender;
  h[2] = tag;
  h[3] = static_cast<int64_t>(dtype);
  h[4] = static_cast<int64_t>(shape.size());
  for (size_t d = 0; d < shape.size(); ++d) h[5 + d] = shape[d];
  return h;
}

StatusOr<MessageInfo> DecodeHeader(const int64_t* words, int expected_sender,
                                   const std::string& where) {
  auto bad = [&](const std::string& why) {
    return DataLoss(where + ": the message header from rank " + std::to_string(expected_sender) +
                    " is damaged (" + why +
                    "); the ranks disagree on the order of their sends and receives, or run "
                    "different versions of weir");
  };
  if (words[0] != kHeaderMagic) return bad("no weir header");
  if (words[1] != expected_sender) return bad("it names rank " + std::to_string(words[1]));
  if (words[2] < 0 || words[2] > std::numeric_limits<int>::max()) return bad("tag out of range");
  const auto& dtypes = AllDataTypes();
  auto dtype = static_cast<DataType>(words[3]);
  if (std::find(dtypes.begin(), dtypes.end(), dtype) == dtypes.end()) return bad("unknown dtype");
  if (words[4] < 0 || words[4] > kMaxMessageDims) return bad("dims out of range");
  MessageInfo info;
  info.sender = static_cast<int>(words[1]);
  info.tag = static_cast<int>(words[2]);
  info.dtype = dtype;
  // Bytes must fit in int64: a dim past 2^40 elements is damage, not a tensor.
  int64_t elements = 1;
  constexpr int64_t kMaxElements = int64_t{1} << 50;
  for (int64_t d = 0; d < words[4]; ++d) {
    int64_t dim = words[5 + d];
    if (dim < 0 || dim > kMaxElements) return bad("dim out of range");
    if (dim > 0 && elements > kMaxElements / dim) return bad("too many elements");
    elements *= dim;
    info.shape.push_back(dim);
  }
  return info;
}

// ---------------------------------------------------------------------------------------------

int64_t ChunkBegin(int64_t n, int parts, int j) {
  CHECK_GT(parts, 0);
  const int64_t q = n / parts, r = n % parts;
  // floor(n * j / parts) = q * j + floor(r * j / parts), and r * j < parts^2 fits.
  return q * j + (r * j) / parts;
}

std::vector<int64_t> Offsets(const std::vector<int64_t>& counts) {
  std::vector<int64_t> offsets(counts.size() + 1, 0);
  for (size_t j = 0; j < counts.size(); ++j) offsets[j + 1] = offsets[j] + counts[j];
  return offsets;
}

// ---------------------------------------------------------------------------------------------

std::string Elapsed(double seconds) {
  char text[32];
  std::snprintf(text, sizeof(text), "%.2f s", seconds);
  return text;
}

std::string TimeoutMessage(const std::string& label, WaitStage stage, int rank, int size, int peer,
                           double timeout_s, double elapsed_s) {
  const std::string within = " within " + comm::Seconds(timeout_s);
  const std::string peer_name =
      peer == rank ? "this rank (" + std::to_string(rank) + ")" : "rank " + std::to_string(peer);
  std::string what;
  switch (stage) {
    case WaitStage::kQueued:
      what = "an earlier call on this communicator did not finish" + within +
             ", so this one never started";
      break;
    case WaitStage::kConnecting:
      what = peer >= 0 ? "NCCL was still connecting to " + peer_name + within
                       : "NCCL was still connecting to the other ranks" + within;
      break;
    case WaitStage::kRecords:
    case WaitStage::kUncheckedData: {
      std::vector<int> others;
      for (int r = 0; r < size; ++r)
        if (r != rank) others.push_back(r);
      std::string who = others.size() <= 8
                            ? comm::RankList(others)
                            : "the other " + std::to_string(others.size()) + " ranks";
      if (stage == WaitStage::kUncheckedData) {
        what = "not all of " + who + " joined, or the data exchange did not finish," + within +
               " (calls are not checked against each other: NcclOptions::check_calls is off)";
      } else if (others.size() == 1) {
        what = who + " did not join" + within;
      } else {
        what = "not all of " + who + " joined" + within + " (NCCL cannot tell which did not)";
      }
      break;
    }
    case WaitStage::kCounts:
    case WaitStage::kData:
      what = "every rank joined, but the data exchange did not finish" + within;
      break;
    case WaitStage::kSend:
      what = peer_name + " did not receive" + within;
      break;
    case WaitStage::kRecv:
      what = peer_name + " did not send" + within;
      break;
    case WaitStage::kRecvData:
      what = "the message from " + peer_name + " did not arrive completely" + within;
      break;
  }
  return label + ": " + what + " (gave up after " + Elapsed(elapsed_s) +
         "); the NCCL communicator was aborted and fails every later call";
}

}  // namespace weir::nccl
