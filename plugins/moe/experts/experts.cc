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
#include <string>
#include <type_traits>
#include <vector>

#include "moe_ops.h"
#include "weir/dispatch.h"
#include "weir/gemm.h"
#include "weir/parallel.h"
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
// [offsets[e], offsets[e + 1]), in token (then slot) order.
struct Permutation {
  std::vector<int64_t> offsets;      // [E + 1]
  std::vector<int64_t> slot_of_row;  // row → slot t·K + k
  std::vector<int64_t> row_of_slot;  // slot → row
};

StatusOr<Permutation> Permute(const Tensor& indices, int64_t experts) {
  int64_t slots = indices.numel(), k = indices.shape().empty() ? 1 : indices.dim(-1);
  const int64_t* idx = indices.data<int64_t>();
  Permutation p;
  p.offsets.assign(static_cast<size_t>(experts + 1), 0);
  for (int64_t s = 0; s < slots; ++s) {
    int64_t e = idx[s];
    if (e < 0 || e >= experts) {
      return InvalidArgument("indices[token " + Str(s / k) + ", slot " + Str(s % k) +
                             "] = " + Str(e) + " is not an expert: n_routed_experts is " +
                             Str(experts) + ", so indices must lie in [0, " + Str(experts) + ")");
    }
    ++p.offsets[static_cast<size_t>(e + 1)];
  }
  for (int64_t e = 0; e < experts; ++e)
    p.offsets[static_cast<size_t>(e + 1)] += p.offsets[static_cast<size_t>(e)];
  std::vector<int64_t> next(p.offsets.begin(), p.offsets.end() - 1);
  p.slot_of_row.resize(static_cast<size_t>(slots));
  p.row_of_slot.resize(static_cast<size_t>(slots));
  for (int64_t s = 0; s < slots; ++s) {
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
        A w = scale(s);
        const A* row = src.data() + p.row_of_slot[static_cast<size_t>(s)] * d;
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

}  // namespace

void RegisterExperts(Registrar& r) {
  r.TensorOp("moe.Experts")
      .Doc(
          "The routed experts of DeepSeekMoE: y_t = sum_k weights[t,k] * w2[e] (silu(w1[e] x_t) * "
          "w3[e] x_t), e = indices[t,k]. Runs as permute (a stable counting sort of the (token, "
          "slot) pairs by expert), grouped GEMM (a TBB task per tile of an expert's rows) and a "
          "deterministic weighted combine per token. Parameters w1, w3 [E, I, d] (HF "
          "experts.j.gate_proj / up_proj stacked) and w2 [E, d, I] (down_proj). bf16 computes "
          "in f32. Also returns the permuted gate/up pre-activations h, saved for the backward "
          "pass.")
      .Input("x", "T", "[..., d] tokens")
      .Input("weights", "T", "[..., K] routing weights (moe.Router's weights)")
      .Input("indices", "i64", "[..., K] chosen experts (moe.Router's indices), in [0, E)")
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
          [](const Attrs& a, const weir::Shape&) { return Init::Normal(a.Float("out_std")); })
      .Shape(ExpertsShape)
      .Kernel("cpu", ExpertsCpu, KernelFloatTypes())
      .Gradient(ExpertsGradient)
      .Cost([](const std::vector<TensorType>& in, const std::vector<TensorType>&, const Attrs& a) {
        // Three [d, I] products per routed (token, slot); a token uses K of the E experts.
        double slots = static_cast<double>(NumElements(in[2].shape));
        double d = static_cast<double>(in[0].shape.back());
        double i = static_cast<double>(a.Int("moe_intermediate_size"));
        double k = static_cast<double>(in[2].shape.back());
        return OpCost{2.0 * slots * 3.0 * d * i,
                      k / static_cast<double>(a.Int("n_routed_experts"))};
      });
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
