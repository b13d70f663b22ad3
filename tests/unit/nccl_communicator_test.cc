// The NCCL communicator's host-side logic (runtime/src/comm/nccl_bootstrap.h), on any machine:
// which ranks and GPU a process takes and how rank 0's unique id travels, what calls may be
// given, the point-to-point message header, the all-reduce's split of elements by rank, and
// what a timeout says. The GPU side is tests/gpu/nccl_test.cc.
#include <gtest/gtest.h>

#include <limits>

#include "comm/nccl_bootstrap.h"

namespace weir::nccl {
namespace {

using comm::CollectiveCall;
using comm::CollectiveKind;

const Device kCuda0{DeviceType::kCuda, 0};

LaunchInfo Launch(const std::string& launcher, int rank, int size, int local_rank = 0) {
  LaunchInfo info;
  info.launcher = launcher;
  info.rank = rank;
  info.world_size = size;
  info.local_rank = local_rank;
  return info;
}

BootstrapInputs Inputs(LaunchInfo launch, int device_count = 8) {
  BootstrapInputs in;
  in.launch = std::move(launch);
  in.device_count = device_count;
  return in;
}

// A tensor "on" a device without memory behind it: validation never reads the data.
Tensor OnDevice(DataType dtype, const Shape& shape, Device device = kCuda0) {
  size_t bytes = static_cast<size_t>(NumElements(shape)) * DataTypeSize(dtype);
  return Tensor::FromStorage(Storage::Wrap(nullptr, bytes, nullptr, device), dtype, shape);
}

bool Contains(const std::string& text, const std::string& part) {
  return text.find(part) != std::string::npos;
}

// --- Bootstrap.

TEST(NcclBootstrap, OneRankNeedsNoExchange) {
  auto plan = PlanBootstrap(Inputs(Launch("none", 0, 1), 1));
  ASSERT_TRUE(plan.ok()) << plan.status().ToString();
  EXPECT_EQ(plan->exchange, IdExchange::kAlone);
  EXPECT_EQ(plan->rank, 0);
  EXPECT_EQ(plan->size, 1);
  EXPECT_EQ(plan->device, 0);
  EXPECT_EQ(plan->ToString(), "rank 0 of 1 on cuda:0");
}

TEST(NcclBootstrap, TorchrunSharesOverTcpAndTakesTheLocalRanksGpu) {
  LaunchInfo launch = Launch("torchrun", 5, 8, 1);
  launch.master_addr = "10.0.0.1";
  launch.master_port = 29500;
  auto plan = PlanBootstrap(Inputs(launch, 4));
  ASSERT_TRUE(plan.ok()) << plan.status().ToString();
  EXPECT_EQ(plan->exchange, IdExchange::kTcp);
  EXPECT_EQ(plan->rank, 5);
  EXPECT_EQ(plan->size, 8);
  EXPECT_EQ(plan->device, 1);
  EXPECT_EQ(plan->host, "10.0.0.1");
  EXPECT_EQ(plan->port, 29500);
  EXPECT_EQ(plan->ToString(), "rank 5 of 8 on cuda:1, unique id over TCP from 10.0.0.1:29500");
}

TEST(NcclBootstrap, WithoutMasterAddressOrCarrierTheErrorSaysWhatToSet) {
  auto plan = PlanBootstrap(Inputs(Launch("openmpi", 2, 4, 2)));
  ASSERT_FALSE(plan.ok());
  EXPECT_EQ(plan.status().code(), StatusCode::kFailedPrecondition);
  const std::string& m = plan.status().message();
  EXPECT_TRUE(Contains(m, "rank 2 of 4 (local rank 2) from openmpi")) << m;
  EXPECT_TRUE(Contains(m, "MASTER_ADDR and MASTER_PORT are not set")) << m;
  EXPECT_TRUE(Contains(m, "MakeNcclCommunicator(*mpi_communicator")) << m;

  LaunchInfo half = Launch("slurm", 1, 2, 1);
  half.master_addr = "node0";
  plan = PlanBootstrap(Inputs(half));
  ASSERT_FALSE(plan.ok());
  EXPECT_TRUE(Contains(plan.status().message(), "MASTER_PORT is not set"))
      << plan.status().message();
}

TEST(NcclBootstrap, ACarrierCommunicatorWinsAndGivesTheRanks) {
  BootstrapInputs in = Inputs(Launch("openmpi", 3, 4, 3));
  in.launch.master_addr = "10.0.0.1";  // set, but the carrier is already connected
  in.launch.master_port = 29500;
  in.carrier_rank = 3;
  in.carrier_size = 4;
  in.carrier_backend = "mpi";
  auto plan = PlanBootstrap(in);
  ASSERT_TRUE(plan.ok()) << plan.status().ToString();
  EXPECT_EQ(plan->exchange, IdExchange::kCommunicator);
  EXPECT_EQ(plan->rank, 3);
  EXPECT_EQ(plan->size, 4);
  EXPECT_EQ(plan->device, 3);

  in.carrier_size = 1;
  in.carrier_rank = 0;
  plan = PlanBootstrap(in);
  ASSERT_TRUE(plan.ok()) << plan.status().ToString();
  EXPECT_EQ(plan->exchange, IdExchange::kAlone);

  in.carrier_size = 4;
  in.carrier_backend = "nccl";
  plan = PlanBootstrap(in);
  ASSERT_FALSE(plan.ok());
  EXPECT_TRUE(Contains(plan.status().message(), "cannot carry the unique id"))
      << plan.status().message();
}

TEST(NcclBootstrap, ChoosesTheGpu) {
  // One visible device (CUDA_VISIBLE_DEVICES per rank): it, whatever the local rank.
  auto plan = PlanBootstrap(Inputs(Launch("none", 0, 1, 0), 1));
  ASSERT_TRUE(plan.ok());
  BootstrapInputs in = Inputs(Launch("torchrun", 3, 4, 3), 1);
  in.launch.master_addr = "h";
  in.launch.master_port = 1;
  plan = PlanBootstrap(in);
  ASSERT_TRUE(plan.ok()) << plan.status().ToString();
  EXPECT_EQ(plan->device, 0);

  // More ranks on a host than GPUs.
  in.device_count = 2;
  plan = PlanBootstrap(in);
  ASSERT_FALSE(plan.ok());
  EXPECT_TRUE(Contains(plan.status().message(), "local rank 3 has no GPU of its own"))
      << plan.status().message();
  EXPECT_TRUE(Contains(plan.status().message(), "sees 2 CUDA devices")) << plan.status().message();

  // An explicit device wins, and must exist.
  in.device_option = 1;
  plan = PlanBootstrap(in);
  ASSERT_TRUE(plan.ok()) << plan.status().ToString();
  EXPECT_EQ(plan->device, 1);
  in.device_option = 2;
  plan = PlanBootstrap(in);
  ASSERT_FALSE(plan.ok());
  EXPECT_TRUE(Contains(plan.status().message(), "there is no cuda:2")) << plan.status().message();

  // No GPU at all: the CUDA runtime's reason.
  in.device_count = 0;
  in.no_device_reason = "cudaErrorNoDevice: no CUDA-capable device is detected";
  plan = PlanBootstrap(in);
  ASSERT_FALSE(plan.ok());
  EXPECT_EQ(plan.status().code(), StatusCode::kUnavailable);
  EXPECT_TRUE(Contains(plan.status().message(), "cudaErrorNoDevice")) << plan.status().message();
}

// --- What calls may be given.

TEST(NcclValidate, HostTensorsAreRefusedWithWhereTheyShouldBe) {
  auto call = CollectiveCall::Of(CollectiveKind::kAllReduce, 7);
  Status s = ValidateCollective(call, Tensor::Zeros(DT_F32, {4}), {}, 1, 2, kCuda0);
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_TRUE(Contains(s.message(), "rank 1: all_reduce (tag 7): the tensor f32[4] is on cpu:0"))
      << s.message();
  EXPECT_TRUE(Contains(s.message(), "moves tensors on cuda:0")) << s.message();

  s = ValidateCollective(call, OnDevice(DT_F32, {4}, {DeviceType::kCuda, 1}), {}, 1, 2, kCuda0);
  ASSERT_FALSE(s.ok());
  EXPECT_TRUE(Contains(s.message(), "is on cuda:1, but this communicator's GPU is cuda:0"))
      << s.message();

  EXPECT_TRUE(ValidateCollective(call, OnDevice(DT_F32, {4}), {}, 1, 2, kCuda0).ok());
  // Nothing moves for an empty tensor, wherever it is.
  EXPECT_TRUE(ValidateCollective(call, Tensor::Zeros(DT_F32, {0, 3}), {}, 1, 2, kCuda0).ok());
}

TEST(NcclValidate, StridedViewsAreRefused) {
  Tensor view = OnDevice(DT_F32, {2, 3}).Transpose(0, 1);
  auto call = CollectiveCall::Of(CollectiveKind::kAllGather, 0);
  Status s = ValidateCollective(call, view, {}, 0, 2, kCuda0);
  ASSERT_FALSE(s.ok());
  EXPECT_TRUE(Contains(s.message(), "strided view")) << s.message();
  s = ValidateSend(view, 1, 3, 0, 2, kCuda0);
  ASSERT_FALSE(s.ok());
  EXPECT_TRUE(Contains(s.message(), "rank 0: send (tag 3) to rank 1: the tensor")) << s.message();
}

TEST(NcclValidate, TheBackendsRulesHold) {
  auto bad = [](const Status& s, const std::string& part) {
    EXPECT_FALSE(s.ok()) << part;
    EXPECT_TRUE(Contains(s.message(), part)) << s.message();
  };
  bad(ValidateCollective(CollectiveCall::Of(CollectiveKind::kAllReduce, -1), OnDevice(DT_F32, {2}),
                         {}, 0, 2, kCuda0),
      "tags are >= 0");
  bad(ValidateCollective(CollectiveCall::Of(CollectiveKind::kAllReduce, 0), OnDevice(DT_U8, {2}),
                         {}, 0, 2, kCuda0),
      "not u8");
  bad(ValidateCollective(CollectiveCall::Of(CollectiveKind::kReduceScatter, 0),
                         OnDevice(DT_F32, {3, 2}), {}, 0, 2, kCuda0),
      "dim 0 must be a multiple of the 2 ranks");
  bad(ValidateCollective(CollectiveCall::Of(CollectiveKind::kAllToAllV, 0),
                         OnDevice(DT_F32, {3, 2}), {1, 1}, 0, 2, kCuda0),
      "send_counts sum to 2 rows but the tensor has 3");
  bad(ValidateCollective(CollectiveCall::Of(CollectiveKind::kAllToAllV, 0),
                         OnDevice(DT_F32, {3, 2}), {3}, 0, 2, kCuda0),
      "one per rank expected (2)");
  bad(ValidateCollective(CollectiveCall::Of(CollectiveKind::kBroadcast, 0, ReduceOp::kSum, 2),
                         OnDevice(DT_F32, {3}), {}, 0, 2, kCuda0),
      "root 2 is not a rank");
  bad(ValidateCollective(CollectiveCall::Of(CollectiveKind::kAllGather, 0),
                         OnDevice(DT_F32, Shape(9, 1)), {}, 0, 2, kCuda0),
      "at most 8 dims");
  bad(ValidateCollective(CollectiveCall::Of(CollectiveKind::kAllGather, 0), Tensor(), {}, 0, 2,
                         kCuda0),
      "no tensor given");
  EXPECT_TRUE(ValidateCollective(CollectiveCall::Of(CollectiveKind::kBarrier, 0), Tensor(), {}, 0,
                                 2, kCuda0)
                  .ok());
  EXPECT_TRUE(ValidateCollective(CollectiveCall::Of(CollectiveKind::kAllToAllV, 0),
                                 OnDevice(DT_BF16, {3, 2}), {0, 3}, 0, 2, kCuda0)
                  .ok());

  bad(ValidateSend(OnDevice(DT_F32, {2}), 2, 0, 0, 2, kCuda0), "no such rank");
  bad(ValidateSend(OnDevice(DT_F32, Shape(12, 1)), 1, 0, 0, 2, kCuda0), "at most 11 dims");
  EXPECT_TRUE(ValidateSend(OnDevice(DT_F32, Shape(11, 1)), 1, 0, 0, 2, kCuda0).ok());
  EXPECT_TRUE(ValidateSend(OnDevice(DT_F32, {2}), 0, 0, 0, 2, kCuda0).ok());  // to itself
}

std::vector<int64_t> Records(const std::vector<CollectiveCall>& calls) {
  std::vector<int64_t> records;
  for (const auto& c : calls) {
    auto s = c.Encode();
    records.insert(records.end(), s.begin(), s.end());
  }
  return records;
}

TEST(NcclValidate, RecordsThatDisagreeNameBothSides) {
  CollectiveCall mine = CollectiveCall::Of(CollectiveKind::kAllReduce, 3);
  mine.dtype = DT_F32;
  mine.shape = {4, 2};
  EXPECT_TRUE(CheckRecords(mine, Records({mine, mine, mine}), 1, 3).ok());

  CollectiveCall other = mine;
  other.dtype = DT_BF16;
  Status s = CheckRecords(mine, Records({mine, mine, other}), 1, 3);
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.message(),
            "rank 1: all_reduce sum (tag 3) of f32[4, 2] does not match rank 2's all_reduce sum "
            "(tag 3) of bf16[4, 2]");

