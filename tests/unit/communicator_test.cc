// The in-process communicator (virtual ranks on threads) and launch detection. Expected values are
// computed here from the inputs: rank-order sums with the accumulator the header promises, closed
// forms for exact integer inputs, and concatenations and row routings built element by element.
#include "weir/runtime/communicator.h"

#include <gtest/gtest.h>

#include <chrono>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <latch>
#include <map>
#include <optional>
#include <thread>

#include "weir/half.h"
#include "weir/runtime/launch.h"

namespace weir {
namespace {

using Comms = std::vector<std::unique_ptr<Communicator>>;

// Runs body(comm) for every rank, each on its own thread, and waits for all.
void OnRanks(Comms& comms, const std::function<void(Communicator&)>& body) {
  std::vector<std::thread> threads;
  for (auto& c : comms) threads.emplace_back([&body, comm = c.get()] { body(*comm); });
  for (auto& t : threads) t.join();
}

// Irregular values of varied magnitude, so that the order of a floating-point sum matters.
double Value(int rank, int64_t i) {
  return std::sin(0.7 + 1.3 * rank + 0.37 * static_cast<double>(i)) * (1 + rank * rank) * 3.1;
}

Tensor RankTensor(DataType dtype, const Shape& shape, int rank) {
  std::vector<double> v(NumElements(shape));
  for (size_t i = 0; i < v.size(); ++i) v[i] = Value(rank, static_cast<int64_t>(i));
  return Tensor::FromValues(dtype, shape, v);
}

// The sum the header promises: rank order, f32 accumulation for bf16, once rounded.
double RankOrderSum(DataType dtype, const std::vector<double>& stored) {
  switch (dtype) {
    case DT_F64: {
      double acc = stored[0];
      for (size_t r = 1; r < stored.size(); ++r) acc += stored[r];
      return acc;
    }
    case DT_F32: {
      float acc = static_cast<float>(stored[0]);
      for (size_t r = 1; r < stored.size(); ++r) acc += static_cast<float>(stored[r]);
      return acc;
    }
    case DT_BF16: {
      float acc = static_cast<float>(stored[0]);
      for (size_t r = 1; r < stored.size(); ++r) acc += static_cast<float>(stored[r]);
      return static_cast<float>(bf16(acc));
    }
    default:
      ADD_FAILURE() << "no reference sum for " << DataTypeName(dtype);
      return 0;
  }
}

bool SameBits(const Tensor& a, const Tensor& b) {
  return a.dtype() == b.dtype() && a.shape() == b.shape() &&
         std::memcmp(a.raw_data(), b.raw_data(), a.nbytes()) == 0;
}

double Seconds(std::chrono::steady_clock::time_point since) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - since).count();
}

class Communicators : public ::testing::TestWithParam<int> {};
INSTANTIATE_TEST_SUITE_P(Ranks, Communicators, ::testing::Values(2, 3, 4),
                         [](const auto& info) { return "P" + std::to_string(info.param); });

TEST_P(Communicators, AllReduceSumsInRankOrderForEachDtype) {
  const int P = GetParam();
  const Shape shape = {5, 7};
  for (DataType dtype : {DT_F32, DT_F64, DT_BF16}) {
    Comms comms = MakeLocalCommunicators(P);
    std::vector<Tensor> inputs, results(P);
    for (int r = 0; r < P; ++r) inputs.push_back(RankTensor(dtype, shape, r));
    OnRanks(comms, [&](Communicator& c) {
      auto out = c.AllReduce(inputs[c.rank()], ReduceOp::kSum, 3);
      ASSERT_TRUE(out.ok()) << out.status().ToString();
      results[c.rank()] = *out;
    });
    for (int64_t i = 0; i < NumElements(shape); ++i) {
      std::vector<double> stored;
      for (int r = 0; r < P; ++r) stored.push_back(inputs[r].At(i));
      const double expected = RankOrderSum(dtype, stored);
      for (int r = 0; r < P; ++r) {
        ASSERT_EQ(results[r].dtype(), dtype);
        ASSERT_EQ(results[r].shape(), shape);
        ASSERT_EQ(results[r].At(i), expected) << DataTypeName(dtype) << " rank " << r << " i " << i;
      }
    }
  }
}

