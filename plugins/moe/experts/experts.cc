// moe.Experts: the routed experts of DeepSeekMoE (../shared/spec/deepseek.md §3.1, step 9 of §3.2):
// y_t = Σ_k weights[t,k] · w2[e]·(silu(w1[e]·x_t) ⊙ w3[e]·x_t), e = indices[t,k], each expert a
// SwiGLU. Run as permute → grouped GEMM → unpermute and weighted combine:
//
//  - permute: a stable counting sort of the N·K (token, slot) pairs by expert, so each expert's
//    rows are contiguous and in token order ("rows" below are positions in that order);
//  - grouped GEMM: each expert's rows are cut into tiles of at most kRowBlock rows; a TBB task per
//    tile gathers its x rows and runs the expert's GEMMs on them with GemmBlock, single-threaded
//    (SingleThreadedGemms: the tiles already fill the cores);
//  - combine: per token, the K expert outputs summed in slot order.
//
// Every value is written by exactly one task and every sum runs in a fixed order, so the results
// are bitwise the same whatever the thread scheduling. bf16 computes in f32 and rounds what it
// stores; f64 runs in f64.
//
// The backward pass is split in two ops, so the weight gradients are W nodes:
//  - moe.ExpertsGrad (B): dx, dweights and the permuted gradient of the gate/up pre-activations dh;
//  - moe.ExpertsWeightGrad (W): dw1, dw3, dw2 from x, dh, dy and the saved pre-activations.
#include <tbb/blocked_range.h>
#include <tbb/parallel_for.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <map>
#include <string>
#include <type_traits>
#include <vector>

#include "moe_ops.h"
#include "weir/dispatch.h"
#include "weir/gemm.h"
#include "weir/parallel.h"
#include "weir/runtime/world.h"
#include "weir/vec_math.h"