  CollectiveCall invalid = mine;
  invalid.valid = false;
  invalid.shape.clear();
  s = CheckRecords(mine, Records({invalid, mine, mine}), 1, 3);
  ASSERT_FALSE(s.ok());
  EXPECT_TRUE(Contains(s.message(), "rank 0 passed invalid arguments")) << s.message();

  // all_to_all_v agrees on the rows' shape only.
  CollectiveCall a = CollectiveCall::Of(CollectiveKind::kAllToAllV, 0);
  a.dtype = DT_F32;
  a.shape = {5, 3};
  CollectiveCall b = a;
  b.shape = {0, 3};
  EXPECT_TRUE(CheckRecords(a, Records({a, b}), 0, 2).ok());
}

// --- Message headers.

TEST(NcclHeader, RoundTrips) {
  Header h = EncodeHeader(2, 77, DT_BF16, {3, 0, 5});
  auto info = DecodeHeader(h.data(), 2, "rank 0: receiving from rank 2");
  ASSERT_TRUE(info.ok()) << info.status().ToString();
  EXPECT_EQ(info->sender, 2);
  EXPECT_EQ(info->tag, 77);
  EXPECT_EQ(info->dtype, DT_BF16);
  EXPECT_EQ(info->shape, (Shape{3, 0, 5}));

  Header scalar = EncodeHeader(0, 0, DT_I64, {});
  info = DecodeHeader(scalar.data(), 0, "x");
  ASSERT_TRUE(info.ok());
  EXPECT_TRUE(info->shape.empty());

  Header widest = EncodeHeader(1, std::numeric_limits<int>::max(), DT_F32, Shape(11, 2));
  info = DecodeHeader(widest.data(), 1, "x");
  ASSERT_TRUE(info.ok());
  EXPECT_EQ(info->shape.size(), 11u);
}

TEST(NcclHeader, DamageIsDataLossNamingThePeer) {
  auto damaged = [](Header h, int sender, const std::string& why) {
    auto info = DecodeHeader(h.data(), sender, "rank 0: receiving from rank 1");
    ASSERT_FALSE(info.ok()) << why;
    EXPECT_EQ(info.status().code(), StatusCode::kDataLoss);
    EXPECT_TRUE(Contains(info.status().message(), "rank 0: receiving from rank 1"));
    EXPECT_TRUE(Contains(info.status().message(), why)) << info.status().message();
  };
  Header h = EncodeHeader(1, 5, DT_F32, {4});
  Header bad = h;
  bad[0] = 0;
  damaged(bad, 1, "no weir header");
  damaged(h, 3, "it names rank 1");
  bad = h;
  bad[3] = 12345;
  damaged(bad, 1, "unknown dtype");
  bad = h;
  bad[4] = 12;
  damaged(bad, 1, "dims out of range");
  bad = h;
  bad[5] = -1;
  damaged(bad, 1, "dim out of range");
  bad = EncodeHeader(1, 5, DT_F32, {int64_t{1} << 40, int64_t{1} << 40});
  damaged(bad, 1, "too many elements");
}

// --- Splits.

TEST(NcclSplit, ChunksAreFloorOfTheProportionAndCoverEverything) {
  for (int64_t n : {0, 1, 2, 5, 7, 1000, 1001}) {
    for (int parts : {1, 2, 3, 8}) {
      EXPECT_EQ(ChunkBegin(n, parts, 0), 0);
      EXPECT_EQ(ChunkBegin(n, parts, parts), n);
      for (int j = 0; j < parts; ++j) {
        EXPECT_EQ(ChunkBegin(n, parts, j), n * j / parts) << n << " " << parts << " " << j;
        EXPECT_LE(ChunkBegin(n, parts, j), ChunkBegin(n, parts, j + 1));
      }
    }
  }
  // No overflow where n * j would not fit.
  const int64_t huge = std::numeric_limits<int64_t>::max() - 3;
  EXPECT_EQ(ChunkBegin(huge, 1024, 1024), huge);
  EXPECT_EQ(ChunkBegin(huge, 1024, 512), huge / 2);
}

TEST(NcclSplit, Offsets) {
  EXPECT_EQ(Offsets({3, 0, 2}), (std::vector<int64_t>{0, 3, 3, 5}));
  EXPECT_EQ(Offsets({}), (std::vector<int64_t>{0}));
}

// --- Timeouts.

TEST(NcclTimeout, MessagesNameTheCallThePeerAndTheTime) {
  std::string m =
      TimeoutMessage("rank 1: recv (tag 5) from rank 0", WaitStage::kRecv, 1, 4, 0, 0.5, 0.5234);
  EXPECT_EQ(m,
            "rank 1: recv (tag 5) from rank 0: rank 0 did not send within 0.5 s (gave up after "
            "0.52 s); the NCCL communicator was aborted and fails every later call");

  m = TimeoutMessage("rank 0: send (tag 2) to rank 3", WaitStage::kSend, 0, 4, 3, 300, 300.01);
  EXPECT_TRUE(Contains(m, ": rank 3 did not receive within 300 s (gave up after 300.01 s)")) << m;

  m = TimeoutMessage("rank 0: recv (tag 9) from rank 0", WaitStage::kRecv, 0, 1, 0, 2, 2);
  EXPECT_TRUE(Contains(m, "this rank (0) did not send within 2 s")) << m;

  m = TimeoutMessage("rank 2: recv (tag 1) from rank 1", WaitStage::kRecvData, 2, 4, 1, 1, 1);
  EXPECT_TRUE(Contains(m, "the message from rank 1 did not arrive completely within 1 s")) << m;

  m = TimeoutMessage("rank 0: all_reduce (tag 7)", WaitStage::kRecords, 0, 2, -1, 5, 5.1);
  EXPECT_TRUE(Contains(m, "rank 0: all_reduce (tag 7): rank 1 did not join within 5 s")) << m;
  m = TimeoutMessage("rank 1: all_reduce (tag 7)", WaitStage::kRecords, 1, 4, -1, 5, 5.1);
  EXPECT_TRUE(Contains(m, "not all of ranks 0, 2 and 3 joined within 5 s (NCCL cannot tell which"))
      << m;
  m = TimeoutMessage("rank 1: barrier (tag 0)", WaitStage::kRecords, 1, 64, -1, 5, 5.1);
  EXPECT_TRUE(Contains(m, "not all of the other 63 ranks joined")) << m;

  m = TimeoutMessage("rank 1: all_gather (tag 0)", WaitStage::kData, 1, 4, -1, 5, 5);
  EXPECT_TRUE(Contains(m, "every rank joined, but the data exchange did not finish within 5 s"))
      << m;
  m = TimeoutMessage("rank 1: all_gather (tag 0)", WaitStage::kUncheckedData, 1, 2, -1, 5, 5);
  EXPECT_TRUE(Contains(m, "check_calls is off")) << m;
  m = TimeoutMessage("rank 1: all_gather (tag 0)", WaitStage::kQueued, 1, 2, -1, 5, 5);
  EXPECT_TRUE(Contains(m, "an earlier call on this communicator did not finish within 5 s")) << m;
  m = TimeoutMessage("rank 1: send (tag 0) to rank 0", WaitStage::kConnecting, 1, 2, 0, 5, 5);
  EXPECT_TRUE(Contains(m, "NCCL was still connecting to rank 0 within 5 s")) << m;
  for (WaitStage stage : {WaitStage::kCounts, WaitStage::kData, WaitStage::kRecords}) {
    EXPECT_TRUE(
        Contains(TimeoutMessage("x", stage, 0, 2, -1, 1, 1), "the NCCL communicator was aborted"));
  }
}

TEST(NcclTimeout, ElapsedHasTwoDecimals) {
  EXPECT_EQ(Elapsed(0), "0.00 s");
  EXPECT_EQ(Elapsed(0.516), "0.52 s");
  EXPECT_EQ(Elapsed(301.2), "301.20 s");
}

}  // namespace
}  // namespace weir::nccl