TEST_P(Communicators, AllReduceOfExactIntegersMatchesTheClosedForm) {
  const int P = GetParam();
  Comms comms = MakeLocalCommunicators(P);
  std::vector<Tensor> sums(P), maxes(P);
  OnRanks(comms, [&](Communicator& c) {
    // Rank r holds (r + 1) * (i + 1): sums are (i + 1) * P (P + 1) / 2, maxes (i + 1) * P.
    std::vector<double> v(6);
    for (int i = 0; i < 6; ++i) v[i] = (c.rank() + 1) * (i + 1);
    Tensor t = Tensor::FromValues(DT_I64, {2, 3}, v);
    auto sum = c.AllReduce(t, ReduceOp::kSum);
    auto max = c.AllReduce(t.To(DT_F32), ReduceOp::kMax);
    ASSERT_TRUE(sum.ok() && max.ok());
    sums[c.rank()] = *sum;
    maxes[c.rank()] = *max;
  });
  for (int r = 0; r < P; ++r) {
    for (int i = 0; i < 6; ++i) {
      EXPECT_EQ(sums[r].At(i), (i + 1) * P * (P + 1) / 2);
      EXPECT_EQ(maxes[r].At(i), (i + 1) * P);
    }
  }
}

TEST(Communicator, MaxTakesTheLargestAndPropagatesNaN) {
  Comms comms = MakeLocalCommunicators(3);
  const double nan = std::nan("");
  // Column j: the values of ranks 0, 1, 2.
  const std::vector<std::vector<double>> by_rank = {{1, -5, 2, 0}, {3, -7, nan, 0}, {2, -6, 1, 0}};
  std::vector<Tensor> results(3);
  OnRanks(comms, [&](Communicator& c) {
    auto out = c.AllReduce(Tensor::FromValues(DT_F32, {4}, by_rank[c.rank()]), ReduceOp::kMax);
    ASSERT_TRUE(out.ok());
    results[c.rank()] = *out;
  });
  for (const Tensor& t : results) {
    EXPECT_EQ(t.At(0), 3);
    EXPECT_EQ(t.At(1), -5);
    EXPECT_TRUE(std::isnan(t.At(2)));
    EXPECT_EQ(t.At(3), 0);
  }
}

TEST(Communicator, Bf16SumsAccumulateInF32) {
  // bf16 keeps 8 significant bits: 1 + 2^-8 is a tie that rounds back to 1, so summing in bf16
  // gives 1 + 2^-8 + 2^-8 + 2^-8 = 1. In f32 the sum is exactly 1 + 3 * 2^-8 = 1 + 1.5 * 2^-7,
  // a tie between 1 + 2^-7 and 1 + 2^-6 that rounds to the even 1 + 2^-6 = 1.015625.
  Comms comms = MakeLocalCommunicators(4);
  std::vector<Tensor> results(4);
  OnRanks(comms, [&](Communicator& c) {
    double v = c.rank() == 0 ? 1.0 : std::ldexp(1.0, -8);
    auto out = c.AllReduce(Tensor::Full(DT_BF16, {3}, v), ReduceOp::kSum);
    ASSERT_TRUE(out.ok());
    results[c.rank()] = *out;
  });
  for (const Tensor& t : results) EXPECT_EQ(t.At(0), 1.015625);
}

TEST(Communicator, RankOrderIsWhatMakesResultsReproducible) {
  // The inputs are such that summing in reverse rank order changes some f32 result: the test
  // above would notice a backend that does not keep rank order.
  const int P = 4;
  int differs = 0;
  for (int64_t i = 0; i < 35; ++i) {
    float forward = 0, backward = 0;
    for (int r = 0; r < P; ++r) forward += static_cast<float>(Value(r, i));
    for (int r = P; r-- > 0;) backward += static_cast<float>(Value(r, i));
    differs += forward != backward;
  }
  EXPECT_GT(differs, 0);

  // Every rank and every run gets bitwise the same sum.
  std::optional<Tensor> first;
  for (int run = 0; run < 5; ++run) {
    Comms comms = MakeLocalCommunicators(P);
    std::vector<Tensor> results(P);
    OnRanks(comms, [&](Communicator& c) {
      auto out = c.AllReduce(RankTensor(DT_F32, {5, 7}, c.rank()), ReduceOp::kSum);
      ASSERT_TRUE(out.ok());
      results[c.rank()] = *out;
    });
    if (!first) first = results[0];
    for (int r = 0; r < P; ++r) EXPECT_TRUE(SameBits(results[r], *first)) << "run " << run;
  }
}

