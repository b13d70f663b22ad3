// nn.Attention: softmax attention, multi-head or grouped-query, causal by default. The CPU kernel
// is tiled with an online softmax, so it never holds a [T, S] score matrix: memory is O(T·d).
// The forward pass also returns the log-sum-exp of each query's scores, which the backward pass
// (nn.AttentionGrad, flash-attention style) uses to recompute the probabilities.
//
// Optional segment ids keep packed documents apart (a query sees only keys of its own segment).
// Segments never decrease along time, so every query still sees one contiguous run of keys: the
// tiled kernels start each query block at its first visible key and mask the partial blocks, and
// without segments they run exactly as before (every run starts at key 0).
#include <atomic>

#include "nn_common.h"
#include "weir/gemm.h"

namespace weir::nn {
namespace {

// Queries and keys per block: large enough for GEMMs to run near their peak, small enough that a
// block's scores stay in L2.
constexpr int64_t kQueryBlock = 128;
constexpr int64_t kKeyBlock = 256;

struct Dims {
  int64_t batch, t, s, heads, kv_heads, d, dv;
};

StatusOr<Dims> GetDims(const TensorType& q, const TensorType& k, const TensorType& v) {
  auto bad = [&](const std::string& why) {
    return InvalidArgument("q " + q.ToString() + ", k " + k.ToString() + ", v " + v.ToString() +
                           ": " + why);
  };
  if (q.shape.size() != 4 || k.shape.size() != 4 || v.shape.size() != 4)
    return bad("expected [batch, time, heads, dim] each");
  if (q.dtype != k.dtype || q.dtype != v.dtype) return bad("dtypes differ");
  Dims d{q.shape[0], q.shape[1], k.shape[1], q.shape[2], k.shape[2], q.shape[3], v.shape[3]};
  if (k.shape[0] != d.batch || v.shape[0] != d.batch) return bad("batch sizes differ");
  if (v.shape[1] != d.s || v.shape[2] != d.kv_heads)
    return bad("k and v disagree on time or heads");
  if (k.shape[3] != d.d) return bad("q and k head dims differ");
  if (d.kv_heads == 0 || d.heads % d.kv_heads != 0)
    return bad("heads must be a multiple of kv heads");
  return d;
}

DataType LseType(DataType t) { return t == DT_F64 ? DT_F64 : DT_F32; }

double Scale(const Attrs& a, int64_t d) {
  double s = a.Float("scale");
  return s > 0 ? s : 1.0 / std::sqrt(static_cast<double>(d));
}

// Where the optional segments input sits: after q, k, v in the forward op, after q, k, v, o, lse,
// do in the backward op.
constexpr int kForwardSegments = 3;
constexpr int kBackwardSegments = 6;

// Segments [batch, time] i64 pair queries with keys position by position, so there must be no
// cache before the queries.
Status CheckSegments(const TensorType& segments, const Dims& d) {
  if (segments.dtype != DT_I64 || segments.shape != Shape{d.batch, d.t}) {
    return InvalidArgument("segments must be i64 [batch, time] = i64" +
                           ShapeString({d.batch, d.t}) + ", got " + segments.ToString());
  }
  if (d.s != d.t) {
    return InvalidArgument("segments need as many keys as queries (no cached keys before them): " +
                           std::to_string(d.t) + " queries, " + std::to_string(d.s) + " keys");
  }
  return Status();
}

// The keys each query may see, [Begin, End): the causal rule (which aligns the last query with
// the last key) and, with segments, the query's own segment. Both ends never decrease with the
// query's position, so a block of queries sees the keys from its first query's Begin to its last
// query's End.
class KeyRanges {
 public:
  KeyRanges(const Dims& d, bool causal) : d_(d), causal_(causal) {}

  // Reads segments [batch, time]; an error when they decrease along a row.
  Status SetSegments(const Tensor& segments) {
    const int64_t* ids = segments.data<int64_t>();
    begin_.resize(static_cast<size_t>(d_.batch * d_.t));
    end_.resize(begin_.size());
    for (int64_t b = 0; b < d_.batch; ++b) {
      const int64_t* row = ids + b * d_.t;
      int64_t* begin = begin_.data() + b * d_.t;
      int64_t* end = end_.data() + b * d_.t;
      for (int64_t t = 0, start = 0; t < d_.t; ++t) {
        if (t > 0 && row[t] < row[t - 1]) {
          return InvalidArgument("segments must not decrease along time: row " + std::to_string(b) +
                                 " has " + std::to_string(row[t]) + " at position " +
                                 std::to_string(t) + " after " + std::to_string(row[t - 1]));
        }
        if (t > 0 && row[t] != row[t - 1]) start = t;
        begin[t] = start;
      }
      for (int64_t t = d_.t - 1, stop = d_.t; t >= 0; --t) {
        if (t + 1 < d_.t && row[t] != row[t + 1]) stop = t + 1;
        end[t] = stop;
      }
    }
    return Status();
  }

