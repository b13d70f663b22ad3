// moe.ExpertsParallel and moe.ExpertsParallelGrad on CUDA: expert parallelism as experts.cc does
// it (each token sent once to every rank holding one of its experts through an all-to-all-v, the
// rank's experts run on what it received, the results come back and add up over the ranks in
// order), with the routing, the send buffers, the experts and the combine on the device.
//
// The all-to-all-v takes its send counts on the host, so the kernel copies the per-rank counts
// (G + 1 integers) to the host and waits for them: the one wait of the forward pass. A
// communicator whose backend is "nccl" takes device tensors; any other (the in-process one)
// takes host tensors, so each exchange then copies its rows to the host, waits, exchanges, and
// copies the received rows back (the host copies live until a last wait at the end).
//
// Without a shard group (or a group of one) the ops compute every expert locally, as moe.Experts
// does, and h is zeros, as on the CPU.
#include <cuda_runtime.h>

#include <string>
#include <vector>

#include "cuda/experts_cuda.h"
#include "cuda/register.h"
#include "weir/cuda_kernel.h"
#include "weir/runtime/communicator.h"
#include "weir/runtime/world.h"

namespace weir::moe {
namespace {

using weir::cuda::Check;
using weir::cuda::Scratch;
using weir::cuda::Stream;

std::string Str(int64_t v) { return std::to_string(v); }

int64_t LeadingCount(const Shape& s) {
  int64_t n = 1;
  for (size_t i = 0; i + 1 < s.size(); ++i) n *= s[i];
  return n;
}

// Exchanges rows through the shard group, from and to device tensors.
class Exchanger {
 public:
  Exchanger(const KernelContext& ctx, Communicator* group) : ctx_(ctx), group_(group) {}

  // `rows` [R, ...] on the device, send_counts[j] of them to rank j; returns the received rows
  // on the device and how many came from each rank.
  StatusOr<Tensor> Exchange(const Tensor& rows, const std::vector<int64_t>& send_counts,
                            std::vector<int64_t>* recv_counts) {
    Communicator::AllToAllVResult received;
    if (group_->backend() == "nccl") {
      // The communicator may read on a stream of its own: the rows must be complete first.
      WEIR_RETURN_IF_ERROR(ctx_.device()->Synchronize());
      WEIR_ASSIGN_OR_RETURN(received, group_->AllToAllV(rows, send_counts));
    } else {
      Tensor host = Tensor::Empty(rows.dtype(), rows.shape());
      if (rows.nbytes() > 0) {
        WEIR_RETURN_IF_ERROR(Check(cudaMemcpyAsync(host.raw_data(), rows.raw_data(), rows.nbytes(),
                                                   cudaMemcpyDeviceToHost, Stream(ctx_)),
                                   "moe.ExpertsParallel: copy rows to the host"));
      }
      WEIR_RETURN_IF_ERROR(ctx_.device()->Synchronize());
      WEIR_ASSIGN_OR_RETURN(received, group_->AllToAllV(host, send_counts));
    }
    *recv_counts = received.recv_counts;
    if (received.tensor.device().type == DeviceType::kCuda) return received.tensor;
    Tensor host = received.tensor.Contiguous();
    WEIR_ASSIGN_OR_RETURN(Tensor device, Scratch(ctx_, host.dtype(), host.shape()));
    if (host.nbytes() > 0) {
      WEIR_RETURN_IF_ERROR(Check(cudaMemcpyAsync(device.raw_data(), host.raw_data(), host.nbytes(),
                                                 cudaMemcpyHostToDevice, Stream(ctx_)),
                                 "moe.ExpertsParallel: copy rows to the device"));
      keep_alive_.push_back(host);
    }
    return device;
  }

  // Waits for the copies from host memory, so that memory can go.
  Status Finish() {
    if (keep_alive_.empty()) return Status();
    Status s = ctx_.device()->Synchronize();
    keep_alive_.clear();
    return s;
  }

 private:
  const KernelContext& ctx_;
  Communicator* group_;
  std::vector<Tensor> keep_alive_;
};

// Where this rank's tokens go (experts.cc's Routing), on the device, with the counts on the host.
struct Route {
  int ranks = 1, rank = 0;
  int64_t per_rank = 0, tokens = 0, k = 0;
  Tensor flags;     // i32 [G, N]
  Tensor position;  // i32 [G·N + 1]
  std::vector<int64_t> send_counts;
  int64_t sent = 0;  // rows in the send buffer