TEST_P(Communicators, AllGatherConcatenatesInRankOrder) {
  const int P = GetParam();
  Comms comms = MakeLocalCommunicators(P);
  std::vector<Tensor> results(P), scalars(P);
  OnRanks(comms, [&](Communicator& c) {
    auto out = c.AllGather(RankTensor(DT_F64, {2, 3}, c.rank()), 1);
    auto scalar = c.AllGather(Tensor::Full(DT_I32, {}, 10 + c.rank()), 2);
    ASSERT_TRUE(out.ok() && scalar.ok());
    results[c.rank()] = *out;
    scalars[c.rank()] = *scalar;
  });
  for (int r = 0; r < P; ++r) {
    ASSERT_EQ(results[r].shape(), (Shape{2 * P, 3}));
    for (int src = 0; src < P; ++src)
      for (int i = 0; i < 6; ++i) EXPECT_EQ(results[r].At(src * 6 + i), Value(src, i));
    ASSERT_EQ(scalars[r].shape(), (Shape{P}));
    for (int src = 0; src < P; ++src) EXPECT_EQ(scalars[r].At(src), 10 + src);
  }
}

TEST_P(Communicators, ReduceScatterGivesEachRankItsBlockOfTheSum) {
  const int P = GetParam();
  Comms comms = MakeLocalCommunicators(P);
  const Shape shape = {2 * P, 3};  // rank r gets rows [2r, 2r + 2)
  std::vector<Tensor> inputs, results(P);
  for (int r = 0; r < P; ++r) inputs.push_back(RankTensor(DT_F32, shape, r));
  OnRanks(comms, [&](Communicator& c) {
    auto out = c.ReduceScatter(inputs[c.rank()]);
    ASSERT_TRUE(out.ok()) << out.status().ToString();
    results[c.rank()] = *out;
  });
  for (int r = 0; r < P; ++r) {
    ASSERT_EQ(results[r].shape(), (Shape{2, 3}));
    for (int i = 0; i < 6; ++i) {
      std::vector<double> stored;
      for (int src = 0; src < P; ++src) stored.push_back(inputs[src].At(r * 6 + i));
      EXPECT_EQ(results[r].At(i), RankOrderSum(DT_F32, stored));
    }
  }
}

TEST_P(Communicators, BroadcastCopiesTheRootsTensor) {
  const int P = GetParam();
  for (int root : {0, P - 1}) {
    Comms comms = MakeLocalCommunicators(P);
    std::vector<Tensor> results(P);
    OnRanks(comms, [&](Communicator& c) {
      auto out = c.Broadcast(RankTensor(DT_BF16, {4}, c.rank()), root);
      ASSERT_TRUE(out.ok());
      results[c.rank()] = *out;
    });
    Tensor expected = RankTensor(DT_BF16, {4}, root);
    for (int r = 0; r < P; ++r) EXPECT_TRUE(SameBits(results[r], expected)) << r;
  }
}

TEST_P(Communicators, AllToAllVRoutesUnevenAndZeroCounts) {
  const int P = GetParam();
  // Rank src sends Count(src, dst) rows to dst; the last rank sends nothing at all. Row k of the
  // segment from src to dst holds {src * 1000 + dst * 10 + k, -(that)}.
  auto count = [&](int src, int dst) -> int64_t { return src == P - 1 ? 0 : (src + 2 * dst) % 3; };
  Comms comms = MakeLocalCommunicators(P);
  std::vector<Communicator::AllToAllVResult> results(P);
  OnRanks(comms, [&](Communicator& c) {
    const int src = c.rank();
    std::vector<int64_t> counts;
    std::vector<double> rows;
    for (int dst = 0; dst < P; ++dst) {
      counts.push_back(count(src, dst));
      for (int k = 0; k < count(src, dst); ++k) {
        double label = src * 1000 + dst * 10 + k;
        rows.insert(rows.end(), {label, -label});
      }
    }
    Shape shape = {static_cast<int64_t>(rows.size() / 2), 2};
    auto out = c.AllToAllV(Tensor::FromValues(DT_F32, shape, rows), counts, 4);
    ASSERT_TRUE(out.ok()) << out.status().ToString();
    results[src] = *out;
  });
  for (int dst = 0; dst < P; ++dst) {
    const auto& got = results[dst];
    ASSERT_EQ(got.recv_counts.size(), static_cast<size_t>(P));
    int64_t row = 0;
    for (int src = 0; src < P; ++src) {
      EXPECT_EQ(got.recv_counts[src], count(src, dst));
      for (int k = 0; k < count(src, dst); ++k, ++row) {
        double label = src * 1000 + dst * 10 + k;
        EXPECT_EQ(got.tensor.At(2 * row), label);
        EXPECT_EQ(got.tensor.At(2 * row + 1), -label);
      }
    }
    EXPECT_EQ(got.tensor.shape(), (Shape{row, 2}));
  }
}

