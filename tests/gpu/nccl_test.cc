// The NCCL communicator on one GPU (weir/runtime/nccl_communicator.h): one rank on cuda:0 runs
// every collective and point-to-point call on device tensors, checked against what the host
// computes (comm::ReduceInOrder is the reduction every backend shares); the rank-order reduction
// kernel against the host's with many ranks' parts, bit for bit; deadlines that abort and name the
// call; refused host tensors; waiting inside a TBB task. Several ranks need several GPUs: the
// multi-rank paths run in the same code with peers, which these tests cannot reach.
#include <gtest/gtest.h>
#include <tbb/task_arena.h>
#include <tbb/task_group.h>

#include <chrono>
#include <cmath>
#include <cstring>
#include <random>
#include <thread>

#include "weir/testing/gpu.h"

#ifdef WEIR_HAVE_NCCL
#include "comm/collective.h"
#include "weir/device.h"
#include "weir/runtime/nccl_communicator.h"
#endif

namespace weir::testing {
namespace {

#ifndef WEIR_HAVE_NCCL

TEST(Nccl, NotBuilt) {
  WEIR_REQUIRE_GPU();
  GTEST_SKIP() << "weir was built without NCCL (weir_comm_nccl)";
}

#else

DeviceRuntime* Cuda0() {
  auto runtime = FindDeviceRuntime("cuda:0");
  EXPECT_TRUE(runtime.ok()) << runtime.status().ToString();
  return runtime.ok() ? *runtime : nullptr;
}

// Host tensor -> a fresh dense tensor on cuda:0, finished before it returns (the communicator's
// inputs must be ready when a call starts).
Tensor ToDevice(const Tensor& host_tensor) {
  DeviceRuntime* d = Cuda0();
  Tensor host = host_tensor.Contiguous();
  auto stream = d->AcquireStream();
  EXPECT_TRUE(stream.ok()) << stream.status().ToString();
  auto storage = d->Allocate(host.nbytes(), *stream);
  EXPECT_TRUE(storage.ok()) << storage.status().ToString();
  Tensor t = Tensor::FromStorage(*storage, host.dtype(), host.shape());
  EXPECT_TRUE(d->CopyToDevice(t.raw_data(), host.raw_data(), host.nbytes(), *stream).ok());
  EXPECT_TRUE(d->Synchronize(*stream).ok());
  d->ReleaseStream(*stream);
  return t;
}

Tensor ToHost(const Tensor& device_tensor) {
  DeviceRuntime* d = Cuda0();
  Tensor host = Tensor::Empty(device_tensor.dtype(), device_tensor.shape());
  auto stream = d->AcquireStream();
  EXPECT_TRUE(stream.ok());
  EXPECT_TRUE(
      d->CopyToHost(host.raw_data(), device_tensor.raw_data(), host.nbytes(), *stream).ok());
  EXPECT_TRUE(d->Synchronize(*stream).ok());
  d->ReleaseStream(*stream);
  return host;
}

bool SameBytes(const Tensor& a, const Tensor& b) {
  return a.dtype() == b.dtype() && a.shape() == b.shape() &&
         std::memcmp(a.raw_data(), b.raw_data(), a.nbytes()) == 0;
}

bool Contains(const std::string& text, const std::string& part) {
  return text.find(part) != std::string::npos;
}

// Values with the edge cases reductions must keep: signed zeros, infinities, NaN (floats), and
// the extremes where integer sums wrap.
Tensor Values(DataType dtype, const Shape& shape, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<double> uniform(-100, 100);
  const int64_t n = NumElements(shape);
  std::vector<double> v(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) v[static_cast<size_t>(i)] = std::round(uniform(rng) * 64) / 64;
  const bool floating = IsFloating(dtype);
  const double specials_float[] = {0.0, -0.0, INFINITY, -INFINITY, NAN, 1e-3};
  const double specials_int[] = {0, -1, 2147483647.0, -2147483648.0};
  for (int64_t i = 0; i < n; i += 97) {
    v[static_cast<size_t>(i)] =
        floating ? specials_float[(i / 97) % 6] : specials_int[(i / 97) % 4];
  }
  return Tensor::FromValues(dtype, shape, v);
}

// The host's rank-order reduction of `parts` (each of `shape`).
Tensor HostReduce(DataType dtype, ReduceOp op, const std::vector<Tensor>& parts) {
  std::vector<const void*> raw;
  for (const auto& p : parts) raw.push_back(p.raw_data());
  Tensor out = Tensor::Empty(dtype, parts[0].shape());
  comm::ReduceInOrder(dtype, op, raw, out.numel(), out.raw_data());
  return out;
}

// Element i of both as double: equal, or both NaN (NaN payloads of sums differ between CPUs and
// GPUs; comm::ReduceInOrder documents bitwise results for everything else).
void ExpectSameOrBothNan(const Tensor& want, const Tensor& got, const std::string& what) {
  ASSERT_EQ(want.shape(), got.shape()) << what;
  ASSERT_EQ(want.dtype(), got.dtype()) << what;
  const size_t es = DataTypeSize(want.dtype());
  int reported = 0;
  for (int64_t i = 0; i < want.numel() && reported < 5; ++i) {
    const char* a = static_cast<const char*>(want.raw_data()) + i * es;
    const char* b = static_cast<const char*>(got.raw_data()) + i * es;
    if (std::memcmp(a, b, es) == 0) continue;
    double x = LoadAsDouble(want.raw_data(), want.dtype(), i);
    double y = LoadAsDouble(got.raw_data(), got.dtype(), i);
    if (std::isnan(x) && std::isnan(y)) continue;
    ADD_FAILURE() << what << ": element " << i << ": want " << x << ", got " << y;
    ++reported;
  }
}

std::unique_ptr<Communicator> MakeOneRank(NcclOptions options = {}) {
  // A local communicator of one rank carries the unique id, whatever the environment's launcher
  // variables say.
  auto bootstrap = MakeLocalCommunicators(1);
  options.device = 0;
  auto made = MakeNcclCommunicator(*bootstrap[0], options);
  EXPECT_TRUE(made.ok()) << made.status().ToString();
  return made.ok() ? std::move(*made) : nullptr;
}

const DataType kReducible[] = {DT_F32, DT_BF16, DT_F16, DT_F64, DT_I32, DT_I64};

TEST(Nccl, CreatesOneRankOnCuda0) {
  WEIR_REQUIRE_GPU();
  auto comm = MakeOneRank();
  ASSERT_NE(comm, nullptr);
  EXPECT_EQ(comm->backend(), "nccl");
  EXPECT_EQ(comm->rank(), 0);
  EXPECT_EQ(comm->size(), 1);
  EXPECT_FALSE(NcclVersion().empty());
  EXPECT_TRUE(comm->Barrier(3).ok());
}

TEST(Nccl, ReduceRanksOnDeviceIsTheHostsReductionBitForBit) {
  WEIR_REQUIRE_GPU();
  DeviceRuntime* d = Cuda0();
  ASSERT_NE(d, nullptr);
  auto stream = d->AcquireStream();
  ASSERT_TRUE(stream.ok());
  for (DataType dtype : kReducible) {
    for (ReduceOp op : {ReduceOp::kSum, ReduceOp::kMax}) {
      // Several blocks' worth, not a multiple of the block size, and a single element.
      for (int64_t n : {int64_t{1}, int64_t{5003}, int64_t{70001}}) {
        for (int count : {1, 2, 3, 8}) {
          const int64_t stride = n + 5;  // parts need not touch
          std::vector<Tensor> parts;
          Tensor packed = Tensor::Zeros(dtype, {count, stride});
          for (int r = 0; r < count; ++r) {
            parts.push_back(Values(dtype, {n}, 1000u * count + 7u * r + static_cast<uint32_t>(n)));
            std::memcpy(static_cast<char*>(packed.raw_data()) + r * stride * DataTypeSize(dtype),
                        parts.back().raw_data(), parts.back().nbytes());
          }
          Tensor device_parts = ToDevice(packed);
          auto out_storage = d->Allocate(static_cast<size_t>(n) * DataTypeSize(dtype), *stream);
          ASSERT_TRUE(out_storage.ok());
          Tensor out = Tensor::FromStorage(*out_storage, dtype, {n});
          Status s = ReduceRanksOnDevice(dtype, op, device_parts.raw_data(), stride, count, n,
                                         out.raw_data(), *stream);
          ASSERT_TRUE(s.ok()) << s.ToString();
          ASSERT_TRUE(d->Synchronize(*stream).ok());
          std::string what = std::string(DataTypeName(dtype)) + " " + ReduceOpName(op) +
                             " n=" + std::to_string(n) + " parts=" + std::to_string(count);
          Tensor want = HostReduce(dtype, op, parts);
          if (op == ReduceOp::kMax || dtype == DT_F16 || !IsFloating(dtype)) {
            // No NaN arithmetic: every bit agrees (f16 narrows every NaN to one pattern).
            EXPECT_TRUE(SameBytes(want, ToHost(out))) << what;
          } else {
            ExpectSameOrBothNan(want, ToHost(out), what);
          }
        }
      }
    }
  }
  d->ReleaseStream(*stream);
}

TEST(Nccl, AllReduceMatchesTheHostInBothReductionModes) {
  WEIR_REQUIRE_GPU();
  for (NcclReduction mode : {NcclReduction::kRankOrder, NcclReduction::kNccl}) {
    NcclOptions options;
    options.reduction = mode;
    auto comm = MakeOneRank(options);
    ASSERT_NE(comm, nullptr);
    for (DataType dtype : kReducible) {
      for (ReduceOp op : {ReduceOp::kSum, ReduceOp::kMax}) {
        for (const Shape& shape : {Shape{1}, Shape{1000}, Shape{3, 5, 7}, Shape{}, Shape{0, 4}}) {
          Tensor host = Values(dtype, shape, 11);
          auto got = comm->AllReduce(ToDevice(host), op, 5);
          std::string what = std::string(DataTypeName(dtype)) + " " + ReduceOpName(op) + " " +
                             ShapeString(shape) +
                             (mode == NcclReduction::kNccl ? " (NCCL's)" : " (rank order)");
          ASSERT_TRUE(got.ok()) << what << ": " << got.status().ToString();
          EXPECT_EQ(got->device(), (Device{DeviceType::kCuda, 0})) << what;
          // One rank: the reduction of one part, through the same accumulator.
          ExpectSameOrBothNan(HostReduce(dtype, op, {host}), ToHost(*got), what);
        }
      }
    }
  }
}

TEST(Nccl, GatherScatterBroadcastAndBarrier) {
  WEIR_REQUIRE_GPU();
  for (bool check_calls : {true, false}) {
    NcclOptions options;
    options.check_calls = check_calls;
    auto comm = MakeOneRank(options);
    ASSERT_NE(comm, nullptr);
    Tensor bytes = Tensor::Empty(DT_U8, {3, 4});
    for (int i = 0; i < 12; ++i) bytes.data<uint8_t>()[i] = static_cast<uint8_t>(37 * i + 1);
    for (DataType dtype : {DT_F32, DT_BF16, DT_I64, DT_U8}) {
      // Values() is for the reducible dtypes; bytes move as they are.
      Tensor host = dtype == DT_U8 ? bytes : Values(dtype, {3, 4}, 3);
      auto gathered = comm->AllGather(ToDevice(host), 1);
      ASSERT_TRUE(gathered.ok()) << gathered.status().ToString();
      EXPECT_TRUE(SameBytes(host, ToHost(*gathered))) << DataTypeName(dtype);

      auto broadcast = comm->Broadcast(ToDevice(host), 0, 2);
      ASSERT_TRUE(broadcast.ok()) << broadcast.status().ToString();
      EXPECT_TRUE(SameBytes(host, ToHost(*broadcast))) << DataTypeName(dtype);
    }
    Tensor scalar = Tensor::Full(DT_F32, {}, 2.5);
    auto gathered = comm->AllGather(ToDevice(scalar));
    ASSERT_TRUE(gathered.ok()) << gathered.status().ToString();
    EXPECT_EQ(gathered->shape(), (Shape{1}));
    EXPECT_EQ(ToHost(*gathered).At(0), 2.5);

    Tensor rows = Values(DT_F32, {4, 2}, 4);
    auto scattered = comm->ReduceScatter(ToDevice(rows), ReduceOp::kSum, 9);
    ASSERT_TRUE(scattered.ok()) << scattered.status().ToString();
    ExpectSameOrBothNan(HostReduce(DT_F32, ReduceOp::kSum, {rows}), ToHost(*scattered),
                        "reduce_scatter");
    EXPECT_TRUE(comm->Barrier().ok());
  }
}

TEST(Nccl, AllToAllVMovesRowsAndCounts) {
  WEIR_REQUIRE_GPU();
  auto comm = MakeOneRank();
  ASSERT_NE(comm, nullptr);
  Tensor rows = Values(DT_BF16, {5, 3}, 8);
  auto moved = comm->AllToAllV(ToDevice(rows), {5}, 4);
  ASSERT_TRUE(moved.ok()) << moved.status().ToString();
  EXPECT_EQ(moved->recv_counts, (std::vector<int64_t>{5}));
  EXPECT_TRUE(SameBytes(rows, ToHost(moved->tensor)));

  Tensor none = Tensor::Zeros(DT_F32, {0, 3});
  moved = comm->AllToAllV(ToDevice(none), {0});
  ASSERT_TRUE(moved.ok()) << moved.status().ToString();
  EXPECT_EQ(moved->recv_counts, (std::vector<int64_t>{0}));
  EXPECT_EQ(moved->tensor.shape(), (Shape{0, 3}));
}

TEST(Nccl, SendAndRecvToItselfMatchByTag) {
  WEIR_REQUIRE_GPU();
  auto comm = MakeOneRank();
  ASSERT_NE(comm, nullptr);
  Tensor a = Values(DT_F32, {2, 3}, 1);
  Tensor b = Values(DT_BF16, {7}, 2);
  Tensor empty = Tensor::Zeros(DT_I32, {0});
  // Started in one order, received in another: tags decide.
  CommHandle send_a = comm->StartSend(ToDevice(a), 0, 1);
  CommHandle send_b = comm->StartSend(ToDevice(b), 0, 2);
  CommHandle send_empty = comm->StartSend(ToDevice(empty), 0, 3);
  CommHandle recv_b = comm->StartRecv(0, 2);
  CommHandle recv_empty = comm->StartRecv(0, 3);
  CommHandle recv_a = comm->StartRecv(0, 1);
  for (CommHandle* h : {&recv_a, &recv_b, &recv_empty, &send_a, &send_b, &send_empty}) {
    Status s = h->Wait();
    EXPECT_TRUE(s.ok()) << s.ToString();
  }
  EXPECT_TRUE(SameBytes(a, ToHost(recv_a.result())));
  EXPECT_TRUE(SameBytes(b, ToHost(recv_b.result())));
  EXPECT_EQ(recv_empty.result().shape(), (Shape{0}));
  EXPECT_EQ(recv_empty.result().dtype(), DT_I32);

  // A recv started before its send.
  CommHandle late = comm->StartRecv(0, 8);
  EXPECT_FALSE(late.Test());
  CommHandle send = comm->StartSend(ToDevice(a), 0, 8);
  Status sent = send.Wait();
  EXPECT_TRUE(sent.ok()) << sent.ToString();
  Status got = late.Wait();
  ASSERT_TRUE(got.ok()) << got.ToString();
  EXPECT_TRUE(SameBytes(a, ToHost(late.result())));
}

TEST(Nccl, ManyCallsInFlightFinishInAnyWaitOrder) {
  WEIR_REQUIRE_GPU();
  auto comm = MakeOneRank();
  ASSERT_NE(comm, nullptr);
  std::vector<Tensor> inputs;
  std::vector<CommHandle> handles;
  for (int i = 0; i < 12; ++i) {
    inputs.push_back(Values(DT_F32, {1 + 977 * i}, static_cast<uint32_t>(i)));
    Tensor on_device = ToDevice(inputs.back());
    handles.push_back(i % 3 == 2 ? comm->StartAllGather(on_device, i)
                                 : comm->StartAllReduce(on_device, ReduceOp::kSum, i));
  }
  for (int i = 11; i >= 0; --i) {
    Status s = handles[static_cast<size_t>(i)].Wait();
    ASSERT_TRUE(s.ok()) << i << ": " << s.ToString();
    ExpectSameOrBothNan(inputs[static_cast<size_t>(i)],
                        ToHost(handles[static_cast<size_t>(i)].result()), std::to_string(i));
  }
  // Test() polls until done.
  CommHandle last = comm->StartAllReduce(ToDevice(inputs[3]), ReduceOp::kMax, 99);
  auto until = std::chrono::steady_clock::now() + std::chrono::seconds(30);
  while (!last.Test() && std::chrono::steady_clock::now() < until) {
    std::this_thread::sleep_for(std::chrono::microseconds(50));
  }
  EXPECT_TRUE(last.Test());
  EXPECT_TRUE(last.Wait().ok());
}

TEST(Nccl, WaitInsideATbbTaskDoesNotBlockTheWorker) {
  WEIR_REQUIRE_GPU();
  auto comm = MakeOneRank();
  ASSERT_NE(comm, nullptr);
  Tensor host = Values(DT_F32, {4096}, 5);
  Tensor input = ToDevice(host);
  tbb::task_arena one(1);
  Status waited = Internal("not run");
  Tensor result;
  one.execute([&] {
    tbb::task_group group;
    group.run([&] {
      CommHandle h = comm->StartAllReduce(input, ReduceOp::kSum, 1);
      waited = h.Wait();
      result = h.result();
    });
    group.wait();
  });
  ASSERT_TRUE(waited.ok()) << waited.ToString();
  ExpectSameOrBothNan(host, ToHost(result), "inside a task");
}

TEST(Nccl, HostTensorsAndStridedViewsAreRefusedAndTheCommunicatorGoesOn) {
  WEIR_REQUIRE_GPU();
  auto comm = MakeOneRank();
  ASSERT_NE(comm, nullptr);
  auto host = comm->AllReduce(Tensor::Full(DT_F32, {4}, 1), ReduceOp::kSum, 7);
  ASSERT_FALSE(host.ok());
  EXPECT_EQ(host.status().code(), StatusCode::kInvalidArgument);
  EXPECT_TRUE(Contains(host.status().message(),
                       "rank 0: all_reduce (tag 7): the tensor f32[4] is "
                       "on cpu:0; the NCCL communicator moves tensors on "
                       "cuda:0"))
      << host.status().message();

  Tensor view = ToDevice(Values(DT_F32, {2, 3}, 6)).Transpose(0, 1);
  Status s = comm->Send(view, 0, 1);
  ASSERT_FALSE(s.ok());
  EXPECT_TRUE(Contains(s.message(), "strided view")) << s.message();

  // The refused call told its (absent) peers through the record gather; the next call works.
  Tensor ones = Tensor::Full(DT_F32, {4}, 1);
  auto fine = comm->AllReduce(ToDevice(ones), ReduceOp::kSum, 8);
  ASSERT_TRUE(fine.ok()) << fine.status().ToString();
  EXPECT_TRUE(SameBytes(ones, ToHost(*fine)));
}

TEST(Nccl, ARecvThatNeverGetsItsMessageTimesOutAndAborts) {
  WEIR_REQUIRE_GPU();
  auto comm = MakeOneRank();
  ASSERT_NE(comm, nullptr);
  comm->set_timeout_s(0.5);
  auto start = std::chrono::steady_clock::now();
  CommHandle recv = comm->StartRecv(0, 9);
  Status s = recv.Wait();
  double waited = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.code(), StatusCode::kDeadlineExceeded);
  EXPECT_TRUE(Contains(s.message(),
                       "rank 0: recv (tag 9) from rank 0: this rank (0) did not send "
                       "within 0.5 s (gave up after 0."))
      << s.message();
  EXPECT_TRUE(Contains(s.message(), "aborted")) << s.message();
  EXPECT_GE(waited, 0.5);
  EXPECT_LT(waited, 10);

  // Every later call fails at once, naming the first failure.
  auto after = comm->AllReduce(ToDevice(Tensor::Full(DT_F32, {2}, 1)), ReduceOp::kSum);
  ASSERT_FALSE(after.ok());
  EXPECT_EQ(after.status().code(), StatusCode::kFailedPrecondition);
  EXPECT_TRUE(Contains(after.status().message(), "unusable")) << after.status().message();
  EXPECT_TRUE(Contains(after.status().message(), "recv (tag 9)")) << after.status().message();
}

TEST(Nccl, ASendNobodyReceivesTimesOut) {
  WEIR_REQUIRE_GPU();
  auto comm = MakeOneRank();
  ASSERT_NE(comm, nullptr);
  comm->set_timeout_s(0.3);
  CommHandle send = comm->StartSend(ToDevice(Tensor::Full(DT_F32, {2}, 1)), 0, 4);
  Status s = send.Wait();
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.code(), StatusCode::kDeadlineExceeded);
  EXPECT_TRUE(Contains(
      s.message(), "rank 0: send (tag 4) to rank 0: this rank (0) did not receive within 0.3 s"))
      << s.message();
}

#endif  // WEIR_HAVE_NCCL

}  // namespace
}  // namespace weir::testing
