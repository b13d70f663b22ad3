// The MPI communicator across processes (run by mpi_test.sh under mpirun, 2 ranks or more).
//
// Every collective and send/recv is checked against values each rank computes itself from the
// formula that made every rank's input, and reductions against the in-process backend run inside
// each process on the same inputs: the two backends must agree bit for bit. Then the error paths:
// calls that disagree fail on both sides naming both, and a rank that skips a call makes rank 0
// fail within the timeout. Prints one line per rank; exits 1 on any failed check.
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <functional>
#include <string>
#include <thread>

#include "weir/half.h"
#include "weir/runtime/communicator.h"
#include "weir/runtime/launch.h"
#include "weir/runtime/mpi_communicator.h"

namespace weir {
namespace {

int g_rank = -1;
int g_failures = 0;
int g_checks = 0;

void Check(bool ok, const std::string& what) {
  ++g_checks;
  if (ok) return;
  ++g_failures;
  std::fprintf(stderr, "rank %d: FAILED: %s\n", g_rank, what.c_str());
}

bool Contains(const std::string& text, const std::string& part) {
  return text.find(part) != std::string::npos;
}

double Value(int rank, int64_t i) {
  return std::sin(0.7 + 1.3 * rank + 0.37 * static_cast<double>(i)) * (1 + rank * rank) * 3.1;
}

Tensor RankTensor(DataType dtype, const Shape& shape, int rank) {
  std::vector<double> v(NumElements(shape));
  for (size_t i = 0; i < v.size(); ++i) v[i] = Value(rank, static_cast<int64_t>(i));
  return Tensor::FromValues(dtype, shape, v);
}

bool SameBits(const Tensor& a, const Tensor& b) {
  return a.dtype() == b.dtype() && a.shape() == b.shape() &&
         std::memcmp(a.raw_data(), b.raw_data(), a.nbytes()) == 0;
}

// What the in-process backend computes for rank `rank` when every rank r contributes input(r).
Tensor LocalResult(int size, int rank, const std::function<StatusOr<Tensor>(Communicator&)>& call) {
  auto comms = MakeLocalCommunicators(size);
  std::vector<Tensor> results(size);
  std::vector<std::thread> threads;
  for (auto& c : comms) {
    threads.emplace_back([&, comm = c.get()] {
      auto out = call(*comm);
      CHECK(out.ok()) << out.status().ToString();
      results[comm->rank()] = *out;
    });
  }
  for (auto& t : threads) t.join();
  return results[rank];
}

void CheckReductions(Communicator& c) {
  const int P = c.size();
  for (DataType dtype : {DT_F32, DT_F64, DT_BF16}) {
    for (const Shape& shape : {Shape{5, 7}, Shape{1 << 20}, Shape{0}}) {
      std::string what = std::string("all_reduce sum ") + DataTypeName(dtype) + ShapeString(shape);
      auto call = [&](Communicator& k) {
        return k.AllReduce(RankTensor(dtype, shape, k.rank()), ReduceOp::kSum, 3);
      };
      auto out = call(c);
      Check(out.ok(), what + ": " + out.status().ToString());
      if (!out.ok()) continue;
      Check(SameBits(*out, LocalResult(P, c.rank(), call)),
            what + ": differs from the local backend");
      // The reference sum itself, in rank order, for a few elements.
      for (int64_t i = 0; i < std::min<int64_t>(out->numel(), 35); ++i) {
        float acc32 = 0;
        double acc64 = 0;
        for (int r = 0; r < P; ++r) {
          double stored = RankTensor(dtype, {35}, r).At(i);
          acc32 = r == 0 ? static_cast<float>(stored) : acc32 + static_cast<float>(stored);
          acc64 = r == 0 ? stored : acc64 + stored;
        }
        double expected = dtype == DT_F64   ? acc64
                          : dtype == DT_F32 ? acc32
                                            : static_cast<float>(bf16(acc32));
        Check(out->At(i) == expected, what + " element " + std::to_string(i));
      }
    }
  }
  // Exact integers: closed forms.
  std::vector<double> v(6);
  for (int i = 0; i < 6; ++i) v[i] = (c.rank() + 1) * (i + 1);
  auto sum = c.AllReduce(Tensor::FromValues(DT_I64, {2, 3}, v), ReduceOp::kSum);
  auto max = c.AllReduce(Tensor::FromValues(DT_F32, {6}, v), ReduceOp::kMax);
  Check(sum.ok() && max.ok(), "integer all_reduce");
  if (sum.ok() && max.ok()) {
    for (int i = 0; i < 6; ++i) {
      Check(sum->At(i) == (i + 1) * P * (P + 1) / 2, "i64 sum " + std::to_string(i));
      Check(max->At(i) == (i + 1) * P, "f32 max " + std::to_string(i));
    }
  }
  // bf16 accumulates in f32 (see the unit test for the derivation): 1 + 3 * 2^-8 -> 1.015625.
  if (P >= 2) {
    double mine = c.rank() == 0 ? 1.0 : (c.rank() <= 3 ? std::ldexp(1.0, -8) : 0.0);
    auto bf = c.AllReduce(Tensor::Full(DT_BF16, {4}, mine), ReduceOp::kSum);
    double expected = P == 2 ? 1.0 : (P == 3 ? 1.0078125 : 1.015625);
    Check(bf.ok() && bf->At(3) == expected, "bf16 accumulates in f32");
  }
  // reduce_scatter: rank r gets rows [2r, 2r + 2) of the sum.
  auto rs_call = [&](Communicator& k) {
    return k.ReduceScatter(RankTensor(DT_F32, {2 * P, 3}, k.rank()));
  };
  auto rs = rs_call(c);
  Check(rs.ok() && rs->shape() == Shape({2, 3}), "reduce_scatter shape");
  if (rs.ok()) {
    Check(SameBits(*rs, LocalResult(P, c.rank(), rs_call)), "reduce_scatter vs local backend");
    for (int i = 0; i < 6; ++i) {
      float acc = 0;
      for (int r = 0; r < P; ++r) {
        float x = static_cast<float>(RankTensor(DT_F32, {2 * P, 3}, r).At(c.rank() * 6 + i));
        acc = r == 0 ? x : acc + x;
      }
      Check(rs->At(i) == acc, "reduce_scatter element " + std::to_string(i));
    }
  }
}

void CheckDataMovement(Communicator& c) {
  const int P = c.size(), me = c.rank();
  auto gathered = c.AllGather(RankTensor(DT_F64, {2, 3}, me), 1);
  Check(gathered.ok() && gathered->shape() == Shape({2 * P, 3}), "all_gather shape");
  if (gathered.ok()) {
    for (int src = 0; src < P; ++src)
      for (int i = 0; i < 6; ++i)
        Check(gathered->At(src * 6 + i) == Value(src, i), "all_gather value");
  }
  auto scalars = c.AllGather(Tensor::Full(DT_I32, {}, 10 + me), 2);
  Check(scalars.ok() && scalars->shape() == Shape({P}), "all_gather of scalars");
  for (int src = 0; scalars.ok() && src < P; ++src) Check(scalars->At(src) == 10 + src, "scalar");

  auto bcast = c.Broadcast(RankTensor(DT_BF16, {4}, me), P - 1);
  Check(bcast.ok() && SameBits(*bcast, RankTensor(DT_BF16, {4}, P - 1)), "broadcast");

  // all_to_all_v with uneven counts; the last rank sends nothing.
  auto count = [&](int src, int dst) -> int64_t { return src == P - 1 ? 0 : (src + 2 * dst) % 3; };
  std::vector<int64_t> counts;
  std::vector<double> rows;
  for (int dst = 0; dst < P; ++dst) {
    counts.push_back(count(me, dst));
    for (int k = 0; k < count(me, dst); ++k) {
      double label = me * 1000 + dst * 10 + k;
      rows.insert(rows.end(), {label, -label});
    }
  }
  auto a2a = c.AllToAllV(
      Tensor::FromValues(DT_F32, {static_cast<int64_t>(rows.size() / 2), 2}, rows), counts, 4);
  Check(a2a.ok(), "all_to_all_v: " + a2a.status().ToString());
  if (a2a.ok()) {
    int64_t row = 0;
    for (int src = 0; src < P; ++src) {
      Check(a2a->recv_counts[src] == count(src, me),
            "all_to_all_v count from " + std::to_string(src));
      for (int k = 0; k < count(src, me); ++k, ++row) {
        double label = src * 1000 + me * 10 + k;
        Check(a2a->tensor.At(2 * row) == label && a2a->tensor.At(2 * row + 1) == -label,
              "all_to_all_v row");
      }
    }
    Check(a2a->tensor.shape() == Shape({row, 2}), "all_to_all_v shape");
  }

  // A ring of sends: the receiver learns dtype and shape (the sender's transposed view).
  const int next = (me + 1) % P, prev = (me + P - 1) % P;
  CommHandle send = c.StartSend(RankTensor(DT_F64, {2, 3}, me).Transpose(0, 1), next, 9);
  CommHandle recv = c.StartRecv(prev, 9);
  Status rs = recv.Wait(), ss = send.Wait();
  Check(rs.ok() && ss.ok(), "ring: " + rs.ToString() + ss.ToString());
  if (rs.ok()) {
    const Tensor& got = recv.result();
    Check(got.shape() == Shape({3, 2}) && got.dtype() == DT_F64, "ring shape");
    for (int a = 0; a < 3; ++a)
      for (int b = 0; b < 2; ++b) Check(got.At(a * 2 + b) == Value(prev, b * 3 + a), "ring value");
  }
  // Tags select; order holds within a tag.
  if (me == 0) {
    CommHandle a = c.StartSend(Tensor::Full(DT_F32, {1}, 1), 1, 5);
    CommHandle b = c.StartSend(Tensor::Full(DT_F32, {1}, 2), 1, 5);
    CommHandle d = c.StartSend(Tensor::Full(DT_I32, {2}, 3), 1, 6);
    Check(a.Wait().ok() && b.Wait().ok() && d.Wait().ok(), "tagged sends");
  } else if (me == 1) {
    std::vector<double> seen;
    for (int tag : {6, 5, 5}) {
      auto t = c.Recv(0, tag);
      seen.push_back(t.ok() ? t->At(0) : -1);
    }
    Check(seen == std::vector<double>({3, 1, 2}), "recvs by tag");
  }
}

void CheckOverlap(Communicator& c) {
  const int P = c.size(), me = c.rank();
  // Several calls in flight at once, finished in reverse order; a recv waits while a collective
  // still needs its next phase started: waiting on one call progresses the others.
  CommHandle sum = c.StartAllReduce(Tensor::Full(DT_F32, {1000}, me + 1), ReduceOp::kSum, 11);
  CommHandle gather = c.StartAllGather(Tensor::Full(DT_I64, {1}, me), 12);
  CommHandle recv = c.StartRecv((me + P - 1) % P, 13);
  CommHandle barrier = c.StartBarrier(14);
  CommHandle send = c.StartSend(Tensor::Full(DT_F32, {3}, me), (me + 1) % P, 13);
  Check(send.Wait().ok(), "overlap: send");
  Check(barrier.Wait().ok(), "overlap: barrier");
  Check(recv.Wait().ok() && recv.result().At(2) == (me + P - 1) % P, "overlap: recv");
  Check(gather.Wait().ok() && gather.result().At(P - 1) == P - 1, "overlap: all_gather");
  Check(sum.Wait().ok() && sum.result().At(999) == P * (P + 1) / 2, "overlap: all_reduce");
}

void CheckMismatches(Communicator& c) {
  const int me = c.rank();
  Tensor four = Tensor::Full(DT_F32, {4}, 1);
  Status s = me == 0 ? c.AllReduce(four, ReduceOp::kSum).status() : c.Broadcast(four, 0).status();
  if (me == 0) {
    Check(s.message() ==
              "rank 0: all_reduce sum (tag 0) of f32[4] does not match rank 1's broadcast (tag 0) "
              "of f32[4] from rank 0",
          "mismatch message on rank 0: " + s.message());
  } else {
    Check(Contains(s.message(), "rank " + std::to_string(me) +
                                    ": broadcast (tag 0) of f32[4] from rank 0 does not match "
                                    "rank 0's all_reduce sum (tag 0) of f32[4]"),
          "mismatch message: " + s.message());
  }
  Status shapes = c.AllGather(Tensor::Full(DT_F32, {me == 1 ? 5 : 4}, 1)).status();
  Check(shapes.code() == StatusCode::kInvalidArgument && Contains(shapes.message(), "f32[5]"),
        "shape mismatch: " + shapes.message());
  Status invalid =
      c.ReduceScatter(Tensor::Full(DT_F32, {2 * c.size() + (me == 1 ? 1 : 0)}, 1)).status();
  Check(me == 1 ? Contains(invalid.message(), "dim 0 must be a multiple")
                : Contains(invalid.message(), "rank 1 passed invalid arguments"),
        "invalid arguments: " + invalid.message());
  // None of that broke the communicator.
  auto after = c.AllReduce(Tensor::Full(DT_F64, {1}, me + 1), ReduceOp::kSum);
  Check(after.ok() && after->At(0) == c.size() * (c.size() + 1) / 2, "usable after mismatches");
}

// Rank 0 calls an all_reduce that the other ranks skip; `sync` (another communicator) lets the
// ranks finish together afterwards.
double CheckTimeout(Communicator& c, Communicator& sync) {
  double waited = 0;
  if (c.rank() == 0) {
    c.set_timeout_s(1);
    auto start = std::chrono::steady_clock::now();
    Status s = c.AllReduce(Tensor::Full(DT_F32, {2}, 1), ReduceOp::kSum, 7).status();
    waited = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    Check(s.code() == StatusCode::kDeadlineExceeded, "timeout code: " + s.ToString());
    std::string expected = c.size() == 2
                               ? "rank 0: all_reduce (tag 7): rank 1 did not join within 1 s"
                               : "rank 0: all_reduce (tag 7): not all of ranks 1";
    Check(Contains(s.message(), expected), "timeout message: " + s.message());
    Check(waited < 30, "the timeout took " + std::to_string(waited) + " s");
    Status after = c.Barrier();
    Check(after.code() == StatusCode::kFailedPrecondition &&
              Contains(after.message(), "unusable after an earlier timeout"),
          "refused after the timeout: " + after.message());
  }
  Check(sync.Barrier().ok(), "sync after the timeout case");
  // A recv nobody sends to: rank 1 gives up after its timeout (nothing else follows on `sync`).
  if (c.rank() == 1) {
    sync.set_timeout_s(0.5);
    Status s = sync.Recv(0, 99).status();
    Check(s.message() == "rank 1: recv (tag 99) from rank 0: rank 0 did not send within 0.5 s",
          "recv timeout: " + s.message());
  }
  return waited;
}

int Main() {
  auto launch = DetectLaunch();
  auto comm = MakeMpiCommunicator({.timeout_s = 60});
  auto sync = MakeMpiCommunicator({.timeout_s = 60});
  if (!comm.ok() || !sync.ok()) {
    std::fprintf(stderr, "%s%s\n", comm.status().ToString().c_str(),
                 sync.status().ToString().c_str());
    return 1;
  }
  Communicator& c = **comm;
  g_rank = c.rank();
  Check(launch.ok() && launch->launcher == "openmpi" && launch->rank == c.rank() &&
            launch->world_size == c.size(),
        "DetectLaunch under mpirun: " +
            (launch.ok() ? launch->ToString() : launch.status().ToString()));
  Check(c.backend() == "mpi", "backend name");
  if (c.size() < 2) {
    std::fprintf(stderr, "run with at least 2 ranks\n");
    return 1;
  }
  auto start = std::chrono::steady_clock::now();
  CheckReductions(c);
  CheckDataMovement(c);
  CheckOverlap(c);
  CheckMismatches(c);
  double checks_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  double timeout_waited = CheckTimeout(c, **sync);
  std::printf("rank %d of %d (%s): %d checks, %d failed; checks took %.2f s%s\n", c.rank(),
              c.size(), MpiThreadLevel().c_str(), g_checks, g_failures, checks_s,
              c.rank() == 0 ? (", the 1 s timeout fired after " +
                               std::to_string(timeout_waited).substr(0, 4) + " s")
                                  .c_str()
                            : "");
  return g_failures == 0 ? 0 : 1;
}

}  // namespace
}  // namespace weir

int main() { return weir::Main(); }