TEST_P(Communicators, SendAndRecvAroundARing) {
  const int P = GetParam();
  Comms comms = MakeLocalCommunicators(P);
  std::vector<Tensor> got(P);
  OnRanks(comms, [&](Communicator& c) {
    const int next = (c.rank() + 1) % P, prev = (c.rank() + P - 1) % P;
    // Sends complete only once received, so both calls start before either is waited on.
    CommHandle send = c.StartSend(RankTensor(DT_F64, {2, 3}, c.rank()).Transpose(0, 1), next, 9);
    CommHandle recv = c.StartRecv(prev, 9);
    ASSERT_TRUE(recv.Wait().ok());
    ASSERT_TRUE(send.Wait().ok());
    got[c.rank()] = recv.result();
  });
  for (int r = 0; r < P; ++r) {
    const int prev = (r + P - 1) % P;
    ASSERT_EQ(got[r].shape(), (Shape{3, 2}));  // the sender's (transposed) shape
    ASSERT_EQ(got[r].dtype(), DT_F64);
    for (int a = 0; a < 3; ++a)
      for (int b = 0; b < 2; ++b) EXPECT_EQ(got[r].At(a * 2 + b), Value(prev, b * 3 + a));
  }
}

TEST(Communicator, RecvsMatchByTagAndKeepOrderWithinATag) {
  Comms comms = MakeLocalCommunicators(2);
  std::vector<double> seen;
  OnRanks(comms, [&](Communicator& c) {
    if (c.rank() == 0) {
      CommHandle a = c.StartSend(Tensor::Full(DT_F32, {1}, 1), 1, 5);
      CommHandle b = c.StartSend(Tensor::Full(DT_F32, {1}, 2), 1, 5);
      CommHandle d = c.StartSend(Tensor::Full(DT_I32, {2}, 3), 1, 6);
      EXPECT_TRUE(a.Wait().ok() && b.Wait().ok() && d.Wait().ok());
    } else {
      for (int tag : {6, 5, 5}) {
        auto t = c.Recv(0, tag);
        ASSERT_TRUE(t.ok());
        seen.push_back(t->At(0));
      }
    }
  });
  EXPECT_EQ(seen, (std::vector<double>{3, 1, 2}));
}

TEST(Communicator, AsyncCallsOverlapAndFinishInAnyWaitOrder) {
  const int P = 3;
  Comms comms = MakeLocalCommunicators(P);
  std::latch rank0_started(1);
  std::vector<Tensor> sums(P), gathers(P);
  OnRanks(comms, [&](Communicator& c) {
    if (c.rank() != 0) rank0_started.wait();
    CommHandle sum = c.StartAllReduce(Tensor::Full(DT_F32, {3}, c.rank() + 1), ReduceOp::kSum, 1);
    CommHandle gather = c.StartAllGather(Tensor::Full(DT_I64, {1}, c.rank()), 2);
    CommHandle barrier = c.StartBarrier(3);
    if (c.rank() == 0) {
      // Nobody else has started: nothing can be finished yet.
      EXPECT_FALSE(sum.Test());
      EXPECT_FALSE(gather.Test());
      EXPECT_FALSE(barrier.Test());
      rank0_started.count_down();
    }
    ASSERT_TRUE(barrier.Wait().ok());
    ASSERT_TRUE(gather.Wait().ok());
    ASSERT_TRUE(sum.Wait().ok());
    EXPECT_TRUE(sum.Test());
    sums[c.rank()] = sum.result();
    gathers[c.rank()] = gather.result();
  });
  for (int r = 0; r < P; ++r) {
    EXPECT_EQ(sums[r].At(0), 1 + 2 + 3);
    for (int src = 0; src < P; ++src) EXPECT_EQ(gathers[r].At(src), src);
  }
}

