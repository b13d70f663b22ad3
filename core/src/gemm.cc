#include "weir/gemm.h"

#include <omp.h>

#include <cstring>
#include <memory>
#include <mutex>
#include <oneapi/dnnl/dnnl.hpp>
#include <unordered_map>
#include <vector>

namespace weir {
namespace {

using dnnl::memory;

struct Problem {
  int64_t batch, m, n, k;
  bool batched_b;
};

StatusOr<Problem> Describe(const Shape& a, bool ta, const Shape& b, bool tb) {
  auto mismatch = [&](const std::string& why) {
    return InvalidArgument("matmul of " + ShapeString(a) + (ta ? "ᵀ" : "") + " and " +
                           ShapeString(b) + (tb ? "ᵀ" : "") + ": " + why);
  };
  if (a.size() < 2 || b.size() < 2) return mismatch("both need at least 2 dims");
  int64_t m = ta ? a[a.size() - 1] : a[a.size() - 2];
  int64_t ka = ta ? a[a.size() - 2] : a[a.size() - 1];
  int64_t kb = tb ? b[b.size() - 1] : b[b.size() - 2];
  int64_t n = tb ? b[b.size() - 2] : b[b.size() - 1];
  if (ka != kb)
    return mismatch("inner dims differ (" + std::to_string(ka) + " vs " + std::to_string(kb) + ")");
  Shape lead_a(a.begin(), a.end() - 2), lead_b(b.begin(), b.end() - 2);
  Problem p{NumElements(lead_a), m, n, ka, !lead_b.empty()};
  if (!lead_b.empty() && lead_a != lead_b) {
    return mismatch("batch dims differ (" + ShapeString(lead_a) + " vs " + ShapeString(lead_b) +
                    ")");
  }
  // A shared weight with an untransposed A: fold the batch into M, one big GEMM.
  if (!p.batched_b && !ta) {
    p.m *= p.batch;
    p.batch = 1;
  }
  return p;
}

// A [batch, rows, cols] operand stored row-major, transposed when asked (stored as [cols, rows]).
// Single matrices get 2-D descriptors: oneDNN's GEMM-based matmul takes those (transposed or
// not), while 3-D ones with unusual strides fall back to its slow reference kernel.
memory::desc Operand(int64_t batch, int64_t rows, int64_t cols, bool transposed,
                     memory::data_type dt) {
  int64_t ld = transposed ? rows : cols;  // leading dimension of the stored matrix
  if (batch == 1) {
    return memory::desc({rows, cols}, dt, transposed ? memory::dims{1, ld} : memory::dims{ld, 1});
  }
  int64_t batch_stride = rows * cols;
  return memory::desc(
      {batch, rows, cols}, dt,
      transposed ? memory::dims{batch_stride, 1, ld} : memory::dims{batch_stride, ld, 1});
}

memory::data_type DnnlType(DataType t) {
  return t == DT_BF16 ? memory::data_type::bf16 : memory::data_type::f32;
}

// A primitive and the scratchpad it needs. weir owns the scratchpads (one per thread): oneDNN's own
// is shared by all primitives and lets a primitive run only on the thread that created it, while
// kernels here run cached primitives from any TBB thread, several at once.
struct Matmul {
  dnnl::matmul primitive;
  memory::desc scratchpad;
};

struct Cache {
  std::mutex mu;
  dnnl::engine engine{dnnl::engine::kind::cpu, 0};
  std::unordered_map<std::string, std::shared_ptr<Matmul>> primitives;
};

Cache& GetCache() {
  static auto* cache = new Cache();
  return *cache;
}

// The matmul primitive for these descriptors, created on first use. The key holds everything the
// descriptors encode plus the OpenMP thread count, which decides how oneDNN splits the work (and
// so the rounding): a primitive made for one count is never run under another.
StatusOr<std::shared_ptr<Matmul>> Primitive(const std::string& shape_key, const memory::desc& a_md,
                                            const memory::desc& b_md, const memory::desc& c_md,
                                            bool accumulate) {
  Cache& cache = GetCache();
  std::string key = shape_key + (accumulate ? "+" : "=") + std::to_string(omp_get_max_threads());
  std::lock_guard<std::mutex> lock(cache.mu);
  auto it = cache.primitives.find(key);
  if (it != cache.primitives.end()) return it->second;
  try {
    dnnl::primitive_attr attr;
    attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
    if (accumulate) {
      dnnl::post_ops ops;
      ops.append_sum(1.0f);
      attr.set_post_ops(ops);
    }
    dnnl::matmul::primitive_desc pd(dnnl::matmul::desc(a_md, b_md, c_md), attr, cache.engine);
    auto prim = std::make_shared<Matmul>(Matmul{dnnl::matmul(pd), pd.scratchpad_desc()});
    cache.primitives.emplace(key, prim);
    return prim;
  } catch (const dnnl::error& e) {
    return Internal(std::string("oneDNN cannot build a matmul for ") + shape_key + ": " + e.what());
  }
}

void Execute(const Matmul& prim, const memory::desc& a_md, const void* a, const memory::desc& b_md,
             const void* b, const memory::desc& c_md, void* c) {
  Cache& cache = GetCache();
  thread_local dnnl::stream stream(cache.engine);
  thread_local std::vector<char> scratchpad;
  size_t need = prim.scratchpad.get_size() + 64;  // room to align to a cache line
  if (scratchpad.size() < need) scratchpad.resize(need);
  void* aligned = scratchpad.data() + (64 - reinterpret_cast<uintptr_t>(scratchpad.data()) % 64);
  memory a_mem(a_md, cache.engine, const_cast<void*>(a));
  memory b_mem(b_md, cache.engine, const_cast<void*>(b));
  memory c_mem(c_md, cache.engine, c);
  memory s_mem(prim.scratchpad, cache.engine, aligned);
  prim.primitive.execute(stream, {{DNNL_ARG_SRC, a_mem},
                                  {DNNL_ARG_WEIGHTS, b_mem},
                                  {DNNL_ARG_DST, c_mem},
                                  {DNNL_ARG_SCRATCHPAD, s_mem}});
  stream.wait();
}

// C = op(A)·op(B) in double, for f64 (which oneDNN lacks on CPU). Strided like GemmBlock.
void LoopGemm(int64_t m, int64_t n, int64_t k, const double* a, int64_t lda, bool ta,
              const double* b, int64_t ldb, bool tb, double* c, int64_t ldc, bool accumulate) {
  for (int64_t i = 0; i < m; ++i) {
    for (int64_t j = 0; j < n; ++j) {
      double acc = accumulate ? c[i * ldc + j] : 0.0;
      for (int64_t l = 0; l < k; ++l)
        acc += (ta ? a[l * lda + i] : a[i * lda + l]) * (tb ? b[j * ldb + l] : b[l * ldb + j]);
      c[i * ldc + j] = acc;
    }
  }
}

}  // namespace

StatusOr<Shape> GemmShape(const Shape& a, bool ta, const Shape& b, bool tb) {
  WEIR_RETURN_IF_ERROR(Describe(a, ta, b, tb).status());  // checks the shapes fit
  Shape out(a.begin(), a.end() - 2);
  out.push_back(ta ? a[a.size() - 1] : a[a.size() - 2]);
  out.push_back(tb ? b[b.size() - 2] : b[b.size() - 1]);
  return out;
}

Status Gemm(const Tensor& a_in, bool ta, const Tensor& b_in, bool tb, Tensor& c, bool accumulate) {
  WEIR_ASSIGN_OR_RETURN(Problem p, Describe(a_in.shape(), ta, b_in.shape(), tb));
  if (a_in.dtype() != b_in.dtype() || a_in.dtype() != c.dtype()) {
    return InvalidArgument(std::string("matmul dtypes differ: ") + DataTypeName(a_in.dtype()) +
                           ", " + DataTypeName(b_in.dtype()) + " -> " + DataTypeName(c.dtype()));
  }
  Tensor a = a_in.Contiguous(), b = b_in.Contiguous();
  if (p.m == 0 || p.n == 0) return Status();
  int64_t elt = static_cast<int64_t>(DataTypeSize(a.dtype()));
  auto at = [elt](const void* base, int64_t index, int64_t stride) {
    return static_cast<const char*>(base) + index * stride * elt;
  };
  // Single products, a shared B under a transposed A (a loop of 2-D products) and f64 go through
  // GemmBlock; a batched B runs as one 3-D primitive.
  if (p.batch == 1 || !p.batched_b || a.dtype() == DT_F64) {
    for (int64_t r = 0; r < p.batch; ++r) {
      MatrixRef ar{at(a.raw_data(), r, p.m * p.k), ta ? p.m : p.k, ta};
      MatrixRef br{at(b.raw_data(), p.batched_b ? r : 0, p.k * p.n), tb ? p.k : p.n, tb};
      WEIR_RETURN_IF_ERROR(GemmBlock(a.dtype(), c.dtype(), p.m, p.n, p.k, ar, br,
                                     const_cast<char*>(at(c.raw_data(), r, p.m * p.n)), p.n,
                                     accumulate));
    }
    return Status();
  }
  if (a.dtype() != DT_F32 && a.dtype() != DT_BF16)
    return InvalidArgument(std::string("matmul has no kernel for ") + DataTypeName(a.dtype()));
  memory::data_type dt = DnnlType(a.dtype());
  memory::desc a_md = Operand(p.batch, p.m, p.k, ta, dt);
  memory::desc b_md = Operand(p.batch, p.k, p.n, tb, dt);
  memory::desc c_md = Operand(p.batch, p.m, p.n, false, dt);
  std::string key = "batched:" + std::to_string(static_cast<int>(dt)) + ":" +
                    std::to_string(p.batch) + ":" + std::to_string(p.m) + ":" +
                    std::to_string(p.n) + ":" + std::to_string(p.k) + ":" + std::to_string(ta) +
                    std::to_string(tb);
  WEIR_ASSIGN_OR_RETURN(auto prim, Primitive(key, a_md, b_md, c_md, accumulate));
  Execute(*prim, a_md, a.raw_data(), b_md, b.raw_data(), c_md, c.raw_data());
  return Status();
}

Status GemmBlock(DataType ab_type, DataType c_type, int64_t m, int64_t n, int64_t k, MatrixRef a,
                 MatrixRef b, void* c, int64_t ldc, bool accumulate) {
  if (m == 0 || n == 0) return Status();
  if (ab_type == DT_F64 && c_type == DT_F64) {
    LoopGemm(m, n, k, static_cast<const double*>(a.data), a.ld, a.transposed,
             static_cast<const double*>(b.data), b.ld, b.transposed, static_cast<double*>(c), ldc,
             accumulate);
    return Status();
  }
  bool supported = (ab_type == DT_F32 && c_type == DT_F32) ||
                   (ab_type == DT_BF16 && (c_type == DT_BF16 || c_type == DT_F32));
  if (!supported) {
    return InvalidArgument(std::string("matmul has no kernel for ") + DataTypeName(ab_type) +
                           " -> " + DataTypeName(c_type));
  }
  if (k == 0) {  // an empty sum: C = 0 (or unchanged)
    if (!accumulate) {
      size_t elt = DataTypeSize(c_type);
      for (int64_t i = 0; i < m; ++i)
        std::memset(static_cast<char*>(c) + i * ldc * static_cast<int64_t>(elt), 0,
                    static_cast<size_t>(n) * elt);
    }
    return Status();
  }
  auto stored = [](int64_t rows, int64_t cols, MatrixRef r, memory::data_type dt) {
    return memory::desc({rows, cols}, dt,
                        r.transposed ? memory::dims{1, r.ld} : memory::dims{r.ld, 1});
  };
  memory::desc a_md = stored(m, k, a, DnnlType(ab_type));
  memory::desc b_md = stored(k, n, b, DnnlType(ab_type));
  memory::desc c_md = stored(m, n, MatrixRef{c, ldc}, DnnlType(c_type));
  std::string key = std::to_string(static_cast<int>(ab_type)) + ">" +
                    std::to_string(static_cast<int>(c_type)) + ":" + std::to_string(m) + "x" +
                    std::to_string(n) + "x" + std::to_string(k) + ":" + std::to_string(a.ld) +
                    (a.transposed ? "t" : "n") + std::to_string(b.ld) + (b.transposed ? "t" : "n") +
                    std::to_string(ldc);
  WEIR_ASSIGN_OR_RETURN(auto prim, Primitive(key, a_md, b_md, c_md, accumulate));
  Execute(*prim, a_md, a.data, b_md, b.data, c_md, c);
  return Status();
}

SingleThreadedGemms::SingleThreadedGemms() : saved_(omp_get_max_threads()) {
  omp_set_num_threads(1);
}

SingleThreadedGemms::~SingleThreadedGemms() { omp_set_num_threads(saved_); }

}  // namespace weir
