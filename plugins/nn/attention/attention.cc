// nn.Attention: softmax attention, multi-head or grouped-query, causal by default. The CPU kernel
// is tiled with an online softmax, so it never holds a [T, S] score matrix: memory is O(T·d).
// The forward pass also returns the log-sum-exp of each query's scores, which the backward pass
// (nn.AttentionGrad, flash-attention style) uses to recompute the probabilities.
#include "nn_common.h"

namespace weir::nn {
namespace {

constexpr int64_t kBlock = 64;

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

// The last key position query t may see.
int64_t LastKey(const Dims& d, int64_t t, bool causal) {
  return causal ? t + (d.s - d.t) : d.s - 1;
}

// Σ a[x]·b[x] in eight partial sums, which the compiler turns into vector code (one running sum
// is a serial dependency it may not reorder).
template <typename A>
inline A Dot(const A* a, const A* b, int64_t n) {
  A part[8] = {};
  int64_t x = 0;
  for (; x + 8 <= n; x += 8)
    for (int l = 0; l < 8; ++l) part[l] += a[x + l] * b[x + l];
  A sum = ((part[0] + part[1]) + (part[2] + part[3])) + ((part[4] + part[5]) + (part[6] + part[7]));
  for (; x < n; ++x) sum += a[x] * b[x];
  return sum;
}

// Copies rows [0, n) of head `head` of a [batch, n, heads, width] tensor into dense [n, width].
template <typename T, typename A>
void Gather(const T* src, int64_t b, int64_t head, int64_t n, int64_t heads, int64_t width,
            A* out) {
  for (int64_t j = 0; j < n; ++j) {
    const T* row = src + ((b * n + j) * heads + head) * width;
    for (int64_t x = 0; x < width; ++x) out[j * width + x] = Widen(row[x]);
  }
}

Status AttentionShape(ShapeContext& ctx) {
  WEIR_ASSIGN_OR_RETURN(Dims d, GetDims(ctx.input(0), ctx.input(1), ctx.input(2)));
  ctx.set_output(0, {ctx.input(0).dtype, {d.batch, d.t, d.heads, d.dv}});
  ctx.set_output(1, {LseType(ctx.input(0).dtype), {d.batch, d.heads, d.t}});
  return Status();
}

// What both kernels start from: their inputs made dense, the dims and the attrs.
struct Problem {
  std::vector<Tensor> in;
  Dims d;
  bool causal;
  double scale;
};

StatusOr<Problem> Prepare(const KernelContext& ctx) {
  Problem p;
  for (int i = 0; i < ctx.num_inputs(); ++i) p.in.push_back(ctx.input(i).Contiguous());
  auto type = [&](int i) {
    return TensorType{p.in[static_cast<size_t>(i)].dtype(), p.in[static_cast<size_t>(i)].shape()};
  };
  WEIR_ASSIGN_OR_RETURN(p.d, GetDims(type(0), type(1), type(2)));
  p.causal = ctx.attrs().Bool("causal");
  p.scale = Scale(ctx.attrs(), p.d.d);
  return p;
}

Status AttentionCpu(KernelContext& ctx) {
  WEIR_ASSIGN_OR_RETURN(Problem pr, Prepare(ctx));
  const Tensor &q = pr.in[0], &k = pr.in[1], &v = pr.in[2];
  const Dims& d = pr.d;
  bool causal = pr.causal;
  double scale = pr.scale;
  return DispatchFloat(q.dtype(), [&](auto tag) {
    using T = decltype(tag);
    using A = AccumulatorOf<T>;
    const T *qp = q.data<T>(), *kp = k.data<T>(), *vp = v.data<T>();
    T* op = ctx.output(0).data<T>();
    A* lse = static_cast<A*>(ctx.output(1).raw_data());
    int64_t group = d.heads / d.kv_heads;
    ParallelFor(d.batch * d.heads, 1, [&](int64_t begin, int64_t end) {
      std::vector<A> acc(static_cast<size_t>(d.dv)), qrow(static_cast<size_t>(d.d)), s(kBlock);
      // The head's keys and values, dense and widened once: the inner loops then stream
      // contiguous memory instead of converting strided bf16 per query.
      std::vector<A> kh(static_cast<size_t>(d.s * d.d)), vh(static_cast<size_t>(d.s * d.dv));
      for (int64_t bh = begin; bh < end; ++bh) {
        int64_t b = bh / d.heads, h = bh % d.heads, hk = h / group;
        Gather(kp, b, hk, d.s, d.kv_heads, d.d, kh.data());
        Gather(vp, b, hk, d.s, d.kv_heads, d.dv, vh.data());
        for (int64_t t = 0; t < d.t; ++t) {
          const T* qi = qp + ((b * d.t + t) * d.heads + h) * d.d;
          for (int64_t x = 0; x < d.d; ++x)
            qrow[static_cast<size_t>(x)] = Widen(qi[x]) * static_cast<A>(scale);
          std::fill(acc.begin(), acc.end(), A(0));
          A m = -std::numeric_limits<A>::infinity(), l = 0;
          int64_t last = LastKey(d, t, causal);
          for (int64_t j0 = 0; j0 <= last; j0 += kBlock) {
            int64_t j1 = std::min(j0 + kBlock, last + 1);
            A bm = -std::numeric_limits<A>::infinity();
            for (int64_t j = j0; j < j1; ++j) {
              A dot = Dot(qrow.data(), kh.data() + j * d.d, d.d);
              s[static_cast<size_t>(j - j0)] = dot;
              bm = std::max(bm, dot);
            }
            A mn = std::max(m, bm);
            A corr = std::exp(m - mn);
            l *= corr;
            for (A& a : acc) a *= corr;
            for (int64_t j = j0; j < j1; ++j) {
              A p = std::exp(s[static_cast<size_t>(j - j0)] - mn);
              l += p;
              const A* vj = vh.data() + j * d.dv;
              for (int64_t x = 0; x < d.dv; ++x) acc[static_cast<size_t>(x)] += p * vj[x];
            }
            m = mn;
          }
          T* oi = op + ((b * d.t + t) * d.heads + h) * d.dv;
          A inv = l > 0 ? A(1) / l : A(0);
          for (int64_t x = 0; x < d.dv; ++x) oi[x] = Narrow<T>(acc[static_cast<size_t>(x)] * inv);
          lse[(b * d.heads + h) * d.t + t] =
              l > 0 ? m + std::log(l) : -std::numeric_limits<A>::infinity();
        }
      }
    });
    return Status();
  });
}

// Inputs: q, k, v, o, lse, do. Outputs: dq, dk, dv. Work is split by (batch, kv head) so the
// query heads that share a kv head accumulate into dk and dv without races.
Status AttentionGradCpu(KernelContext& ctx) {
  WEIR_ASSIGN_OR_RETURN(Problem pr, Prepare(ctx));
  const Tensor &q = pr.in[0], &k = pr.in[1], &v = pr.in[2], &o = pr.in[3], &lse_t = pr.in[4],
               &dout = pr.in[5];
  const Dims& d = pr.d;
  bool causal = pr.causal;
  double scale = pr.scale;
  return DispatchFloat(q.dtype(), [&](auto tag) {
    using T = decltype(tag);
    using A = AccumulatorOf<T>;
    const T *qp = q.data<T>(), *kp = k.data<T>(), *vp = v.data<T>(), *opp = o.data<T>(),
            *dop = dout.data<T>();
    const A* lse = static_cast<const A*>(lse_t.raw_data());
    T *dqp = ctx.output(0).data<T>(), *dkp = ctx.output(1).data<T>(),
      *dvp = ctx.output(2).data<T>();
    int64_t group = d.heads / d.kv_heads;
    A sc = static_cast<A>(scale);
    ParallelFor(d.batch * d.kv_heads, 1, [&](int64_t begin, int64_t end) {
      std::vector<A> dk(static_cast<size_t>(d.s * d.d)), dv(static_cast<size_t>(d.s * d.dv));
      std::vector<A> kh(static_cast<size_t>(d.s * d.d)), vh(static_cast<size_t>(d.s * d.dv));
      std::vector<A> qh(static_cast<size_t>(d.t * d.d)), oh(static_cast<size_t>(d.t * d.dv)),
          doh(static_cast<size_t>(d.t * d.dv));
      std::vector<A> dq(static_cast<size_t>(d.d));
      for (int64_t bk = begin; bk < end; ++bk) {
        int64_t b = bk / d.kv_heads, hk = bk % d.kv_heads;
        std::fill(dk.begin(), dk.end(), A(0));
        std::fill(dv.begin(), dv.end(), A(0));
        Gather(kp, b, hk, d.s, d.kv_heads, d.d, kh.data());
        Gather(vp, b, hk, d.s, d.kv_heads, d.dv, vh.data());
        for (int64_t h = hk * group; h < (hk + 1) * group; ++h) {
          Gather(qp, b, h, d.t, d.heads, d.d, qh.data());
          Gather(opp, b, h, d.t, d.heads, d.dv, oh.data());
          Gather(dop, b, h, d.t, d.heads, d.dv, doh.data());
          for (int64_t t = 0; t < d.t; ++t) {
            const A* qi = qh.data() + t * d.d;
            const A* oi = oh.data() + t * d.dv;
            const A* doi = doh.data() + t * d.dv;
            A li = lse[(b * d.heads + h) * d.t + t];
            A di = 0;
            for (int64_t x = 0; x < d.dv; ++x) di += doi[x] * oi[x];
            std::fill(dq.begin(), dq.end(), A(0));
            for (int64_t j = 0; j <= LastKey(d, t, causal); ++j) {
              const A* kj = kh.data() + j * d.d;
              const A* vj = vh.data() + j * d.dv;
              A p = std::exp(Dot(qi, kj, d.d) * sc - li);
              A dp = Dot(doi, vj, d.dv);
              A* dvj = dv.data() + j * d.dv;
              for (int64_t x = 0; x < d.dv; ++x) dvj[x] += p * doi[x];
              A ds = p * (dp - di) * sc;
              A* dkj = dk.data() + j * d.d;
              for (int64_t x = 0; x < d.d; ++x) {
                dq[static_cast<size_t>(x)] += ds * kj[x];
                dkj[x] += ds * qi[x];
              }
            }
            T* dqi = dqp + ((b * d.t + t) * d.heads + h) * d.d;
            for (int64_t x = 0; x < d.d; ++x) dqi[x] = Narrow<T>(dq[static_cast<size_t>(x)]);
          }
        }
        for (int64_t j = 0; j < d.s; ++j) {
          T* dkj = dkp + ((b * d.s + j) * d.kv_heads + hk) * d.d;
          T* dvj = dvp + ((b * d.s + j) * d.kv_heads + hk) * d.dv;
          for (int64_t x = 0; x < d.d; ++x)
            dkj[x] = Narrow<T>(dk[static_cast<size_t>(j * d.d + x)]);
          for (int64_t x = 0; x < d.dv; ++x)
            dvj[x] = Narrow<T>(dv[static_cast<size_t>(j * d.dv + x)]);
        }
      }
    });
    return Status();
  });
}

Status AttentionGrad(GradContext& g) {
  if (!g.grad(0).valid()) return Status();  // only the lse output was used: nothing to send back
  WEIR_ASSIGN_OR_RETURN(
      auto d, g.Op("nn.AttentionGrad",
                   {g.input(0), g.input(1), g.input(2), g.output(0), g.output(1), g.grad(0)},
                   g.attrs().values()));
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
          "decoding against a cache. Also returns the log-sum-exp of each query's scores.")
      .Input("q", "T", "[batch, time, heads, d]")
      .Input("k", "T", "[batch, keys, kv_heads, d]")
      .Input("v", "T", "[batch, keys, kv_heads, dv]")
      .Output("o", "T", "[batch, time, heads, dv]")
      .Output("lse", "f32", "[batch, heads, time] log-sum-exp of the scaled scores (f64 for f64)")
      .Attr("causal", true, "mask keys after each query's position")
      .Attr<double>("scale", 0.0, "score scale; 0 means 1/sqrt(d)", Min(0.0))
      .Shape(AttentionShape)
      .Kernel("cpu", AttentionCpu, KernelFloatTypes())
      .Gradient(AttentionGrad);
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
      .Output("dq", "T")
      .Output("dk", "T")
      .Output("dv", "T")
      .Attr("causal", true, "as in the forward op")
      .Attr<double>("scale", 0.0, "as in the forward op", Min(0.0))
      .Shape([](ShapeContext& c) {
        c.set_output(0, c.input(0));
        c.set_output(1, c.input(1));
        c.set_output(2, c.input(2));
        return Status();
      })
      .Kernel("cpu", AttentionGradCpu, KernelFloatTypes());
}

}  // namespace weir::nn