TEST_P(Communicators, ARankThatNeverCallsFailsTheOthersWithinTheTimeout) {
  const int P = GetParam();
  const int missing = P - 1;
  Comms comms = MakeLocalCommunicators(P, {.timeout_s = 0.3});
  std::vector<Status> statuses(P);
  std::vector<double> waited(P);
  OnRanks(comms, [&](Communicator& c) {
    if (c.rank() == missing) return;
    auto start = std::chrono::steady_clock::now();
    statuses[c.rank()] = c.StartAllReduce(Tensor::Full(DT_F32, {2}, 1), ReduceOp::kSum, 7).Wait();
    waited[c.rank()] = Seconds(start);
  });
  for (int r = 0; r < missing; ++r) {
    EXPECT_EQ(statuses[r].code(), StatusCode::kDeadlineExceeded) << statuses[r].ToString();
    EXPECT_NE(
        statuses[r].message().find("rank " + std::to_string(r) + ": all_reduce (tag 7): rank " +
                                   std::to_string(missing) + " did not join within 0.3 s"),
        std::string::npos)
        << statuses[r].message();
    EXPECT_LT(waited[r], 30) << "far past the 0.3 s timeout";
  }
  // The ranks that timed out refuse further calls at once...
  Status after = comms[0]->Barrier();
  EXPECT_EQ(after.code(), StatusCode::kFailedPrecondition);
  EXPECT_NE(after.message().find("rank 0: barrier (tag 0): the communicator is unusable"),
            std::string::npos)
      << after.message();
  // ...and the latecomer learns that the others gave up.
  Status late = comms[missing]->AllReduce(Tensor::Full(DT_F32, {2}, 1), ReduceOp::kSum, 7).status();
  EXPECT_EQ(late.code(), StatusCode::kDeadlineExceeded);
  EXPECT_NE(late.message().find("rank " + std::to_string(missing) +
                                ": all_reduce (tag 7): joined after rank "),
            std::string::npos)
      << late.message();
}

TEST(Communicator, UnmatchedSendAndRecvTimeOut) {
  Comms comms = MakeLocalCommunicators(2, {.timeout_s = 0.3});
  Status recv = comms[1]->StartRecv(0, 5).Wait();
  EXPECT_EQ(recv.code(), StatusCode::kDeadlineExceeded);
  EXPECT_EQ(recv.message(), "rank 1: recv (tag 5) from rank 0: rank 0 did not send within 0.3 s");
  Status send = comms[0]->Send(Tensor::Full(DT_F32, {1}, 0), 1, 5);
  EXPECT_EQ(send.code(), StatusCode::kDeadlineExceeded);
  EXPECT_EQ(send.message(), "rank 0: send (tag 5) to rank 1: rank 1 did not receive within 0.3 s");
}

TEST(Communicator, TimeoutIsSettablePerCommunicator) {
  Comms comms = MakeLocalCommunicators(2, {.timeout_s = 100});
  EXPECT_EQ(comms[0]->timeout_s(), 100);
  comms[0]->set_timeout_s(0.05);
  auto start = std::chrono::steady_clock::now();
  Status s = comms[0]->Barrier(2);
  EXPECT_LT(Seconds(start), 30);
  EXPECT_EQ(s.message(), "rank 0: barrier (tag 2): rank 1 did not join within 0.05 s");
}

// Runs rank 0's and rank 1's calls and returns their statuses.
std::pair<Status, Status> TwoRanks(const std::function<Status(Communicator&)>& rank0,
                                   const std::function<Status(Communicator&)>& rank1) {
  Comms comms = MakeLocalCommunicators(2, {.timeout_s = 20});
  Status s0, s1;
  OnRanks(comms,
          [&](Communicator& c) { (c.rank() == 0 ? s0 : s1) = (c.rank() == 0 ? rank0 : rank1)(c); });
  return {s0, s1};
}