namespace weir::moe {
namespace {

// Rows per GEMM tile, and the contraction chunk of the weight-gradient GEMMs. Large enough for
// the GEMMs to run near their peak; bounded so that the GEMM shapes (and so oneDNN's primitive
// cache) stay few however the load falls on the experts.
constexpr int64_t kRowBlock = 256;
// Rows of a weight gradient per task, so a few experts still spread over the cores.
constexpr int64_t kOutBlock = 128;

std::string Str(int64_t v) { return std::to_string(v); }

// The product of all dims but the last (the token count of a [..., d] tensor).
int64_t LeadingCount(const Shape& s) {
  int64_t n = 1;
  for (size_t i = 0; i + 1 < s.size(); ++i) n *= s[i];
  return n;
}

Shape Leading(const Shape& s) { return Shape(s.begin(), s.end() - (s.empty() ? 0 : 1)); }

// Checks x [..., d], weights [..., K] (x's dtype) and indices i64 [..., K] against each other.
Status CheckRouting(const TensorType& x, const TensorType& weights, const TensorType& indices) {
  if (x.shape.empty() || x.shape.back() < 1)
    return InvalidArgument("x " + x.ToString() + " needs a non-empty feature dim [..., d]");
  if (weights.shape.empty() || Leading(weights.shape) != Leading(x.shape)) {
    return InvalidArgument("weights " + weights.ToString() + " do not fit x " + x.ToString() +
                           ": expected the tokens of x and K slots, [..., K]");
  }
  if (weights.dtype != x.dtype) {
    return InvalidArgument("weights " + weights.ToString() + " and x " + x.ToString() +
                           " differ in dtype");
  }
  if (indices.dtype != DT_I64 || indices.shape != weights.shape) {
    return InvalidArgument("indices " + indices.ToString() + " do not fit weights " +
                           weights.ToString() + ": expected i64 of the same shape (same K)");
  }
  return Status();
}

// Checks a weight against the shape it must have.
Status CheckWeight(const char* name, const TensorType& w, DataType dtype, const Shape& want,
                   const TensorType& x) {
  if (w.dtype == dtype && w.shape == want) return Status();
  return InvalidArgument(std::string(name) + " " + w.ToString() + " does not fit x " +
                         x.ToString() + ": expected " + DataTypeName(dtype) + ShapeString(want));
}

// The N·K (token, slot) pairs sorted by expert, stably: expert e's rows are
// [offsets[e], offsets[e + 1]), in token (then slot) order. A slot whose index is -1 is unused
// (expert parallelism: another rank's expert) and has no row.
struct Permutation {
  std::vector<int64_t> offsets;      // [E + 1]
  std::vector<int64_t> slot_of_row;  // row → slot t·K + k
  std::vector<int64_t> row_of_slot;  // slot → row, -1 for an unused slot
};

StatusOr<Permutation> Permute(const Tensor& indices, int64_t experts) {
  int64_t slots = indices.numel(), k = indices.shape().empty() ? 1 : indices.dim(-1);
  const int64_t* idx = indices.data<int64_t>();
  Permutation p;
  p.offsets.assign(static_cast<size_t>(experts + 1), 0);
  for (int64_t s = 0; s < slots; ++s) {
    int64_t e = idx[s];
    if (e < -1 || e >= experts) {
      return InvalidArgument("indices[token " + Str(s / k) + ", slot " + Str(s % k) +
                             "] = " + Str(e) + " is not an expert: n_routed_experts is " +
                             Str(experts) + ", so indices must lie in [0, " + Str(experts) +
                             ") (or be -1: an unused slot)");
    }
    if (e >= 0) ++p.offsets[static_cast<size_t>(e + 1)];
  }
  for (int64_t e = 0; e < experts; ++e)
    p.offsets[static_cast<size_t>(e + 1)] += p.offsets[static_cast<size_t>(e)];
  std::vector<int64_t> next(p.offsets.begin(), p.offsets.end() - 1);
  p.slot_of_row.resize(static_cast<size_t>(p.offsets.back()));
  p.row_of_slot.assign(static_cast<size_t>(slots), -1);
  for (int64_t s = 0; s < slots; ++s) {
    if (idx[s] < 0) continue;
    int64_t row = next[static_cast<size_t>(idx[s])]++;
    p.slot_of_row[static_cast<size_t>(row)] = s;
    p.row_of_slot[static_cast<size_t>(s)] = row;
  }
  return p;
}

// A block of one expert's rows: [row0, row0 + rows).
struct Tile {
  int64_t expert, row0, rows;
};

std::vector<Tile> Tiles(const Permutation& p) {
  std::vector<Tile> tiles;
  for (size_t e = 0; e + 1 < p.offsets.size(); ++e)
    for (int64_t r = p.offsets[e]; r < p.offsets[e + 1]; r += kRowBlock)
      tiles.push_back({static_cast<int64_t>(e), r, std::min(kRowBlock, p.offsets[e + 1] - r)});
  return tiles;
}

// The per-token sums of the combine steps: dst_t = Σ_k scale(t·K + k) · src[row of (t, k)] over
// the slots in order (a fixed order, so the bits do not depend on the threads).
template <typename T, typename A, typename Scale>
void CombineTokens(const Permutation& p, const std::vector<A>& src, int64_t n, int64_t k, int64_t d,
                   Scale scale, T* dst) {
  ParallelFor(n, std::max<int64_t>(1, 4096 / d), [&](int64_t begin, int64_t end) {
    std::vector<A> acc(static_cast<size_t>(d));
    for (int64_t t = begin; t < end; ++t) {
      std::fill(acc.begin(), acc.end(), A(0));
      for (int64_t s = t * k; s < (t + 1) * k; ++s) {
        int64_t r = p.row_of_slot[static_cast<size_t>(s)];
        if (r < 0) continue;
        A w = scale(s);
        const A* row = src.data() + r * d;
        for (int64_t j = 0; j < d; ++j) acc[static_cast<size_t>(j)] += w * row[j];
      }
      for (int64_t j = 0; j < d; ++j) dst[t * d + j] = Narrow<T>(acc[static_cast<size_t>(j)]);
    }
  });
}

// Runs the GEMM tasks [0, n), one per TBB task, each with single-threaded GEMMs.
template <typename F>
Status ParallelGemmTasks(int64_t n, F&& f) {
  FirstError first;
  tbb::parallel_for(tbb::blocked_range<int64_t>(0, n, 1),
                    [&](const tbb::blocked_range<int64_t>& r) {
                      SingleThreadedGemms one_thread;  // the tasks already fill the cores
                      for (int64_t i = r.begin(); i < r.end() && !first.failed(); ++i)
                        first.Record(f(i));
                    });
  return first.status();
}

template <typename A>
A Sigmoid(A v) {
  return A(1) / (A(1) + Exp(-v));
}

// The SwiGLU activation as the forward pass feeds it to w2: silu(gate)·up from the stored
// (rounded) pre-activations, rounded to T. The backward passes recompute it the same way.
template <typename T, typename A = AccumulatorOf<T>>
T Activation(T gate, T up) {
  A g = Widen(gate);
  return Narrow<T>(g * Sigmoid(g) * Widen(up));
}

// Copies the rows `slots[0, rows)` / k of a [N, width] matrix (the tokens of those slots) into
// dst [rows, cols], columns [col0, col0 + cols).
template <typename T>
void GatherTokens(const T* src, int64_t width, int64_t col0, int64_t cols, const int64_t* slots,
                  int64_t rows, int64_t k, T* dst) {
  for (int64_t r = 0; r < rows; ++r)
    std::memcpy(dst + r * cols, src + slots[r] / k * width + col0,
                static_cast<size_t>(cols) * sizeof(T));
}

// The sizes every kernel works with.
struct Dims {
  int64_t n, k, d, e, i;
};

// ---- moe.Experts ---------------------------------------------------------------------------

Status ExpertsShape(ShapeContext& ctx) {
  const TensorType &x = ctx.input(0), &weights = ctx.input(1), &indices = ctx.input(2);
  DataType t = ctx.attrs().Type("T");
  if (x.dtype != t) {
    return InvalidArgument("x " + x.ToString() +
                           " is not of the compute dtype T = " + DataTypeName(t));
  }
  WEIR_RETURN_IF_ERROR(CheckRouting(x, weights, indices));
  int64_t e = ctx.attrs().Int("n_routed_experts"), i = ctx.attrs().Int("moe_intermediate_size"),
          d = x.shape.back();
  WEIR_RETURN_IF_ERROR(CheckWeight("w1", ctx.input(3), t, {e, i, d}, x));
  WEIR_RETURN_IF_ERROR(CheckWeight("w3", ctx.input(4), t, {e, i, d}, x));
  WEIR_RETURN_IF_ERROR(CheckWeight("w2", ctx.input(5), t, {e, d, i}, x));
  ctx.set_output(0, x);
  ctx.set_output(1, {t, {LeadingCount(x.shape) * weights.shape.back(), 2 * i}});
  return Status();
}

template <typename T>
Status ExpertsForward(KernelContext& ctx) {
  using A = AccumulatorOf<T>;
  constexpr DataType kT = DataTypeOf<T>(), kA = DataTypeOf<A>();
  Tensor x = ctx.input(0).Contiguous(), weights = ctx.input(1).Contiguous(),
         indices = ctx.input(2).Contiguous(), w1 = ctx.input(3).Contiguous(),
         w3 = ctx.input(4).Contiguous(), w2 = ctx.input(5).Contiguous();
  Dims dm{LeadingCount(x.shape()), weights.dim(-1), x.dim(-1), w1.dim(0), w1.dim(1)};
  WEIR_ASSIGN_OR_RETURN(Permutation p, Permute(indices, dm.e));
  const int64_t d = dm.d, inter = dm.i, k = dm.k;
  const T *xs = x.data<T>(), *ws = weights.data<T>(), *w1s = w1.data<T>(), *w3s = w3.data<T>(),
          *w2s = w2.data<T>();
  T* h = ctx.output(1).data<T>();                         // [N·K, 2I]: gate | up, permuted
  std::vector<A> out(static_cast<size_t>(dm.n * k * d));  // expert outputs, permuted, unweighted
  std::vector<Tile> tiles = Tiles(p);
  WEIR_RETURN_IF_ERROR(ParallelGemmTasks(static_cast<int64_t>(tiles.size()), [&](int64_t task) {
    const Tile& tile = tiles[static_cast<size_t>(task)];
    int64_t e = tile.expert, rows = tile.rows;
    std::vector<T> xt(static_cast<size_t>(rows * d)), act(static_cast<size_t>(rows * inter));
    std::vector<A> gu(static_cast<size_t>(rows * 2 * inter));
    GatherTokens(xs, d, 0, d, p.slot_of_row.data() + tile.row0, rows, k, xt.data());
    WEIR_RETURN_IF_ERROR(GemmBlock(kT, kA, rows, inter, d, {xt.data(), d},
                                   {w1s + e * inter * d, d, true}, gu.data(), 2 * inter));
    WEIR_RETURN_IF_ERROR(GemmBlock(kT, kA, rows, inter, d, {xt.data(), d},
                                   {w3s + e * inter * d, d, true}, gu.data() + inter, 2 * inter));
    for (int64_t r = 0; r < rows; ++r) {
      const A* src = gu.data() + r * 2 * inter;
      T* dst = h + (tile.row0 + r) * 2 * inter;
      for (int64_t j = 0; j < 2 * inter; ++j) dst[j] = Narrow<T>(src[j]);
      for (int64_t j = 0; j < inter; ++j)
        act[static_cast<size_t>(r * inter + j)] = Activation(dst[j], dst[inter + j]);
    }
    return GemmBlock(kT, kA, rows, d, inter, {act.data(), inter},
                     {w2s + e * d * inter, inter, true}, out.data() + tile.row0 * d, d);
  }));
  // Combine: y_t = Σ_k weights[t,k] · out[row of (t,k)], the slots in order.
  CombineTokens(
      p, out, dm.n, k, d, [&](int64_t s) { return Widen(ws[s]); }, ctx.output(0).data<T>());
  return Status();
}

Status ExpertsCpu(KernelContext& ctx) {
  return DispatchFloat(ctx.input(0).dtype(),
                       [&](auto tag) { return ExpertsForward<decltype(tag)>(ctx); });
}

// ---- moe.ExpertsGrad (B) --------------------------------------------------------------------
// Inputs: weights, indices, w1, w3, w2, h (saved), dy. Outputs: dx, dweights, dh.

Status ExpertsGradShape(ShapeContext& ctx) {
  const TensorType &weights = ctx.input(0), &indices = ctx.input(1), &w1 = ctx.input(2),
                   &h = ctx.input(5), &dy = ctx.input(6);
  WEIR_RETURN_IF_ERROR(CheckRouting(dy, weights, indices));
  if (w1.shape.size() != 3) return InvalidArgument("w1 " + w1.ToString() + " is not [E, I, d]");
  int64_t e = w1.shape[0], i = w1.shape[1], d = dy.shape.back();
  WEIR_RETURN_IF_ERROR(CheckWeight("w1", w1, dy.dtype, {e, i, d}, dy));
  WEIR_RETURN_IF_ERROR(CheckWeight("w3", ctx.input(3), dy.dtype, {e, i, d}, dy));
  WEIR_RETURN_IF_ERROR(CheckWeight("w2", ctx.input(4), dy.dtype, {e, d, i}, dy));
  WEIR_RETURN_IF_ERROR(
      CheckWeight("h", h, dy.dtype, {LeadingCount(dy.shape) * weights.shape.back(), 2 * i}, dy));
  ctx.set_output(0, dy);
  ctx.set_output(1, weights);
  ctx.set_output(2, h);
  return Status();
}

template <typename T>
Status ExpertsBackward(KernelContext& ctx) {
  using A = AccumulatorOf<T>;
  constexpr DataType kT = DataTypeOf<T>(), kA = DataTypeOf<A>();
  Tensor weights = ctx.input(0).Contiguous(), indices = ctx.input(1).Contiguous(),
         w1 = ctx.input(2).Contiguous(), w3 = ctx.input(3).Contiguous(),
         w2 = ctx.input(4).Contiguous(), h_in = ctx.input(5).Contiguous(),
         dy_in = ctx.input(6).Contiguous();
  Dims dm{LeadingCount(dy_in.shape()), weights.dim(-1), dy_in.dim(-1), w1.dim(0), w1.dim(1)};
  WEIR_ASSIGN_OR_RETURN(Permutation p, Permute(indices, dm.e));
  const int64_t d = dm.d, inter = dm.i, k = dm.k;
  const T *ws = weights.data<T>(), *w1s = w1.data<T>(), *w3s = w3.data<T>(), *w2s = w2.data<T>(),
          *h = h_in.data<T>(), *dy = dy_in.data<T>();
  T* dweights = ctx.output(1).data<T>();
  std::fill(dweights, dweights + weights.numel(), T(0));  // unused slots (-1) stay 0
  T* dh = ctx.output(2).data<T>();
  std::vector<A> dxp(static_cast<size_t>(dm.n * k * d));  // dx per row, permuted
  std::vector<Tile> tiles = Tiles(p);
  WEIR_RETURN_IF_ERROR(ParallelGemmTasks(static_cast<int64_t>(tiles.size()), [&](int64_t task) {
    const Tile& tile = tiles[static_cast<size_t>(task)];
    int64_t e = tile.expert, rows = tile.rows;
    const int64_t* slots = p.slot_of_row.data() + tile.row0;
    std::vector<T> dyt(static_cast<size_t>(rows * d));
    std::vector<A> g(static_cast<size_t>(rows * inter));
    GatherTokens(dy, d, 0, d, slots, rows, k, dyt.data());
    // g = dy · w2[e]: the gradient of the activation before the routing weight.
    WEIR_RETURN_IF_ERROR(GemmBlock(kT, kA, rows, inter, d, {dyt.data(), d},
                                   {w2s + e * d * inter, inter}, g.data(), inter));
    for (int64_t r = 0; r < rows; ++r) {
      const T* hr = h + (tile.row0 + r) * 2 * inter;
      T* dhr = dh + (tile.row0 + r) * 2 * inter;
      const A* gr = g.data() + r * inter;
      A w = Widen(ws[slots[r]]), dot = 0;
      for (int64_t j = 0; j < inter; ++j) {
        A gate = Widen(hr[j]), up = Widen(hr[inter + j]), sig = Sigmoid(gate);
        dot += gr[j] * Widen(Activation(hr[j], hr[inter + j]));  // dy · (w2[e] · act)
        A da = w * gr[j];
        dhr[j] = Narrow<T>(da * up * sig * (A(1) + gate * (A(1) - sig)));
        dhr[inter + j] = Narrow<T>(da * gate * sig);
      }
      dweights[slots[r]] = Narrow<T>(dot);
    }
    // dx per row = dgate · w1[e] + dup · w3[e].
    const T* dht = dh + tile.row0 * 2 * inter;
    A* dxt = dxp.data() + tile.row0 * d;
    WEIR_RETURN_IF_ERROR(
        GemmBlock(kT, kA, rows, d, inter, {dht, 2 * inter}, {w1s + e * inter * d, d}, dxt, d));
    return GemmBlock(kT, kA, rows, d, inter, {dht + inter, 2 * inter}, {w3s + e * inter * d, d},
                     dxt, d, /*accumulate=*/true);
  }));
  CombineTokens(
      p, dxp, dm.n, k, d, [](int64_t) { return A(1); }, ctx.output(0).data<T>());
  return Status();
}

Status ExpertsGradCpu(KernelContext& ctx) {
  return DispatchFloat(ctx.input(6).dtype(),
                       [&](auto tag) { return ExpertsBackward<decltype(tag)>(ctx); });
}

// ---- moe.ExpertsWeightGrad (W) --------------------------------------------------------------
// Inputs: x, weights, indices, h (saved), dh, dy. Outputs: dw1, dw3, dw2.

Status ExpertsWeightGradShape(ShapeContext& ctx) {
  const TensorType &x = ctx.input(0), &weights = ctx.input(1), &indices = ctx.input(2),
                   &h = ctx.input(3);
  WEIR_RETURN_IF_ERROR(CheckRouting(x, weights, indices));
  if (h.shape.size() != 2 || h.shape[1] % 2 != 0)
    return InvalidArgument("h " + h.ToString() + " is not [N·K, 2I]");
  int64_t e = ctx.attrs().Int("n_routed_experts"), i = h.shape[1] / 2, d = x.shape.back();
  Shape rows{LeadingCount(x.shape) * weights.shape.back(), 2 * i};
  WEIR_RETURN_IF_ERROR(CheckWeight("h", h, x.dtype, rows, x));
  WEIR_RETURN_IF_ERROR(CheckWeight("dh", ctx.input(4), x.dtype, rows, x));
  WEIR_RETURN_IF_ERROR(CheckWeight("dy", ctx.input(5), x.dtype, x.shape, x));
  ctx.set_output(0, {x.dtype, {e, i, d}});
  ctx.set_output(1, {x.dtype, {e, i, d}});
  ctx.set_output(2, {x.dtype, {e, d, i}});
  return Status();
}

template <typename T>
Status ExpertsWeightBackward(KernelContext& ctx) {
  using A = AccumulatorOf<T>;
  constexpr DataType kT = DataTypeOf<T>(), kA = DataTypeOf<A>();
  constexpr bool kDirect = std::is_same_v<T, A>;  // accumulate straight into the outputs
  Tensor x = ctx.input(0).Contiguous(), weights = ctx.input(1).Contiguous(),
         indices = ctx.input(2).Contiguous(), h_in = ctx.input(3).Contiguous(),
         dh_in = ctx.input(4).Contiguous(), dy_in = ctx.input(5).Contiguous();
  Dims dm{LeadingCount(x.shape()), weights.dim(-1), x.dim(-1), ctx.attrs().Int("n_routed_experts"),
          h_in.dim(1) / 2};
  WEIR_ASSIGN_OR_RETURN(Permutation p, Permute(indices, dm.e));
  const int64_t d = dm.d, inter = dm.i, k = dm.k;
  const T *xs = x.data<T>(), *ws = weights.data<T>(), *h = h_in.data<T>(), *dh = dh_in.data<T>(),
          *dy = dy_in.data<T>();
  T *dw1 = ctx.output(0).data<T>(), *dw3 = ctx.output(1).data<T>(), *dw2 = ctx.output(2).data<T>();
  // Tasks: per expert, blocks of kOutBlock rows of dw1 and dw3 (together: they share the gathered
  // x), then blocks of rows of dw2. Each sums over the expert's rows in chunks of kRowBlock.
  struct Task {
    int64_t expert, row0, rows;
    bool down;
  };
  std::vector<Task> tasks;
  for (int64_t e = 0; e < dm.e; ++e) {
    for (int64_t i0 = 0; i0 < inter; i0 += kOutBlock)
      tasks.push_back({e, i0, std::min(kOutBlock, inter - i0), false});
    for (int64_t j0 = 0; j0 < d; j0 += kOutBlock)
      tasks.push_back({e, j0, std::min(kOutBlock, d - j0), true});
  }
  return ParallelGemmTasks(static_cast<int64_t>(tasks.size()), [&](int64_t index) -> Status {
    const Task& task = tasks[static_cast<size_t>(index)];
    int64_t e = task.expert, begin = p.offsets[static_cast<size_t>(e)],
            end = p.offsets[static_cast<size_t>(e + 1)];
    // The output block: rows [row0, row0 + rows) of dw1[e] and dw3[e] ([I, d]) or dw2[e] ([d, I]).
    int64_t cols = task.down ? inter : d;
    T* out1 = task.down ? dw2 + (e * d + task.row0) * inter : dw1 + (e * inter + task.row0) * d;
    T* out3 = task.down ? nullptr : dw3 + (e * inter + task.row0) * d;
    std::vector<A> scratch(kDirect ? 0
                                   : static_cast<size_t>((task.down ? 1 : 2) * task.rows * cols));
    A* c1 = kDirect ? reinterpret_cast<A*>(out1) : scratch.data();
    A* c3 = kDirect ? reinterpret_cast<A*>(out3) : scratch.data() + task.rows * cols;
    std::vector<T> a_rows(static_cast<size_t>(std::min(kRowBlock, end - begin) * d)), act;
    if (task.down) act.resize(static_cast<size_t>(std::min(kRowBlock, end - begin) * inter));
    if (begin == end) {  // no tokens: a zero gradient
      std::fill(c1, c1 + task.rows * cols, A(0));
      if (!task.down) std::fill(c3, c3 + task.rows * cols, A(0));
    }
    for (int64_t r0 = begin; r0 < end; r0 += kRowBlock) {
      int64_t rows = std::min(kRowBlock, end - r0);
      const int64_t* slots = p.slot_of_row.data() + r0;
      bool accumulate = r0 > begin;
      if (task.down) {
        // dw2[e] rows = dyᵀ[rows of the block, chunk] · (weights ⊙ act)[chunk, I].
        GatherTokens(dy, d, task.row0, task.rows, slots, rows, k, a_rows.data());
        for (int64_t r = 0; r < rows; ++r) {
          const T* hr = h + (r0 + r) * 2 * inter;
          A w = Widen(ws[slots[r]]);
          for (int64_t j = 0; j < inter; ++j)
            act[static_cast<size_t>(r * inter + j)] =
                Narrow<T>(w * Widen(Activation(hr[j], hr[inter + j])));
        }
        WEIR_RETURN_IF_ERROR(GemmBlock(kT, kA, task.rows, inter, rows,
                                       {a_rows.data(), task.rows, true}, {act.data(), inter}, c1,
                                       inter, accumulate));
      } else {
        // dw1[e] rows = dgateᵀ[rows of the block, chunk] · x[chunk, d]; dw3 from dup alike.
        GatherTokens(xs, d, 0, d, slots, rows, k, a_rows.data());
        const T* dht = dh + r0 * 2 * inter + task.row0;
        WEIR_RETURN_IF_ERROR(GemmBlock(kT, kA, task.rows, d, rows, {dht, 2 * inter, true},
                                       {a_rows.data(), d}, c1, d, accumulate));
        WEIR_RETURN_IF_ERROR(GemmBlock(kT, kA, task.rows, d, rows, {dht + inter, 2 * inter, true},
                                       {a_rows.data(), d}, c3, d, accumulate));
      }
    }
    if constexpr (!kDirect) {
      for (int64_t q = 0; q < task.rows * cols; ++q) out1[q] = Narrow<T>(c1[q]);
      if (!task.down)
        for (int64_t q = 0; q < task.rows * cols; ++q) out3[q] = Narrow<T>(c3[q]);
    }
    return Status();
  });
}

Status ExpertsWeightGradCpu(KernelContext& ctx) {
  return DispatchFloat(ctx.input(0).dtype(),
                       [&](auto tag) { return ExpertsWeightBackward<decltype(tag)>(ctx); });
}

// ---- moe.ExpertsParallel: expert parallelism -----------------------------------------------
// With a shard group of G ranks (ShardGroup(): train.Step's expert_parallel sets it), rank r
// holds experts [r·E/G, (r+1)·E/G) and computes them for every rank's tokens (spec §3.4, DeepEP's
// dispatch and combine): each token goes once to every rank that holds one of its experts, with
// its K slots (the other ranks' experts marked -1), through one all-to-all-v; the rank runs its
// experts as moe.Experts does; the weighted sums come back through a second all-to-all-v and add
// up, over the ranks in order. The backward pass dispatches x and dy the same way, recomputes
// the pre-activations, and combines dx and dweights back (the backward of dispatch is a combine);
// each rank's dw1, dw3, dw2 hold its own experts' gradients (zero elsewhere), which the trainer's
// sum over the ranks completes. Without a group (or G = 1) the ops compute every expert locally.

// Where this rank's tokens go and what each rank's experts receive.
struct Routing {
  int ranks = 1, rank = 0;
  int64_t per_rank = 0;              // experts per rank
  std::vector<int64_t> send_counts;  // tokens to each rank
  std::vector<int64_t> sent;         // the tokens, by destination rank, in token order
  Tensor indices;                    // i64 [rows sent, K]: the destination's local expert or -1
};

StatusOr<Routing> RouteTokens(const Tensor& indices, int64_t experts, Communicator* group) {
  Routing r;
  if (group != nullptr) {
    r.ranks = group->size();
    r.rank = group->rank();
  }
  if (experts % r.ranks != 0) {
    return InvalidArgument(Str(experts) + " routed experts do not divide over " + Str(r.ranks) +
                           " expert-parallel ranks");
  }
  r.per_rank = experts / r.ranks;
  int64_t k = indices.dim(-1), n = indices.numel() / std::max<int64_t>(1, k);
  const int64_t* idx = indices.data<int64_t>();
  r.send_counts.assign(static_cast<size_t>(r.ranks), 0);
  std::vector<std::vector<int64_t>> by_rank(static_cast<size_t>(r.ranks));
  for (int64_t t = 0; t < n; ++t) {
    std::vector<bool> to(static_cast<size_t>(r.ranks), false);
    for (int64_t s = t * k; s < (t + 1) * k; ++s) {
      if (idx[s] < 0 || idx[s] >= experts) {
        return InvalidArgument("indices[token " + Str(t) + ", slot " + Str(s - t * k) + "] = " +
                               Str(idx[s]) + " is not an expert in [0, " + Str(experts) + ")");
      }
      to[static_cast<size_t>(idx[s] / r.per_rank)] = true;
    }
    for (int j = 0; j < r.ranks; ++j)
      if (to[static_cast<size_t>(j)]) by_rank[static_cast<size_t>(j)].push_back(t);
  }
  for (int j = 0; j < r.ranks; ++j) {
    r.send_counts[static_cast<size_t>(j)] =
        static_cast<int64_t>(by_rank[static_cast<size_t>(j)].size());
    r.sent.insert(r.sent.end(), by_rank[static_cast<size_t>(j)].begin(),
                  by_rank[static_cast<size_t>(j)].end());
  }
  r.indices = Tensor::Empty(DT_I64, {static_cast<int64_t>(r.sent.size()), k});
  int64_t* out = r.indices.data<int64_t>();
  for (size_t row = 0, j = 0, left = 0; row < r.sent.size(); ++row, --left) {
    while (left == 0) left = static_cast<size_t>(r.send_counts[j++]);
    int64_t owner = static_cast<int64_t>(j) - 1, t = r.sent[row];
    for (int64_t q = 0; q < k; ++q) {
      int64_t e = idx[t * k + q];
      out[static_cast<int64_t>(row) * k + q] =
          e / r.per_rank == owner ? e - owner * r.per_rank : -1;
    }
  }
  return r;
}

// Rows `sent` of a [N, w] tensor (a view's rows in order), to send.
Tensor GatherRows(const Tensor& t, const std::vector<int64_t>& rows) {
  Tensor flat = t.Contiguous();
  int64_t w = flat.numel() / std::max<int64_t>(1, LeadingCount(flat.shape()));
  size_t bytes = static_cast<size_t>(w) * DataTypeSize(flat.dtype());
  Tensor out = Tensor::Empty(flat.dtype(), {static_cast<int64_t>(rows.size()), w});
  auto* dst = static_cast<char*>(out.raw_data());
  const auto* src = static_cast<const char*>(flat.raw_data());
  for (size_t r = 0; r < rows.size(); ++r)
    std::memcpy(dst + r * bytes, src + static_cast<size_t>(rows[r]) * bytes, bytes);
  return out;
}

// Sends `rows` (in send order) through the group, or keeps them with no group.
StatusOr<Communicator::AllToAllVResult> Exchange(Communicator* group, const Tensor& rows,
                                                 const std::vector<int64_t>& counts) {
  if (group == nullptr) return Communicator::AllToAllVResult{rows, counts};
  return group->AllToAllV(rows, counts);
}

// The experts' weights of this rank: rows [rank·per_rank, (rank+1)·per_rank) of dim 0.
Tensor LocalExperts(const Tensor& w, const Routing& r) {
  return w.Slice(0, r.rank * r.per_rank, (r.rank + 1) * r.per_rank).Contiguous();
}

// Adds the rows that came back (by source rank, each rank's in the order this rank sent them)
// into dst [N, w] per token, over the ranks in order; accumulates in A.
template <typename T>
void CombineRows(const Tensor& back, const std::vector<int64_t>& sent, int64_t n, int64_t w,
                 T* dst) {
  using A = AccumulatorOf<T>;
  std::vector<A> acc(static_cast<size_t>(n * w), A(0));
  const T* src = back.data<T>();
  for (size_t row = 0; row < sent.size(); ++row)
    for (int64_t j = 0; j < w; ++j)
      acc[static_cast<size_t>(sent[row] * w + j)] += Widen(src[static_cast<int64_t>(row) * w + j]);
  for (int64_t q = 0; q < n * w; ++q) dst[q] = Narrow<T>(acc[static_cast<size_t>(q)]);
}

// The dispatched inputs of this rank's experts.
struct Received {
  Tensor x, weights, indices, dy;
  std::vector<int64_t> counts;  // rows from each rank
};

StatusOr<Received> Dispatch(Communicator* group, const Routing& r, const Tensor& x,
                            const Tensor& weights, const Tensor* dy) {
  Received in;
  WEIR_ASSIGN_OR_RETURN(auto xs, Exchange(group, GatherRows(x, r.sent), r.send_counts));
  WEIR_ASSIGN_OR_RETURN(auto ws, Exchange(group, GatherRows(weights, r.sent), r.send_counts));
  WEIR_ASSIGN_OR_RETURN(auto is, Exchange(group, r.indices, r.send_counts));
  in.x = xs.tensor;
  in.weights = ws.tensor;
  in.indices = is.tensor;
  in.counts = xs.recv_counts;
  if (dy != nullptr) {
    WEIR_ASSIGN_OR_RETURN(auto dys, Exchange(group, GatherRows(*dy, r.sent), r.send_counts));
    in.dy = dys.tensor;
  }
  return in;
}

// Inputs 0 x, 1 weights, 2 indices, 3 w1, 4 w3, 5 w2. Outputs 0 y, 1 h (unused: zeros).
template <typename T>
Status ExpertsParallelForward(KernelContext& ctx) {
  Communicator* group = ShardGroup();
  const Tensor &x = ctx.input(0), &w1 = ctx.input(3);
  int64_t n = LeadingCount(x.shape()), d = x.dim(-1), k = ctx.input(1).dim(-1);
  Tensor indices = ctx.input(2).Contiguous();
  WEIR_ASSIGN_OR_RETURN(Routing r, RouteTokens(indices, w1.dim(0), group));
  WEIR_ASSIGN_OR_RETURN(Received in, Dispatch(group, r, x, ctx.input(1), nullptr));
  int64_t m = in.x.dim(0);
  Tensor w1l = LocalExperts(w1, r), w3l = LocalExperts(ctx.input(4), r),
         w2l = LocalExperts(ctx.input(5), r);
  Tensor y_local = Tensor::Empty(x.dtype(), {m, d}),
         h_local = Tensor::Empty(x.dtype(), {m * k, 2 * w1.dim(1)});
  KernelContext local({&in.x, &in.weights, &in.indices, &w1l, &w3l, &w2l}, {&y_local, &h_local},
                      &ctx.attrs());
  WEIR_RETURN_IF_ERROR(ExpertsForward<T>(local));
  WEIR_ASSIGN_OR_RETURN(auto back, Exchange(group, y_local, in.counts));
  CombineRows<T>(back.tensor, r.sent, n, d, ctx.output(0).data<T>());
  Tensor& h = ctx.output(1);
  std::memset(h.raw_data(), 0, h.nbytes());
  return Status();
}

Status ExpertsParallelCpu(KernelContext& ctx) {
  return DispatchFloat(ctx.input(0).dtype(),
                       [&](auto tag) { return ExpertsParallelForward<decltype(tag)>(ctx); });
}

// Inputs 0 x, 1 weights, 2 indices, 3 w1, 4 w3, 5 w2, 6 dy. Outputs dx, dweights, dw1, dw3, dw2.
Status ExpertsParallelGradShape(ShapeContext& ctx) {
  const TensorType &x = ctx.input(0), &weights = ctx.input(1), &indices = ctx.input(2);
  WEIR_RETURN_IF_ERROR(CheckRouting(x, weights, indices));
  const TensorType& w1 = ctx.input(3);
  if (w1.shape.size() != 3) return InvalidArgument("w1 " + w1.ToString() + " is not [E, I, d]");
  WEIR_RETURN_IF_ERROR(CheckWeight("dy", ctx.input(6), x.dtype, x.shape, x));
  ctx.set_output(0, x);
  ctx.set_output(1, weights);
  ctx.set_output(2, w1);
  ctx.set_output(3, ctx.input(4));
  ctx.set_output(4, ctx.input(5));
  return Status();
}

template <typename T>
Status ExpertsParallelBackward(KernelContext& ctx) {
  Communicator* group = ShardGroup();
  const Tensor &x = ctx.input(0), &weights = ctx.input(1), &w1 = ctx.input(3);
  int64_t n = LeadingCount(x.shape()), d = x.dim(-1), k = weights.dim(-1), inter = w1.dim(1);
  Tensor indices = ctx.input(2).Contiguous();
  WEIR_ASSIGN_OR_RETURN(Routing r, RouteTokens(indices, w1.dim(0), group));
  WEIR_ASSIGN_OR_RETURN(Received in, Dispatch(group, r, x, weights, &ctx.input(6)));
  int64_t m = in.x.dim(0);
  Tensor w1l = LocalExperts(w1, r), w3l = LocalExperts(ctx.input(4), r),
         w2l = LocalExperts(ctx.input(5), r);
  // The pre-activations again (moe.Experts' h is for its own tokens only).
  Tensor y_local = Tensor::Empty(x.dtype(), {m, d}),
         h_local = Tensor::Empty(x.dtype(), {m * k, 2 * inter});
  KernelContext forward({&in.x, &in.weights, &in.indices, &w1l, &w3l, &w2l}, {&y_local, &h_local},
                        &ctx.attrs());
  WEIR_RETURN_IF_ERROR(ExpertsForward<T>(forward));
  Tensor dx_local = Tensor::Empty(x.dtype(), {m, d}),
         dweights_local = Tensor::Empty(x.dtype(), {m, k}),
         dh_local = Tensor::Empty(x.dtype(), {m * k, 2 * inter});
  KernelContext backward({&in.weights, &in.indices, &w1l, &w3l, &w2l, &h_local, &in.dy},
                         {&dx_local, &dweights_local, &dh_local}, &ctx.attrs());
  WEIR_RETURN_IF_ERROR(ExpertsBackward<T>(backward));
  std::map<std::string, AttrValue> local_attrs;
  local_attrs["n_routed_experts"].set_i(r.per_rank);
  Attrs attrs(local_attrs, "op 'moe.ExpertsParallelGrad'");
  Tensor dw1l = Tensor::Empty(x.dtype(), w1l.shape()), dw3l = Tensor::Empty(x.dtype(), w3l.shape()),
         dw2l = Tensor::Empty(x.dtype(), w2l.shape());
  KernelContext weight({&in.x, &in.weights, &in.indices, &h_local, &dh_local, &in.dy},
                       {&dw1l, &dw3l, &dw2l}, &attrs);
  WEIR_RETURN_IF_ERROR(ExpertsWeightBackward<T>(weight));
  // dx and dweights go back to the tokens' ranks (unused slots carry 0).
  WEIR_ASSIGN_OR_RETURN(auto dx_back, Exchange(group, dx_local, in.counts));
  WEIR_ASSIGN_OR_RETURN(auto dw_back, Exchange(group, dweights_local, in.counts));
  CombineRows<T>(dx_back.tensor, r.sent, n, d, ctx.output(0).data<T>());
  CombineRows<T>(dw_back.tensor, r.sent, n, k, ctx.output(1).data<T>());
  for (int o = 0; o < 3; ++o) {
    Tensor& full = ctx.output(2 + o);
    const Tensor& mine = o == 0 ? dw1l : o == 1 ? dw3l : dw2l;
    std::memset(full.raw_data(), 0, full.nbytes());
    size_t each = mine.nbytes();
    std::memcpy(static_cast<char*>(full.raw_data()) + static_cast<size_t>(r.rank) * each,
                mine.raw_data(), each);
  }
  return Status();
}

Status ExpertsParallelGradCpu(KernelContext& ctx) {
  return DispatchFloat(ctx.input(0).dtype(),
                       [&](auto tag) { return ExpertsParallelBackward<decltype(tag)>(ctx); });
}

Status ExpertsParallelGradient(GradContext& g) {
  if (g.grad(1).valid()) {
    return InvalidArgument("output 'h' of moe.ExpertsParallel takes no gradient; use output 'y'");
  }
  if (!g.grad(0).valid()) return Status();
  WEIR_ASSIGN_OR_RETURN(
      auto b, g.Op("moe.ExpertsParallelGrad", {g.input(0), g.input(1), g.input(2), g.input(3),
                                               g.input(4), g.input(5), g.grad(0)}));
  for (int i = 0; i < 6; ++i) {
    if (i == 2 || !g.needs_grad(i)) continue;
    g.set_input_grad(i, b[static_cast<size_t>(i < 2 ? i : i - 1)]);
  }
  return Status();
}

// ---- gradient builder -----------------------------------------------------------------------

// Inputs of moe.Experts: 0 x, 1 weights, 2 indices, 3 w1, 4 w3, 5 w2. Outputs: 0 y, 1 h.
Status ExpertsGradient(GradContext& g) {
  if (g.grad(1).valid()) {
    return InvalidArgument(
        "output 'h' of moe.Experts is saved for its backward pass and takes no gradient; use "
        "output 'y'");
  }
  if (!g.grad(0).valid()) return Status();
  bool params = g.needs_grad(3) || g.needs_grad(4) || g.needs_grad(5);
  if (!g.needs_grad(0) && !g.needs_grad(1) && !params) return Status();
  WEIR_ASSIGN_OR_RETURN(
      auto b, g.Op("moe.ExpertsGrad", {g.input(1), g.input(2), g.input(3), g.input(4), g.input(5),
                                       g.output(1), g.grad(0)}));
  if (g.needs_grad(0)) g.set_input_grad(0, b[0]);
  if (g.needs_grad(1)) g.set_input_grad(1, b[1]);
  if (!params) return Status();
  WEIR_ASSIGN_OR_RETURN(auto w,
                        g.Op("moe.ExpertsWeightGrad",
                             {g.input(0), g.input(1), g.input(2), g.output(1), b[2], g.grad(0)},
                             {{"n_routed_experts", g.attrs().Get("n_routed_experts")}}));
  for (int p = 0; p < 3; ++p)
    if (g.needs_grad(3 + p)) g.set_input_grad(3 + p, w[static_cast<size_t>(p)]);
  return Status();
}

StatusOr<Shape> ExpertShape(const ShapeContext& c, bool down) {
  const TensorType& x = c.input(0);
  if (x.shape.empty())
    return InvalidArgument("x " + x.ToString() + " needs a feature dim [..., d]");
  int64_t e = c.attrs().Int("n_routed_experts"), i = c.attrs().Int("moe_intermediate_size");
  return down ? Shape{e, x.shape.back(), i} : Shape{e, i, x.shape.back()};
}

// Three [d, I] products per routed (token, slot); a token uses K of the E experts.
OpCost ExpertsCost(const std::vector<TensorType>& in, const std::vector<TensorType>&,
                   const Attrs& a) {
  double slots = static_cast<double>(NumElements(in[2].shape));
  double d = static_cast<double>(in[0].shape.back());
  double i = static_cast<double>(a.Int("moe_intermediate_size"));
  double k = static_cast<double>(in[2].shape.back());
  return OpCost{2.0 * slots * 3.0 * d * i, k / static_cast<double>(a.Int("n_routed_experts"))};
}

// The inputs, outputs, attrs and parameters moe.Experts and moe.ExpertsParallel share (the
// parallel op replaces the other in place, with the same parameter names and shapes).
OpBuilder& ExpertsSchema(OpBuilder& b) {
  return b.Input("x", "T", "[..., d] tokens")
      .Input("weights", "T", "[..., K] routing weights (moe.Router's weights)")
      .Input("indices", "i64",
             "[..., K] chosen experts (moe.Router's indices), in [0, E); -1: an unused slot")
      .Output("y", "T", "[..., d] the weighted sum of the chosen experts' outputs")
      .Output("h", "T",
              "[N*K, 2I] saved for the backward pass: [w1[e] x, w3[e] x] per (token, slot), sorted "
              "stably by expert; takes no gradient")
      .RequiredAttr<int64_t>("n_routed_experts", "routed experts (E)", Min(1))
      .RequiredAttr<int64_t>("moe_intermediate_size", "hidden width of each expert (I)", Min(1))
      .Attr<double>("init_std", 0.02, "standard deviation of the initial w1 and w3", Min(0.0))
      .Attr<double>("out_std", 0.02, "standard deviation of the initial w2", Min(0.0))
      .AttrOfType("T", ATTR_TYPE, "f32", "compute dtype")
      .Param(
          "w1", [](const ShapeContext& c) { return ExpertShape(c, false); },
          [](const Attrs& a, const weir::Shape&) { return Init::Normal(a.Float("init_std")); })
      .Param(
          "w3", [](const ShapeContext& c) { return ExpertShape(c, false); },
          [](const Attrs& a, const weir::Shape&) { return Init::Normal(a.Float("init_std")); })
      .Param(
          "w2", [](const ShapeContext& c) { return ExpertShape(c, true); },
          [](const Attrs& a, const weir::Shape&) { return Init::Normal(a.Float("out_std")); });
}

}  // namespace

void RegisterExperts(Registrar& r) {
  ExpertsSchema(
      r.TensorOp("moe.Experts")
          .Doc(
              "The routed experts of DeepSeekMoE: y_t = sum_k weights[t,k] * w2[e] (silu(w1[e] "
              "x_t) * "
              "w3[e] x_t), e = indices[t,k]. Runs as permute (a stable counting sort of the "
              "(token, "
              "slot) pairs by expert), grouped GEMM (a TBB task per tile of an expert's rows) and "
              "a "
              "deterministic weighted combine per token. Parameters w1, w3 [E, I, d] (HF "
              "experts.j.gate_proj / up_proj stacked) and w2 [E, d, I] (down_proj). bf16 computes "
              "in f32. Also returns the permuted gate/up pre-activations h, saved for the backward "
              "pass."))
      .Shape(ExpertsShape)
      .Kernel("cpu", ExpertsCpu, KernelFloatTypes())
      .Gradient(ExpertsGradient)
      .Cost(ExpertsCost);
  ExpertsSchema(
      r.TensorOp("moe.ExpertsParallel")
          .Doc("moe.Experts with the experts sharded over the ranks of the calling rank's shard "
               "group (expert parallelism; train.Step's expert_parallel): each token is sent once "
               "to every rank holding one of its K experts (all-to-all-v), each rank runs its "
               "E/G experts, and the weighted outputs come back and are summed over the ranks in "
               "order. Parameters as moe.Experts' (each rank reads its slice). Without a group it "
               "computes every expert locally. h is unused (zeros): the backward pass recomputes "
               "the pre-activations of the tokens it receives."))
      .Shape(ExpertsShape)
      .Kernel("cpu", ExpertsParallelCpu, KernelFloatTypes())
      .Gradient(ExpertsParallelGradient)
      .Cost(ExpertsCost);
  r.TensorOp("moe.ExpertsParallelGrad")
      .Doc(
          "Backward of moe.ExpertsParallel, input and weight gradients in one: x and dy are "
          "dispatched as in the forward pass, each rank recomputes its experts' pre-activations, "
          "and dx and dweights are combined back to the tokens' ranks; dw1, dw3, dw2 hold this "
          "rank's experts' gradients and zeros elsewhere (the trainer sums them over the ranks).")
      .Input("x", "T", "[..., d]")
      .Input("weights", "T", "[..., K]")
      .Input("indices", "i64", "[..., K]")
      .Input("w1", "T", "[E, I, d]")
      .Input("w3", "T", "[E, I, d]")
      .Input("w2", "T", "[E, d, I]")
      .Input("dy", "T", "[..., d]")
      .Output("dx", "T", "[..., d]")
      .Output("dweights", "T", "[..., K]")
      .Output("dw1", "T", "[E, I, d]")
      .Output("dw3", "T", "[E, I, d]")
      .Output("dw2", "T", "[E, d, I]")
      .Shape(ExpertsParallelGradShape)
      .Kernel("cpu", ExpertsParallelGradCpu, KernelFloatTypes());
  r.TensorOp("moe.ExpertsGrad")
      .Doc(
          "Input gradient (B) of moe.Experts: dx, dweights (dy_t . the unweighted output of "
          "each chosen expert) and dh, the permuted gradient of the gate/up pre-activations "
          "that moe.ExpertsWeightGrad turns into weight gradients.")
      .Input("weights", "T", "[..., K]")
      .Input("indices", "i64", "[..., K]")
      .Input("w1", "T", "[E, I, d]")
      .Input("w3", "T", "[E, I, d]")
      .Input("w2", "T", "[E, d, I]")
      .Input("h", "T", "[N*K, 2I] moe.Experts' saved pre-activations")
      .Input("dy", "T", "[..., d]")
      .Output("dx", "T", "[..., d]")
      .Output("dweights", "T", "[..., K]")
      .Output("dh", "T", "[N*K, 2I] gradient of h, permuted like h")
      .Shape(ExpertsGradShape)
      .Kernel("cpu", ExpertsGradCpu, KernelFloatTypes());
  r.TensorOp("moe.ExpertsWeightGrad")
      .Doc(
          "Weight gradient (W) of moe.Experts: dw1 and dw3 = dh^T x per expert, dw2 = dy^T "
          "(weights * silu(gate) * up) per expert, summed over each expert's rows in a fixed "
          "order.")
      .Input("x", "T", "[..., d]")
      .Input("weights", "T", "[..., K]")
      .Input("indices", "i64", "[..., K]")
      .Input("h", "T", "[N*K, 2I] moe.Experts' saved pre-activations")
      .Input("dh", "T", "[N*K, 2I] from moe.ExpertsGrad")
      .Input("dy", "T", "[..., d]")
      .Output("dw1", "T", "[E, I, d]")
      .Output("dw3", "T", "[E, I, d]")
      .Output("dw2", "T", "[E, d, I]")
      .RequiredAttr<int64_t>("n_routed_experts", "routed experts (E)", Min(1))
      .Shape(ExpertsWeightGradShape)
      .Kernel("cpu", ExpertsWeightGradCpu, KernelFloatTypes());
}

}  // namespace weir::moe