  int64_t Begin(int64_t b, int64_t t) const {
    return begin_.empty() ? 0 : begin_[static_cast<size_t>(b * d_.t + t)];
  }
  int64_t End(int64_t b, int64_t t) const {
    if (causal_) return t + (d_.s - d_.t) + 1;  // in t's segment: segments need keys == time
    return end_.empty() ? d_.s : end_[static_cast<size_t>(b * d_.t + t)];
  }

  // The keys of the block [k0, k0 + nk) that query t sees, as offsets into the block; empty
  // when end <= begin.
  struct InBlock {
    int64_t begin, end;
  };
  InBlock Visible(int64_t b, int64_t t, int64_t k0, int64_t nk) const {
    return {std::clamp<int64_t>(Begin(b, t) - k0, 0, nk),
            std::clamp<int64_t>(End(b, t) - k0, 0, nk)};
  }

 private:
  Dims d_;
  bool causal_;
  std::vector<int64_t> begin_, end_;  // per [batch, time]; empty without segments
};

Status AttentionShape(ShapeContext& ctx) {
  WEIR_ASSIGN_OR_RETURN(Dims d, GetDims(ctx.input(0), ctx.input(1), ctx.input(2)));
  if (ctx.num_inputs() > kForwardSegments)
    WEIR_RETURN_IF_ERROR(CheckSegments(ctx.input(kForwardSegments), d));
  ctx.set_output(0, {ctx.input(0).dtype, {d.batch, d.t, d.heads, d.dv}});
  ctx.set_output(1, {LseType(ctx.input(0).dtype), {d.batch, d.heads, d.t}});
  return Status();
}

// What both kernels start from: their inputs made dense, the dims, the attrs and the keys each
// query sees.
struct Problem {
  std::vector<Tensor> in;
  Dims d;
  double scale;
  KeyRanges ranges;
};

StatusOr<Problem> Prepare(const KernelContext& ctx, int segments_input) {
  std::vector<Tensor> in;
  for (int i = 0; i < ctx.num_inputs(); ++i) in.push_back(ctx.input(i).Contiguous());
  auto type = [&](int i) {
    return TensorType{in[static_cast<size_t>(i)].dtype(), in[static_cast<size_t>(i)].shape()};
  };
  WEIR_ASSIGN_OR_RETURN(Dims d, GetDims(type(0), type(1), type(2)));
  KeyRanges ranges(d, ctx.attrs().Bool("causal"));
  if (ctx.num_inputs() > segments_input) {
    WEIR_RETURN_IF_ERROR(CheckSegments(type(segments_input), d));
    WEIR_RETURN_IF_ERROR(ranges.SetSegments(in[static_cast<size_t>(segments_input)]));
  }
  return Problem{std::move(in), d, Scale(ctx.attrs(), d.d), std::move(ranges)};
}

// One head of a [batch, n, heads, width] tensor as a matrix of rows `width` apart by heads·width:
// the GEMMs read it in place.
template <typename T>
struct Heads {
  T* base;
  int64_t n, heads, width;
  T* Row(int64_t b, int64_t pos, int64_t head) const {
    return base + ((b * n + pos) * heads + head) * width;
  }
  MatrixRef At(int64_t b, int64_t pos, int64_t head, bool transposed = false) const {
    return MatrixRef{Row(b, pos, head), heads * width, transposed};
  }
};

// Flash-attention on the CPU: each task takes a block of queries of one head and walks the keys
// in blocks, with q·kᵀ and p·v as oneDNN GEMMs that read the heads in place and an online softmax
// between them. Scores exist only for one block pair at a time: memory is O(T·d).
Status AttentionCpu(KernelContext& ctx) {
  WEIR_ASSIGN_OR_RETURN(Problem pr, Prepare(ctx, kForwardSegments));
  const Dims& d = pr.d;
  const KeyRanges& ranges = pr.ranges;
  return DispatchFloat(pr.in[0].dtype(), [&](auto tag) {
    using T = decltype(tag);
    using A = AccumulatorOf<T>;
    constexpr DataType kT = DataTypeOf<T>(), kA = DataTypeOf<A>();
    Heads<const T> q{pr.in[0].data<T>(), d.t, d.heads, d.d};
    Heads<const T> k{pr.in[1].data<T>(), d.s, d.kv_heads, d.d};
    Heads<const T> v{pr.in[2].data<T>(), d.s, d.kv_heads, d.dv};
    Heads<T> o{ctx.output(0).data<T>(), d.t, d.heads, d.dv};
    A* lse = static_cast<A*>(ctx.output(1).raw_data());
    int64_t group = d.heads / d.kv_heads, blocks = (d.t + kQueryBlock - 1) / kQueryBlock;
    A scale = static_cast<A>(pr.scale);
    FirstError first;
    ParallelFor(d.batch * d.heads * blocks, 1, [&](int64_t begin, int64_t end) {
      SingleThreadedGemms one_thread;  // the tasks already fill the cores
      std::vector<A> s(kQueryBlock * kKeyBlock), acc(kQueryBlock * d.dv), m(kQueryBlock),
          l(kQueryBlock);
      std::vector<T> p(kQueryBlock * kKeyBlock);
      for (int64_t task = begin; task < end && !first.failed(); ++task) {
        int64_t b = task / (d.heads * blocks), h = task / blocks % d.heads, hk = h / group;
        int64_t q0 = task % blocks * kQueryBlock, nq = std::min(kQueryBlock, d.t - q0);
        std::fill(acc.begin(), acc.end(), A(0));
        std::fill(m.begin(), m.end(), -std::numeric_limits<A>::infinity());
        std::fill(l.begin(), l.end(), A(0));
        int64_t keys_end = ranges.End(b, q0 + nq - 1);
        for (int64_t k0 = ranges.Begin(b, q0); k0 < keys_end; k0 += kKeyBlock) {
          int64_t nk = std::min(kKeyBlock, keys_end - k0);
          Status st =
              GemmBlock(kT, kA, nq, nk, d.d, q.At(b, q0, h), k.At(b, k0, hk, true), s.data(), nk);
          for (int64_t i = 0; st.ok() && i < nq; ++i) {
            T* prow = p.data() + i * nk;
            auto [begin, end] = ranges.Visible(b, q0 + i, k0, nk);
            std::fill(prow, prow + begin, T(0));
            std::fill(prow + std::max(begin, end), prow + nk, T(0));
            if (end <= begin) continue;
            A corr = OnlineSoftmaxStep(s.data() + i * nk + begin, end - begin, scale, m[i], l[i],
                                       prow + begin);
            for (int64_t x = 0; x < d.dv; ++x) acc[i * d.dv + x] *= corr;
          }
          if (st.ok()) {
            st = GemmBlock(kT, kA, nq, d.dv, nk, MatrixRef{p.data(), nk}, v.At(b, k0, hk),
                           acc.data(), d.dv, /*accumulate=*/true);
          }
          first.Record(st);
        }
        for (int64_t i = 0; i < nq; ++i) {
          T* out = o.Row(b, q0 + i, h);
          A inv = l[i] > 0 ? A(1) / l[i] : A(0);
          for (int64_t x = 0; x < d.dv; ++x) out[x] = Narrow<T>(acc[i * d.dv + x] * inv);
          lse[(b * d.heads + h) * d.t + q0 + i] =
              l[i] > 0 ? m[i] + std::log(l[i]) : -std::numeric_limits<A>::infinity();
        }
      }
    });
    return first.status();
  });
}

// Inputs: q, k, v, o, lse, do. Outputs: dq, dk, dv. The probabilities are recomputed block by
// block from the saved log-sum-exp; every product is a GEMM. Work is split by (batch, kv head)
// so the query heads that share a kv head accumulate into dk and dv without races.
Status AttentionGradCpu(KernelContext& ctx) {
  WEIR_ASSIGN_OR_RETURN(Problem pr, Prepare(ctx, kBackwardSegments));
  const Dims& d = pr.d;
  const KeyRanges& ranges = pr.ranges;
  return DispatchFloat(pr.in[0].dtype(), [&](auto tag) {
    using T = decltype(tag);
    using A = AccumulatorOf<T>;
    constexpr DataType kT = DataTypeOf<T>(), kA = DataTypeOf<A>();
    Heads<const T> q{pr.in[0].data<T>(), d.t, d.heads, d.d};
    Heads<const T> k{pr.in[1].data<T>(), d.s, d.kv_heads, d.d};
    Heads<const T> v{pr.in[2].data<T>(), d.s, d.kv_heads, d.dv};
    Heads<const T> o{pr.in[3].data<T>(), d.t, d.heads, d.dv};
    const A* lse = static_cast<const A*>(pr.in[4].raw_data());
    Heads<const T> dout{pr.in[5].data<T>(), d.t, d.heads, d.dv};
    Heads<T> dq{ctx.output(0).data<T>(), d.t, d.heads, d.d};
    Heads<T> dk{ctx.output(1).data<T>(), d.s, d.kv_heads, d.d};
    Heads<T> dv{ctx.output(2).data<T>(), d.s, d.kv_heads, d.dv};
    int64_t group = d.heads / d.kv_heads;
    A scale = static_cast<A>(pr.scale);
    FirstError first;
    ParallelFor(d.batch * d.kv_heads, 1, [&](int64_t begin, int64_t end) {
      SingleThreadedGemms one_thread;
      std::vector<A> dk_acc(static_cast<size_t>(d.s * d.d)),
          dv_acc(static_cast<size_t>(d.s * d.dv));
      std::vector<A> dq_acc(kQueryBlock * d.d), s(kQueryBlock * kKeyBlock),
          dp(kQueryBlock * kKeyBlock), delta(kQueryBlock);
      std::vector<T> p(kQueryBlock * kKeyBlock), ds(kQueryBlock * kKeyBlock);
      auto gemm = [&](int64_t m, int64_t n, int64_t kk, MatrixRef a, MatrixRef bm, A* c,
                      int64_t ldc, bool accumulate) {
        if (!first.failed()) first.Record(GemmBlock(kT, kA, m, n, kk, a, bm, c, ldc, accumulate));
      };
      for (int64_t task = begin; task < end; ++task) {
        int64_t b = task / d.kv_heads, hk = task % d.kv_heads;
        std::fill(dk_acc.begin(), dk_acc.end(), A(0));
        std::fill(dv_acc.begin(), dv_acc.end(), A(0));
        for (int64_t h = hk * group; h < (hk + 1) * group; ++h) {
          for (int64_t q0 = 0; q0 < d.t; q0 += kQueryBlock) {
            int64_t nq = std::min(kQueryBlock, d.t - q0);
            const A* block_lse = lse + (b * d.heads + h) * d.t + q0;
            for (int64_t i = 0; i < nq; ++i) {  // delta = rowsum(do ⊙ o)
              const T *doi = dout.Row(b, q0 + i, h), *oi = o.Row(b, q0 + i, h);
              A sum = 0;
              for (int64_t x = 0; x < d.dv; ++x) sum += Widen(doi[x]) * Widen(oi[x]);
              delta[i] = sum;
            }
            std::fill(dq_acc.begin(), dq_acc.end(), A(0));
            int64_t keys_end = ranges.End(b, q0 + nq - 1);
            for (int64_t k0 = ranges.Begin(b, q0); k0 < keys_end; k0 += kKeyBlock) {
              int64_t nk = std::min(kKeyBlock, keys_end - k0);
              gemm(nq, nk, d.d, q.At(b, q0, h), k.At(b, k0, hk, true), s.data(), nk, false);
              gemm(nq, nk, d.dv, dout.At(b, q0, h), v.At(b, k0, hk, true), dp.data(), nk, false);
              if (first.failed()) break;
              for (int64_t i = 0; i < nq; ++i) {
                auto [begin, end] = ranges.Visible(b, q0 + i, k0, nk);
                int64_t at = i * nk;
                for (int64_t j = begin; j < end; ++j) {
                  A pij = Exp(s[at + j] * scale - block_lse[i]);
                  p[at + j] = Narrow<T>(pij);
                  ds[at + j] = Narrow<T>(pij * (dp[at + j] - delta[i]) * scale);
                }
                for (std::vector<T>* zeroed : {&p, &ds}) {
                  std::fill(zeroed->begin() + at, zeroed->begin() + at + begin, Narrow<T>(A(0)));
                  std::fill(zeroed->begin() + at + std::max(begin, end), zeroed->begin() + at + nk,
                            Narrow<T>(A(0)));
                }
              }
              gemm(nk, d.dv, nq, MatrixRef{p.data(), nk, true}, dout.At(b, q0, h),
                   dv_acc.data() + k0 * d.dv, d.dv, true);
              gemm(nk, d.d, nq, MatrixRef{ds.data(), nk, true}, q.At(b, q0, h),
                   dk_acc.data() + k0 * d.d, d.d, true);
              gemm(nq, d.d, nk, MatrixRef{ds.data(), nk}, k.At(b, k0, hk), dq_acc.data(), d.d,
                   true);
            }
            for (int64_t i = 0; i < nq; ++i) {
              T* out = dq.Row(b, q0 + i, h);
              for (int64_t x = 0; x < d.d; ++x) out[x] = Narrow<T>(dq_acc[i * d.d + x]);
            }
          }
        }
        for (int64_t j = 0; j < d.s; ++j) {
          T *dkj = dk.Row(b, j, hk), *dvj = dv.Row(b, j, hk);
          for (int64_t x = 0; x < d.d; ++x) dkj[x] = Narrow<T>(dk_acc[j * d.d + x]);
          for (int64_t x = 0; x < d.dv; ++x) dvj[x] = Narrow<T>(dv_acc[j * d.dv + x]);
        }
      }
    });
    return first.status();
  });
}

Status AttentionGrad(GradContext& g) {
  if (!g.grad(0).valid()) return Status();  // only the lse output was used: nothing to send back
  std::vector<ValueRef> in = {g.input(0),  g.input(1),  g.input(2),
                              g.output(0), g.output(1), g.grad(0)};
  if (g.num_inputs() > kForwardSegments) in.push_back(g.input(kForwardSegments));  // no gradient
  WEIR_ASSIGN_OR_RETURN(auto d, g.Op("nn.AttentionGrad", in, g.attrs().values()));
  for (int i = 0; i < 3; ++i)
    if (g.needs_grad(i)) g.set_input_grad(i, d[static_cast<size_t>(i)]);
  return Status();
}

}  // namespace

void RegisterAttention(Registrar& r) {
  r.TensorOp("nn.Attention")
      .Doc(
          "Scaled dot-product attention: o = softmax(q·kᵀ·scale + mask) · v per head. Grouped-"
          "query attention when k and v have fewer heads (each serves heads/kv_heads query "
          "heads). Causal masking aligns the last query with the last key, so it also serves "
          "decoding against a cache. Also returns the log-sum-exp of each query's scores. With "
          "segments (packed documents), query i sees key j only if segments[j] == segments[i]; "
          "segments must not decrease along time and need keys == time.")
      .Input("q", "T", "[batch, time, heads, d]")
      .Input("k", "T", "[batch, keys, kv_heads, d]")
      .Input("v", "T", "[batch, keys, kv_heads, dv]")
      .OptionalInput("segments", "i64",
                     "[batch, time] document of each position (nn.SegmentIds); no gradient")
      .Output("o", "T", "[batch, time, heads, dv]")
      .Output("lse", "f32", "[batch, heads, time] log-sum-exp of the scaled scores (f64 for f64)")
      .Attr("causal", true, "mask keys after each query's position")
      .Attr<double>("scale", 0.0, "score scale; 0 means 1/sqrt(d)", Min(0.0))
      .Shape(AttentionShape)
      .Kernel("cpu", AttentionCpu, KernelFloatTypes())
      .Gradient(AttentionGrad)
      .Cost([](const std::vector<TensorType>& in, const std::vector<TensorType>&, const Attrs& a) {
        // q [b, t, h, d], k [b, tk, hk, d], v [b, tk, hk, dv]; a causal query t of the last t
        // sees tk - t_total + t + 1 keys.
        const Shape &q = in[0].shape, &k = in[1].shape, &v = in[2].shape;
        double t = static_cast<double>(q[1]), tk = static_cast<double>(k[1]);
        double pairs = a.Bool("causal") ? t * (tk - t) + t * (t + 1) / 2 : t * tk;
        return OpCost{2.0 * static_cast<double>(q[0] * q[2]) * pairs *
                      static_cast<double>(q[3] + v[3])};
      });
  r.TensorOp("nn.AttentionGrad")
      .Doc(
          "Gradient of nn.Attention from the saved log-sum-exp (probabilities are recomputed, "
          "never stored).")
      .Input("q", "T")
      .Input("k", "T")
      .Input("v", "T")
      .Input("o", "T")
      .Input("lse", "f32")
      .Input("do", "T")
      .OptionalInput("segments", "i64", "as in the forward op")
      .Output("dq", "T")
      .Output("dk", "T")
      .Output("dv", "T")
      .Attr("causal", true, "as in the forward op")
      .Attr<double>("scale", 0.0, "as in the forward op", Min(0.0))
      .Shape([](ShapeContext& c) {
        if (c.num_inputs() > kBackwardSegments) {
          WEIR_ASSIGN_OR_RETURN(Dims d, GetDims(c.input(0), c.input(1), c.input(2)));
          WEIR_RETURN_IF_ERROR(CheckSegments(c.input(kBackwardSegments), d));
        }
        c.set_output(0, c.input(0));
        c.set_output(1, c.input(1));
        c.set_output(2, c.input(2));
        return Status();
      })
      .Kernel("cpu", AttentionGradCpu, KernelFloatTypes());
}

}  // namespace weir::nn