TEST(Communicator, MismatchedCollectivesFailOnBothSidesNamingBoth) {
  Tensor four = Tensor::Full(DT_F32, {4}, 1);
  auto [a0, a1] =
      TwoRanks([&](Communicator& c) { return c.AllReduce(four, ReduceOp::kSum).status(); },
               [&](Communicator& c) { return c.Broadcast(four, 0).status(); });
  EXPECT_EQ(a0.code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(a0.message(),
            "rank 0: all_reduce sum (tag 0) of f32[4] does not match rank 1's broadcast (tag 0) of "
            "f32[4] from rank 0");
  EXPECT_EQ(a1.message(),
            "rank 1: broadcast (tag 0) of f32[4] from rank 0 does not match rank 0's all_reduce "
            "sum (tag 0) of f32[4]");

  auto [b0, b1] =
      TwoRanks([&](Communicator& c) { return c.AllReduce(four, ReduceOp::kSum).status(); },
               [&](Communicator& c) {
                 return c.AllReduce(Tensor::Full(DT_F32, {5}, 1), ReduceOp::kSum).status();
               });
  EXPECT_NE(b0.message().find("f32[4] does not match rank 1's all_reduce sum (tag 0) of f32[5]"),
            std::string::npos)
      << b0.message();
  EXPECT_NE(b1.message().find("f32[5] does not match rank 0's"), std::string::npos);

  auto [c0, c1] = TwoRanks([&](Communicator& c) { return c.AllGather(four, 1).status(); },
                           [&](Communicator& c) { return c.AllGather(four, 2).status(); });
  EXPECT_NE(c0.message().find("does not match rank 1's all_gather (tag 2)"), std::string::npos);
  EXPECT_EQ(c1.code(), StatusCode::kInvalidArgument);

  auto [d0, d1] = TwoRanks(
      [&](Communicator& c) { return c.AllReduce(four, ReduceOp::kSum).status(); },
      [&](Communicator& c) { return c.AllReduce(four.To(DT_F64), ReduceOp::kMax).status(); });
  EXPECT_NE(d0.message().find("rank 1's all_reduce max (tag 0) of f64[4]"), std::string::npos)
      << d0.message();
}

TEST(Communicator, ARankWithInvalidArgumentsFailsItsPeersToo) {
  auto [s0, s1] = TwoRanks(
      [&](Communicator& c) { return c.ReduceScatter(Tensor::Full(DT_F32, {4}, 1)).status(); },
      [&](Communicator& c) { return c.ReduceScatter(Tensor::Full(DT_F32, {3}, 1)).status(); });
  EXPECT_EQ(s1.message(),
            "rank 1: reduce_scatter (tag 0): dim 0 must be a multiple of the 2 ranks, got f32[3]");
  EXPECT_EQ(s0.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(s0.message().find("rank 0: reduce_scatter (tag 0): rank 1 passed invalid arguments"),
            std::string::npos)
      << s0.message();
}

TEST(Communicator, AMismatchLeavesTheCommunicatorUsable) {
  Comms comms = MakeLocalCommunicators(2);
  std::vector<double> after(2);
  OnRanks(comms, [&](Communicator& c) {
    Status bad = c.rank() == 0 ? c.Barrier(1) : c.Barrier(2);
    EXPECT_FALSE(bad.ok());
    auto sum = c.AllReduce(Tensor::Full(DT_F64, {1}, c.rank() + 1), ReduceOp::kSum);
    ASSERT_TRUE(sum.ok()) << sum.status().ToString();
    after[c.rank()] = sum->At(0);
  });
  EXPECT_EQ(after, (std::vector<double>{3, 3}));
}

TEST(Communicator, ArgumentErrors) {
  Comms comms = MakeLocalCommunicators(1);
  Communicator& c = *comms[0];
  Tensor t = Tensor::Full(DT_F32, {2}, 1);
  EXPECT_EQ(c.Send(t, 1, 0).message(),
            "rank 0: send (tag 0) to rank 1: no such rank in a communicator of 1");
  EXPECT_EQ(c.Recv(0, -1).status().message(), "rank 0: recv (tag -1) from rank 0: tags are >= 0");
  EXPECT_EQ(c.AllToAllV(t, {1}).status().message(),
            "rank 0: all_to_all_v (tag 0): send_counts sum to 1 rows but the tensor has 2 "
            "(f32[2])");
  EXPECT_EQ(c.AllToAllV(t, {1, 1}).status().message(),
            "rank 0: all_to_all_v (tag 0): send_counts has 2 entries, one per rank expected (1)");
  EXPECT_EQ(c.Broadcast(t, 1).status().message(),
            "rank 0: broadcast (tag 0): root 1 is not a rank of this communicator of 1");
  EXPECT_EQ(c.AllReduce(Tensor::Full(DT_U8, {2}, 1), ReduceOp::kSum).status().message(),
            "rank 0: all_reduce (tag 0): reduces f32, f64, bf16, f16, i32 and i64 tensors, not u8");
  // The errors left the communicator working.
  auto one = c.AllReduce(t, ReduceOp::kSum);
  ASSERT_TRUE(one.ok());
  EXPECT_EQ(one->At(1), 1);
}

TEST(Communicator, OneRankIsItsOwnPeer) {
  Comms comms = MakeLocalCommunicators(1);
  Communicator& c = *comms[0];
  Tensor t = RankTensor(DT_F32, {2, 2}, 0);
  CommHandle send = c.StartSend(t, 0, 1);
  auto got = c.Recv(0, 1);
  ASSERT_TRUE(got.ok() && send.Wait().ok());
  EXPECT_TRUE(SameBits(*got, t));
  auto rows = c.AllToAllV(t, {2});
  ASSERT_TRUE(rows.ok());
  EXPECT_TRUE(SameBits(rows->tensor, t));
  EXPECT_EQ(rows->recv_counts, (std::vector<int64_t>{2}));
  EXPECT_TRUE(c.Barrier().ok());
}

// --- Launch detection.

class Launch : public ::testing::Test {
 protected:
  static constexpr const char* kVars[] = {"RANK",
                                          "WORLD_SIZE",
                                          "LOCAL_RANK",
                                          "MASTER_ADDR",
                                          "MASTER_PORT",
                                          "SLURM_PROCID",
                                          "SLURM_NTASKS",
                                          "SLURM_NPROCS",
                                          "SLURM_LOCALID",
                                          "OMPI_COMM_WORLD_RANK",
                                          "OMPI_COMM_WORLD_SIZE",
                                          "OMPI_COMM_WORLD_LOCAL_RANK"};

  // The test may itself run under a launcher: start from a clean slate, restore afterwards.
  void SetUp() override {
    for (const char* v : kVars) {
      if (const char* value = std::getenv(v)) saved_[v] = value;
      unsetenv(v);
    }
  }
  void TearDown() override {
    for (const char* v : kVars) unsetenv(v);
    for (const auto& [name, value] : saved_) setenv(name.c_str(), value.c_str(), 1);
  }
  static void Set(std::initializer_list<std::pair<const char*, const char*>> vars) {
    for (const auto& [name, value] : vars) setenv(name, value, 1);
  }
  static std::string Error() {
    auto info = DetectLaunch();
    return info.ok() ? "(no error)" : info.status().message();
  }

 private:
  std::map<std::string, std::string> saved_;
};

TEST_F(Launch, NoLauncherIsRankZeroOfOne) {
  auto info = DetectLaunch();
  ASSERT_TRUE(info.ok());
  EXPECT_EQ(info->launcher, "none");
  EXPECT_EQ(info->rank, 0);
  EXPECT_EQ(info->world_size, 1);
  EXPECT_EQ(info->local_rank, 0);
  EXPECT_EQ(info->master_addr, "");
  EXPECT_EQ(info->ToString(), "rank 0 of 1 (local rank 0), no launcher");
}

TEST_F(Launch, Torchrun) {
  Set({{"RANK", "5"},
       {"WORLD_SIZE", "8"},
       {"LOCAL_RANK", "1"},
       {"MASTER_ADDR", "node-a"},
       {"MASTER_PORT", "29500"}});
  auto info = DetectLaunch();
  ASSERT_TRUE(info.ok()) << info.status().ToString();
  EXPECT_EQ(info->launcher, "torchrun");
  EXPECT_EQ(info->rank, 5);
  EXPECT_EQ(info->world_size, 8);
  EXPECT_EQ(info->local_rank, 1);
  EXPECT_EQ(info->master_addr, "node-a");
  EXPECT_EQ(info->master_port, 29500);
  EXPECT_EQ(info->ToString(), "rank 5 of 8 (local rank 1) from torchrun");
}

TEST_F(Launch, Slurm) {
  Set({{"SLURM_PROCID", "3"}, {"SLURM_NTASKS", "4"}, {"SLURM_LOCALID", "3"}});
  auto info = DetectLaunch();
  ASSERT_TRUE(info.ok());
  EXPECT_EQ(info->launcher, "slurm");
  EXPECT_EQ(info->rank, 3);
  EXPECT_EQ(info->world_size, 4);
  EXPECT_EQ(info->local_rank, 3);
  // Older Slurm spells the size SLURM_NPROCS.
  unsetenv("SLURM_NTASKS");
  Set({{"SLURM_NPROCS", "6"}});
  info = DetectLaunch();
  ASSERT_TRUE(info.ok());
  EXPECT_EQ(info->world_size, 6);
}

TEST_F(Launch, OpenMpi) {
  Set({{"OMPI_COMM_WORLD_RANK", "1"},
       {"OMPI_COMM_WORLD_SIZE", "2"},
       {"OMPI_COMM_WORLD_LOCAL_RANK", "1"}});
  auto info = DetectLaunch();
  ASSERT_TRUE(info.ok());
  EXPECT_EQ(info->launcher, "openmpi");
  EXPECT_EQ(info->rank, 1);
  EXPECT_EQ(info->world_size, 2);
  EXPECT_EQ(info->local_rank, 1);
}

TEST_F(Launch, TheLauncherClosestToTheProcessWins) {
  Set({{"SLURM_PROCID", "0"}, {"SLURM_NTASKS", "2"}, {"RANK", "3"}, {"WORLD_SIZE", "4"}});
  auto info = DetectLaunch();
  ASSERT_TRUE(info.ok());
  EXPECT_EQ(info->launcher, "torchrun");
  EXPECT_EQ(info->rank, 3);
  EXPECT_EQ(info->also_set, (std::vector<std::string>{"slurm"}));

  Set({{"OMPI_COMM_WORLD_RANK", "6"}, {"OMPI_COMM_WORLD_SIZE", "7"}});
  info = DetectLaunch();
  ASSERT_TRUE(info.ok());
  EXPECT_EQ(info->launcher, "openmpi");
  EXPECT_EQ(info->rank, 6);
  EXPECT_EQ(info->world_size, 7);
  EXPECT_EQ(info->local_rank, 0);  // OMPI_COMM_WORLD_LOCAL_RANK unset; LOCAL_RANK is torchrun's
  EXPECT_EQ(info->also_set, (std::vector<std::string>{"torchrun", "slurm"}));
}

TEST_F(Launch, MalformedAndInconsistentValuesAreErrors) {
  Set({{"RANK", "4"}, {"WORLD_SIZE", "4"}});
  EXPECT_EQ(Error(), "launch: RANK=\"4\" (with WORLD_SIZE=4): expected an integer in [0, 3]");
  Set({{"RANK", "two"}});
  EXPECT_EQ(Error(), "launch: RANK=\"two\" (with WORLD_SIZE=4): not a decimal integer");
  Set({{"RANK", " 1"}});
  EXPECT_EQ(Error(), "launch: RANK=\" 1\" (with WORLD_SIZE=4): not a decimal integer");
  Set({{"RANK", "1x"}});
  EXPECT_EQ(Error(), "launch: RANK=\"1x\" (with WORLD_SIZE=4): not a decimal integer");
  Set({{"RANK", "-1"}});
  EXPECT_EQ(Error(), "launch: RANK=\"-1\" (with WORLD_SIZE=4): expected an integer in [0, 3]");
  Set({{"RANK", "1"}, {"LOCAL_RANK", "4"}});
  EXPECT_EQ(Error(), "launch: LOCAL_RANK=\"4\" (with WORLD_SIZE=4): expected an integer in [0, 3]");
  unsetenv("LOCAL_RANK");
  Set({{"WORLD_SIZE", "0"}});
  EXPECT_EQ(Error(), "launch: WORLD_SIZE=\"0\": expected an integer in [1, 2147483647]");
  Set({{"WORLD_SIZE", "99999999999"}});
  EXPECT_EQ(Error(), "launch: WORLD_SIZE=\"99999999999\": expected an integer in [1, 2147483647]");
  Set({{"WORLD_SIZE", ""}});
  EXPECT_EQ(Error(), "launch: WORLD_SIZE=\"\": not a decimal integer");
  unsetenv("WORLD_SIZE");
  EXPECT_EQ(Error(), "launch: RANK is set (torchrun) but WORLD_SIZE is not");
  unsetenv("RANK");
  Set({{"SLURM_PROCID", "2"}});
  EXPECT_EQ(Error(), "launch: SLURM_PROCID is set (slurm) but SLURM_NTASKS is not");
  Set({{"SLURM_NTASKS", "2"}});
  EXPECT_EQ(Error(),
            "launch: SLURM_PROCID=\"2\" (with SLURM_NTASKS=2): expected an integer in [0, 1]");
  Set({{"SLURM_PROCID", "1"}, {"MASTER_PORT", "70000"}});
  EXPECT_EQ(Error(), "launch: MASTER_PORT=\"70000\": expected an integer in [1, 65535]");
  Set({{"MASTER_PORT", "http"}});
  EXPECT_EQ(Error(), "launch: MASTER_PORT=\"http\": not a decimal integer");
  unsetenv("MASTER_PORT");
  Set({{"MASTER_ADDR", ""}});
  EXPECT_EQ(Error(), "launch: MASTER_ADDR is set but empty");
}

}  // namespace
}  // namespace weir
