// nn.PagedLatentAttention: new tokens attend to themselves and to a paged cache of earlier ones,
// with one key head shared by every query head and values that are the keys' first columns. That
// is MLA's absorbed decode (spec §2.2): the cache holds c_KV and the rotated RoPE key, 576 wide,
// the value is c_KV (512), and the cache lives in blocks of 64 tokens that a block table maps to
// each sequence, so sequences grow without moving what they cached (FlashMLA's layout).
//
// The op reads the cache and never writes it: the new tokens' rows come in as `kv`, and the
// caller (plugins/deepseek/decoder.cc) stores them in the cache after the step. Decoding only:
// it has no gradient (training attends with nn.Attention over the decompressed heads).
#include <tbb/task_arena.h>

#include "nn_common.h"
#include "weir/gemm.h"

namespace weir::nn {
namespace {

enum Input { kQ, kKv, kCache, kBlockTable, kLengths };

struct PagedDims {
  int64_t batch, time, heads, d, dv, blocks, block_size, max_blocks;
};

StatusOr<PagedDims> GetPagedDims(const std::vector<TensorType>& in, int64_t value_dim) {
  const TensorType &q = in[kQ], &kv = in[kKv], &cache = in[kCache];
  const TensorType &table = in[kBlockTable], &lengths = in[kLengths];
  auto bad = [&](const std::string& why) {
    return InvalidArgument("q " + q.ToString() + ", kv " + kv.ToString() + ", cache " +
                           cache.ToString() + ", block_table " + table.ToString() + ", lengths " +
                           lengths.ToString() + ": " + why);
  };
  if (q.shape.size() != 4) return bad("q must be [batch, time, heads, d]");
  PagedDims d{q.shape[0], q.shape[1], q.shape[2], q.shape[3], 0, 0, 0, 0};
  if (kv.shape != Shape{d.batch, d.time, d.d}) return bad("kv must be [batch, time, d]");
  if (cache.shape.size() != 3 || cache.shape[2] != d.d)
    return bad("cache must be [blocks, block_size, d]");
  if (q.dtype != kv.dtype || q.dtype != cache.dtype) return bad("q, kv and cache dtypes differ");
  d.blocks = cache.shape[0];
  d.block_size = cache.shape[1];
  if (d.block_size < 1) return bad("the block size must be at least 1");
  if (table.dtype != DT_I64 || table.shape.size() != 2 || table.shape[0] != d.batch)
    return bad("block_table must be i64 [batch, max_blocks]");
  d.max_blocks = table.shape[1];
  if (lengths.dtype != DT_I64 || lengths.shape != Shape{d.batch})
    return bad("lengths must be i64 [batch]");
  if (value_dim > d.d)
    return bad("value_dim " + std::to_string(value_dim) + " is wider than the keys");
  d.dv = value_dim > 0 ? value_dim : d.d;
  return d;
}

std::vector<TensorType> Types(const KernelContext& ctx) {
  std::vector<TensorType> types;
  for (int i = 0; i < ctx.num_inputs(); ++i)
    types.push_back({ctx.input(i).dtype(), ctx.input(i).shape()});
  return types;
}

Status PagedShape(ShapeContext& ctx) {
  std::vector<TensorType> in;
  for (int i = 0; i < ctx.num_inputs(); ++i) in.push_back(ctx.input(i));
  WEIR_ASSIGN_OR_RETURN(PagedDims d, GetPagedDims(in, ctx.attrs().Int("value_dim")));
  DataType t = ctx.input(kQ).dtype;
  ctx.set_output(0, {t, {d.batch, d.time, d.heads, d.dv}});
  ctx.set_output(1, {t == DT_F64 ? DT_F64 : DT_F32, {d.batch, d.heads, d.time}});
  return Status();
}

// Each sequence's cached tokens must fit its row of the block table, and every block they use
// must be in the cache.
Status CheckTable(const PagedDims& d, const Tensor& table, const Tensor& lengths) {
  const int64_t *ids = table.data<int64_t>(), *len = lengths.data<int64_t>();
  for (int64_t b = 0; b < d.batch; ++b) {
    if (len[b] < 0 || len[b] > d.max_blocks * d.block_size) {
      return InvalidArgument("sequence " + std::to_string(b) + " has " + std::to_string(len[b]) +
                             " cached tokens; its block table holds 0 to " +
                             std::to_string(d.max_blocks * d.block_size));
    }
    for (int64_t p = 0; p * d.block_size < len[b]; ++p) {
      int64_t id = ids[b * d.max_blocks + p];
      if (id < 0 || id >= d.blocks) {
        return InvalidArgument("block_table[" + std::to_string(b) + ", " + std::to_string(p) +
                               "] is " + std::to_string(id) + "; the cache has " +
                               std::to_string(d.blocks) + " blocks");
      }
    }
  }
  return Status();
}

// Query rows per task: a sequence's queries are one matrix of time·heads rows (heads share the
// key), so every GEMM reads them in place.
constexpr int64_t kRowBlock = 64;

// The CPU kernel, flash-decoding style: a task takes a block of query rows of one sequence and a
// run of its key chunks (cached blocks, then the new tokens), with q·kᵀ and p·v as GEMMs over the
// chunk in place and an online softmax between them. With more than one run per sequence (few
// rows, long caches: a decode step) the runs' maxima, sums and outputs are combined after.
Status PagedLatentAttentionCpu(KernelContext& ctx) {
  const Attrs& attrs = ctx.attrs();
  WEIR_ASSIGN_OR_RETURN(PagedDims d, GetPagedDims(Types(ctx), attrs.Int("value_dim")));
  Tensor q = ctx.input(kQ).Contiguous(), kv = ctx.input(kKv).Contiguous();
  Tensor cache = ctx.input(kCache).Contiguous();
  Tensor table = ctx.input(kBlockTable).Contiguous(), lengths = ctx.input(kLengths).Contiguous();
  WEIR_RETURN_IF_ERROR(CheckTable(d, table, lengths));
  const int64_t* ids = table.data<int64_t>();
  const int64_t* cached = lengths.data<int64_t>();
  const int64_t rows = d.time * d.heads, row_blocks = (rows + kRowBlock - 1) / kRowBlock;
  if (rows == 0 || d.batch == 0) return Status();
  // Chunks of sequence b: its ceil(cached / block_size) blocks, then the new tokens.
  auto chunks_of = [&](int64_t b) { return (cached[b] + d.block_size - 1) / d.block_size + 1; };
  int64_t max_chunks = 1;
  for (int64_t b = 0; b < d.batch; ++b) max_chunks = std::max(max_chunks, chunks_of(b));
  const int64_t row_tasks = d.batch * row_blocks;
  const int64_t wanted = 4 * static_cast<int64_t>(tbb::this_task_arena::max_concurrency());
  const int64_t runs = std::clamp<int64_t>((wanted + row_tasks - 1) / row_tasks, 1, max_chunks);
  const int64_t run_chunks = (max_chunks + runs - 1) / runs;
  const double scale_attr = attrs.Float("scale");
  return DispatchFloat(q.dtype(), [&](auto tag) {
    using T = decltype(tag);
    using A = AccumulatorOf<T>;
    constexpr DataType kT = DataTypeOf<T>(), kA = DataTypeOf<A>();
    const A scale =
        static_cast<A>(scale_attr > 0 ? scale_attr : 1.0 / std::sqrt(static_cast<double>(d.d)));
    const A neg_inf = -std::numeric_limits<A>::infinity();
    const T *qd = q.data<T>(), *kvd = kv.data<T>(), *cached_rows = cache.data<T>();
    T* out = ctx.output(0).data<T>();
    A* lse = static_cast<A*>(ctx.output(1).raw_data());
    // Per (batch, row, run) when runs > 1: the run's max, sum and unnormalized output.
    std::vector<A> part_max, part_sum, part_out;
    if (runs > 1) {
      part_max.assign(static_cast<size_t>(d.batch * rows * runs), neg_inf);
      part_sum.assign(part_max.size(), A(0));
      part_out.assign(part_max.size() * static_cast<size_t>(d.dv), A(0));
    }
    // Writes row r's result (max m, sum l, unnormalized output acc) of sequence b.
    auto finish = [&](int64_t b, int64_t r, A m, A l, const A* acc) {
      T* o = out + (b * rows + r) * d.dv;
      A inv = l > 0 ? A(1) / l : A(0);
      for (int64_t x = 0; x < d.dv; ++x) o[x] = Narrow<T>(acc[x] * inv);
      int64_t t = r / d.heads, h = r % d.heads;
      lse[(b * d.heads + h) * d.time + t] = l > 0 ? m + std::log(l) : neg_inf;
    };
    FirstError first;
    ParallelFor(row_tasks * runs, 1, [&](int64_t begin, int64_t end) {
      SingleThreadedGemms one_thread;  // the tasks already fill the cores
      const int64_t most_keys = std::max(d.block_size, d.time);
      std::vector<A> s(static_cast<size_t>(kRowBlock * most_keys)),
          acc(static_cast<size_t>(kRowBlock * d.dv)), m(kRowBlock), l(kRowBlock);
      std::vector<T> p(s.size());
      for (int64_t task = begin; task < end && !first.failed(); ++task) {
        const int64_t run = task % runs, b = task / runs / row_blocks;
        const int64_t r0 = task / runs % row_blocks * kRowBlock,
                      nr = std::min(kRowBlock, rows - r0);
        std::fill(acc.begin(), acc.end(), A(0));
        std::fill(m.begin(), m.end(), neg_inf);
        std::fill(l.begin(), l.end(), A(0));
        const int64_t new_chunk = chunks_of(b) - 1;
        const int64_t c_end = std::min((run + 1) * run_chunks, new_chunk + 1);
        for (int64_t c = run * run_chunks; c < c_end; ++c) {
          // The chunk's keys: rows `d` apart, values their first dv columns.
          const T* keys = c < new_chunk
                              ? cached_rows + ids[b * d.max_blocks + c] * d.block_size * d.d
                              : kvd + b * d.time * d.d;
          int64_t nk =
              c < new_chunk ? std::min(d.block_size, cached[b] - c * d.block_size) : d.time;
          Status st = GemmBlock(kT, kA, nr, nk, d.d, MatrixRef{qd + (b * rows + r0) * d.d, d.d},
                                MatrixRef{keys, d.d, true}, s.data(), nk);
          for (int64_t i = 0; st.ok() && i < nr; ++i) {
            // A new token sees the new tokens up to itself.
            int64_t visible = c < new_chunk ? nk : (r0 + i) / d.heads + 1;
            T* prow = p.data() + i * nk;
            std::fill(prow + visible, prow + nk, T(0));
            A corr = OnlineSoftmaxStep(s.data() + i * nk, visible, scale, m[static_cast<size_t>(i)],
                                       l[static_cast<size_t>(i)], prow);
            for (int64_t x = 0; x < d.dv; ++x) acc[static_cast<size_t>(i * d.dv + x)] *= corr;
          }
          if (st.ok()) {
            st = GemmBlock(kT, kA, nr, d.dv, nk, MatrixRef{p.data(), nk}, MatrixRef{keys, d.d},
                           acc.data(), d.dv, /*accumulate=*/true);
          }
          first.Record(st);
        }
        for (int64_t i = 0; i < nr; ++i) {
          const A* row_acc = acc.data() + i * d.dv;
          if (runs == 1) {
            finish(b, r0 + i, m[static_cast<size_t>(i)], l[static_cast<size_t>(i)], row_acc);
            continue;
          }
          size_t at = static_cast<size_t>(((b * rows) + r0 + i) * runs + run);
          part_max[at] = m[static_cast<size_t>(i)];
          part_sum[at] = l[static_cast<size_t>(i)];
          std::copy(row_acc, row_acc + d.dv,
                    part_out.begin() + static_cast<std::ptrdiff_t>(at) * d.dv);
        }
      }
    });
    WEIR_RETURN_IF_ERROR(first.status());
    if (runs == 1) return Status();
    ParallelFor(d.batch * rows, 16, [&](int64_t begin, int64_t end) {
      std::vector<A> acc(static_cast<size_t>(d.dv));
      for (int64_t row = begin; row < end; ++row) {
        const A* pm = part_max.data() + row * runs;
        const A* ps = part_sum.data() + row * runs;
        A total_max = *std::max_element(pm, pm + runs), total = 0;
        std::fill(acc.begin(), acc.end(), A(0));
        for (int64_t k = 0; k < runs; ++k) {
          if (pm[k] == neg_inf) continue;  // a run past this sequence's chunks
          A w = Exp(pm[k] - total_max);
          total += ps[k] * w;
          const A* po = part_out.data() + (row * runs + k) * d.dv;
          for (int64_t x = 0; x < d.dv; ++x) acc[static_cast<size_t>(x)] += po[x] * w;
        }
        finish(row / rows, row % rows, total_max, total, acc.data());
      }
    });
    return Status();
  });
}

}  // namespace

void RegisterPagedAttention(Registrar& r) {
  r.TensorOp("nn.PagedLatentAttention")
      .Doc(
          "Attention of new tokens over a paged cache of earlier ones, with one key head shared "
          "by all query heads and values that are the keys' first value_dim columns: MLA's "
          "absorbed decode (DeepSeek-V3: d = 576 = c_KV ‖ k_pe, value_dim = 512, blocks of 64). "
          "Sequence b's cached token j is cache[block_table[b, j / block_size], j % block_size]; "
          "its new token i (position lengths[b] + i) sees every cached token and new tokens 0..i. "
          "Reads the cache, never writes it: store kv into the cache after the step. Decoding "
          "only, no gradient.")
      .Input("q", "T", "[batch, time, heads, d] queries of the new tokens")
      .Input("kv", "T", "[batch, time, d] the new tokens' key rows (what the cache will hold)")
      .Input("cache", "T", "[blocks, block_size, d] key rows of the cached tokens")
      .Input("block_table", "i64", "[batch, max_blocks] cache block of each sequence's j-th block")
      .Input("lengths", "i64", "[batch] cached tokens of each sequence (before the new ones)")
      .Output("o", "T", "[batch, time, heads, value_dim]")
      .Output("lse", "f32", "[batch, heads, time] log-sum-exp of the scaled scores (f64 for f64)")
      .Attr<int64_t>("value_dim", 0, "value width: the keys' first value_dim columns; 0: all",
                     Min(0))
      .Attr<double>("scale", 0.0, "score scale; 0 means 1/sqrt(d)", Min(0.0))
      .Shape(PagedShape)
      .Kernel("cpu", PagedLatentAttentionCpu, KernelFloatTypes())
      .Cost([](const std::vector<TensorType>& in, const std::vector<TensorType>& out,
               const Attrs&) {
        // Every query row against a full block table: the cost of the largest cache it serves.
        const Shape &q = in[kQ].shape, &cache = in[kCache].shape, &table = in[kBlockTable].shape;
        double keys = static_cast<double>(table[1] * cache[1] + q[1]);
        return OpCost{2.0 * static_cast<double>(q[0] * q[1] * q[2]) * keys *
                      static_cast<double>(q[3] + out[0].shape[3])};
      });
}

}  // namespace weir::nn