  const int32_t* Flags() const { return flags.data<int32_t>(); }
  const int32_t* Position() const { return position.data<int32_t>(); }
};

StatusOr<Route> MakeRoute(const KernelContext& ctx, Communicator* group, const Tensor& indices,
                          int64_t experts) {
  Route r;
  r.ranks = group->size();
  r.rank = group->rank();
  r.per_rank = experts / r.ranks;
  r.k = indices.dim(-1);
  r.tokens = r.k == 0 ? 0 : indices.numel() / r.k;
  int64_t pairs = r.ranks * r.tokens;
  WEIR_ASSIGN_OR_RETURN(r.flags, Scratch(ctx, DT_I32, {pairs}));
  WEIR_ASSIGN_OR_RETURN(r.position, Scratch(ctx, DT_I32, {pairs + 1}));
  WEIR_ASSIGN_OR_RETURN(Tensor fence, Scratch(ctx, DT_I32, {r.ranks + 1}));
  WEIR_RETURN_IF_ERROR(
      cuda_experts::RouteFlags(ctx, indices, r.ranks, r.per_rank, r.flags.data<int32_t>()));
  WEIR_RETURN_IF_ERROR(
      cuda_experts::ExclusiveScan(ctx, r.flags.data<int32_t>(), pairs, r.position.data<int32_t>()));
  WEIR_RETURN_IF_ERROR(cuda_experts::RankFences(ctx, r.position.data<int32_t>(), r.ranks, r.tokens,
                                                fence.data<int32_t>()));
  std::vector<int32_t> host(static_cast<size_t>(r.ranks + 1));
  WEIR_RETURN_IF_ERROR(Check(cudaMemcpyAsync(host.data(), fence.raw_data(), fence.nbytes(),
                                             cudaMemcpyDeviceToHost, Stream(ctx)),
                             "moe.ExpertsParallel: copy the send counts to the host"));
  WEIR_RETURN_IF_ERROR(ctx.device()->Synchronize());
  for (int j = 0; j < r.ranks; ++j)
    r.send_counts.push_back(host[static_cast<size_t>(j + 1)] - host[static_cast<size_t>(j)]);
  r.sent = host.back();
  return r;
}

// The rows of a [N, w] device tensor for the send buffer [R, w].
StatusOr<Tensor> SendRows(const KernelContext& ctx, const Route& r, const Tensor& rows) {
  int64_t width = r.tokens == 0 ? 0 : rows.numel() / r.tokens;
  WEIR_ASSIGN_OR_RETURN(Tensor out, Scratch(ctx, rows.dtype(), {r.sent, width}));
  WEIR_RETURN_IF_ERROR(cuda_experts::GatherSendRows(
      ctx, rows.raw_data(), width * static_cast<int64_t>(DataTypeSize(rows.dtype())), r.Flags(),
      r.Position(), r.ranks, r.tokens, out.raw_data()));
  return out;
}

// What this rank's experts receive.
struct Received {
  Tensor x, weights, indices, dy;
  std::vector<int64_t> counts;  // rows from each rank
};

StatusOr<Received> Dispatch(const KernelContext& ctx, Exchanger& exchanger, const Route& r,
                            const Tensor& x, const Tensor& weights, const Tensor& indices,
                            const Tensor* dy) {
  Received in;
  std::vector<int64_t> counts;
  WEIR_ASSIGN_OR_RETURN(Tensor xs, SendRows(ctx, r, x));
  WEIR_ASSIGN_OR_RETURN(in.x, exchanger.Exchange(xs, r.send_counts, &in.counts));
  WEIR_ASSIGN_OR_RETURN(Tensor ws, SendRows(ctx, r, weights));
  WEIR_ASSIGN_OR_RETURN(in.weights, exchanger.Exchange(ws, r.send_counts, &counts));
  WEIR_ASSIGN_OR_RETURN(Tensor is, Scratch(ctx, DT_I64, {r.sent, r.k}));
  WEIR_RETURN_IF_ERROR(cuda_experts::SendIndices(ctx, indices, r.Flags(), r.Position(), r.ranks,
                                                 r.per_rank, is.data<int64_t>()));
  WEIR_ASSIGN_OR_RETURN(in.indices, exchanger.Exchange(is, r.send_counts, &counts));
  if (dy != nullptr) {
    WEIR_ASSIGN_OR_RETURN(Tensor dys, SendRows(ctx, r, *dy));
    WEIR_ASSIGN_OR_RETURN(in.dy, exchanger.Exchange(dys, r.send_counts, &counts));
  }
  return in;
}

// Sends `local` [M, w] back to the tokens' ranks and sums what returns into dst [N, w].
Status Combine(const KernelContext& ctx, Exchanger& exchanger, const Route& r,
               const std::vector<int64_t>& recv_counts, const Tensor& local, const Tensor& dst) {
  std::vector<int64_t> counts;
  WEIR_ASSIGN_OR_RETURN(Tensor back, exchanger.Exchange(local, recv_counts, &counts));
  return cuda_experts::CombineRanks(ctx, back, r.Flags(), r.Position(), r.ranks, r.tokens, dst);
}

// This rank's experts of a [E, ...] weight: a view of rows [rank·per_rank, (rank+1)·per_rank).
Tensor LocalExperts(const Tensor& w, const Route& r) {
  return w.Slice(0, r.rank * r.per_rank, (r.rank + 1) * r.per_rank);
}

Status CheckInputs(const KernelContext& ctx, Communicator* group) {
  const Tensor &x = ctx.input(0), &weights = ctx.input(1), &indices = ctx.input(2),
               &w1 = ctx.input(3);
  if (x.shape().empty() || weights.shape().empty() || weights.dtype() != x.dtype() ||
      indices.dtype() != DT_I64 || indices.shape() != weights.shape() ||
      LeadingCount(weights.shape()) != LeadingCount(x.shape())) {
    return InvalidArgument("x " + x.DebugString() + ", weights " + weights.DebugString() +
                           " and indices " + indices.DebugString() + " do not fit together");
  }
  if (w1.shape().size() != 3)
    return InvalidArgument("w1 " + w1.DebugString() + " is not [E, I, d]");
  int64_t e = w1.dim(0), i = w1.dim(1), d = x.dim(-1);
  Shape up{e, i, d}, down{e, d, i};
  const Tensor &w3 = ctx.input(4), &w2 = ctx.input(5);
  if (w1.shape() != up || w3.shape() != up || w2.shape() != down || w1.dtype() != x.dtype() ||
      w3.dtype() != x.dtype() || w2.dtype() != x.dtype()) {
    return InvalidArgument("w1 " + w1.DebugString() + ", w3 " + w3.DebugString() + ", w2 " +
                           w2.DebugString() + " do not fit x " + x.DebugString());
  }
  int ranks = group == nullptr ? 1 : group->size();
  if (e % ranks != 0) {
    return InvalidArgument(Str(e) + " routed experts do not divide over " + Str(ranks) +
                           " expert-parallel ranks");
  }
  return Status();
}

Status Zero(const KernelContext& ctx, const Tensor& t) {
  return Check(cudaMemsetAsync(t.raw_data(), 0, t.nbytes(), Stream(ctx)), "moe.ExpertsParallel");
}

// Inputs 0 x, 1 weights, 2 indices, 3 w1, 4 w3, 5 w2. Outputs 0 y, 1 h (zeros).
Status ExpertsParallelCuda(KernelContext& ctx) {
  Communicator* group = ShardGroup();
  WEIR_RETURN_IF_ERROR(CheckInputs(ctx, group));
  const Tensor &x = ctx.input(0), &weights = ctx.input(1), &indices = ctx.input(2),
               &w1 = ctx.input(3), &w3 = ctx.input(4), &w2 = ctx.input(5);
  int64_t k = weights.dim(-1), inter = w1.dim(1), d = x.dim(-1);
  WEIR_RETURN_IF_ERROR(Zero(ctx, ctx.output(1)));
  if (group == nullptr || group->size() == 1) {
    WEIR_ASSIGN_OR_RETURN(Tensor h, Scratch(ctx, x.dtype(), ctx.output(1).shape()));
    return cuda_experts::Forward(ctx, x, weights, indices, w1, w3, w2, ctx.output(0), h);
  }
  WEIR_ASSIGN_OR_RETURN(Route r, MakeRoute(ctx, group, indices, w1.dim(0)));
  Exchanger exchanger(ctx, group);
  WEIR_ASSIGN_OR_RETURN(Received in, Dispatch(ctx, exchanger, r, x, weights, indices, nullptr));
  int64_t m = in.x.dim(0);
  WEIR_ASSIGN_OR_RETURN(Tensor y_local, Scratch(ctx, x.dtype(), {m, d}));
  WEIR_ASSIGN_OR_RETURN(Tensor h_local, Scratch(ctx, x.dtype(), {m * k, 2 * inter}));
  WEIR_RETURN_IF_ERROR(cuda_experts::Forward(ctx, in.x, in.weights, in.indices, LocalExperts(w1, r),
                                             LocalExperts(w3, r), LocalExperts(w2, r), y_local,
                                             h_local));
  WEIR_RETURN_IF_ERROR(Combine(ctx, exchanger, r, in.counts, y_local, ctx.output(0)));
  return exchanger.Finish();
}

// Inputs 0 x, 1 weights, 2 indices, 3 w1, 4 w3, 5 w2, 6 dy. Outputs dx, dweights, dw1, dw3, dw2.
Status ExpertsParallelGradCuda(KernelContext& ctx) {
  Communicator* group = ShardGroup();
  WEIR_RETURN_IF_ERROR(CheckInputs(ctx, group));
  const Tensor &x = ctx.input(0), &weights = ctx.input(1), &indices = ctx.input(2),
               &w1 = ctx.input(3), &w3 = ctx.input(4), &w2 = ctx.input(5), &dy = ctx.input(6);
  if (dy.dtype() != x.dtype() || dy.shape() != x.shape())
    return InvalidArgument("dy " + dy.DebugString() + " does not fit x " + x.DebugString());
  int64_t k = weights.dim(-1), inter = w1.dim(1), d = x.dim(-1), experts = w1.dim(0);
  if (group == nullptr || group->size() == 1) {
    int64_t n = LeadingCount(x.shape());
    WEIR_ASSIGN_OR_RETURN(Tensor y, Scratch(ctx, x.dtype(), {n, d}));
    WEIR_ASSIGN_OR_RETURN(Tensor h, Scratch(ctx, x.dtype(), {n * k, 2 * inter}));
    WEIR_ASSIGN_OR_RETURN(Tensor dh, Scratch(ctx, x.dtype(), {n * k, 2 * inter}));
    WEIR_RETURN_IF_ERROR(cuda_experts::Forward(ctx, x, weights, indices, w1, w3, w2, y, h));
    WEIR_RETURN_IF_ERROR(cuda_experts::Backward(ctx, weights, indices, w1, w3, w2, h, dy,
                                                ctx.output(0), ctx.output(1), dh));
    return cuda_experts::WeightBackward(ctx, x, weights, indices, h, dh, dy, experts,
                                        ctx.output(2).raw_data(), ctx.output(3).raw_data(),
                                        ctx.output(4).raw_data());
  }
  WEIR_ASSIGN_OR_RETURN(Route r, MakeRoute(ctx, group, indices, experts));
  Exchanger exchanger(ctx, group);
  WEIR_ASSIGN_OR_RETURN(Received in, Dispatch(ctx, exchanger, r, x, weights, indices, &dy));
  int64_t m = in.x.dim(0);
  Tensor w1l = LocalExperts(w1, r), w3l = LocalExperts(w3, r), w2l = LocalExperts(w2, r);
  // The pre-activations again (moe.ExpertsParallel's h is zeros).
  WEIR_ASSIGN_OR_RETURN(Tensor y_local, Scratch(ctx, x.dtype(), {m, d}));
  WEIR_ASSIGN_OR_RETURN(Tensor h_local, Scratch(ctx, x.dtype(), {m * k, 2 * inter}));
  WEIR_RETURN_IF_ERROR(
      cuda_experts::Forward(ctx, in.x, in.weights, in.indices, w1l, w3l, w2l, y_local, h_local));
  WEIR_ASSIGN_OR_RETURN(Tensor dx_local, Scratch(ctx, x.dtype(), {m, d}));
  WEIR_ASSIGN_OR_RETURN(Tensor dweights_local, Scratch(ctx, x.dtype(), {m, k}));
  WEIR_ASSIGN_OR_RETURN(Tensor dh_local, Scratch(ctx, x.dtype(), {m * k, 2 * inter}));
  WEIR_RETURN_IF_ERROR(cuda_experts::Backward(ctx, in.weights, in.indices, w1l, w3l, w2l, h_local,
                                              in.dy, dx_local, dweights_local, dh_local));
  // This rank's experts' gradients in place in the full outputs, zeros elsewhere.
  std::vector<char*> mine;
  for (int o = 2; o < 5; ++o) {
    const Tensor& full = ctx.output(o);
    WEIR_RETURN_IF_ERROR(Zero(ctx, full));
    size_t each = full.nbytes() / static_cast<size_t>(r.ranks);
    mine.push_back(static_cast<char*>(full.raw_data()) + static_cast<size_t>(r.rank) * each);
  }
  WEIR_RETURN_IF_ERROR(cuda_experts::WeightBackward(ctx, in.x, in.weights, in.indices, h_local,
                                                    dh_local, in.dy, r.per_rank, mine[0], mine[1],
                                                    mine[2]));
  // dx and dweights go back to the tokens' ranks (unused slots carry 0).
  WEIR_RETURN_IF_ERROR(Combine(ctx, exchanger, r, in.counts, dx_local, ctx.output(0)));
  WEIR_RETURN_IF_ERROR(Combine(ctx, exchanger, r, in.counts, dweights_local, ctx.output(1)));
  return exchanger.Finish();
}

}  // namespace

void RegisterExpertsParallelCuda(Registrar& r) {
  r.Kernel("moe.ExpertsParallel", "cuda", ExpertsParallelCuda, KernelFloatTypes());
  r.Kernel("moe.ExpertsParallelGrad", "cuda", ExpertsParallelGradCuda, KernelFloatTypes());
}

}  // namespace weir::moe
