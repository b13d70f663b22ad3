#include "weir/gemm.h"

#include <memory>
#include <mutex>
#include <oneapi/dnnl/dnnl.hpp>
#include <unordered_map>

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

struct Cache {
  std::mutex mu;
  dnnl::engine engine{dnnl::engine::kind::cpu, 0};
  std::unordered_map<std::string, std::shared_ptr<dnnl::matmul>> primitives;
};

Cache& GetCache() {
  static auto* cache = new Cache();
  return *cache;
}

template <typename T>
void LoopGemm(const T* a, bool ta, const T* b, bool tb, T* c, const Problem& p, bool accumulate) {
  for (int64_t bi = 0; bi < p.batch; ++bi) {
    const T* A = a + bi * p.m * p.k;
    const T* B = b + (p.batched_b ? bi * p.k * p.n : 0);
    T* C = c + bi * p.m * p.n;
    for (int64_t i = 0; i < p.m; ++i) {
      for (int64_t j = 0; j < p.n; ++j) {
        double acc = accumulate ? static_cast<double>(C[i * p.n + j]) : 0.0;
        for (int64_t l = 0; l < p.k; ++l) {
          double x = static_cast<double>(ta ? A[l * p.m + i] : A[i * p.k + l]);
          double y = static_cast<double>(tb ? B[j * p.k + l] : B[l * p.n + j]);
          acc += x * y;
        }
        C[i * p.n + j] = static_cast<T>(acc);
      }
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
  if (a.dtype() == DT_F64) {
    LoopGemm(a.data<double>(), ta, b.data<double>(), tb, c.data<double>(), p, accumulate);
    return Status();
  }
  if (a.dtype() != DT_F32 && a.dtype() != DT_BF16)
    return InvalidArgument(std::string("matmul has no kernel for ") + DataTypeName(a.dtype()));

  Cache& cache = GetCache();
  memory::data_type dt = DnnlType(a.dtype());
  // A 2-D b shared across a batched, transposed a runs as a loop of 2-D products (with an
  // untransposed a the batch was folded into M already).
  bool loop_batch = p.batch > 1 && !p.batched_b;
  int64_t desc_batch = loop_batch ? 1 : p.batch;
  memory::desc a_md = Operand(desc_batch, p.m, p.k, ta, dt);
  memory::desc b_md = Operand(desc_batch, p.k, p.n, tb, dt);
  memory::desc c_md = Operand(desc_batch, p.m, p.n, false, dt);
  std::string key = std::to_string(static_cast<int>(dt)) + ":" + std::to_string(p.batch) + ":" +
                    std::to_string(p.m) + ":" + std::to_string(p.n) + ":" + std::to_string(p.k) +
                    ":" + std::to_string(ta) + std::to_string(tb) + std::to_string(p.batched_b) +
                    std::to_string(accumulate);
  std::shared_ptr<dnnl::matmul> prim;
  {
    std::lock_guard<std::mutex> lock(cache.mu);
    auto it = cache.primitives.find(key);
    if (it != cache.primitives.end()) {
      prim = it->second;
    } else {
      try {
        dnnl::primitive_attr attr;
        if (accumulate) {
          dnnl::post_ops ops;
          ops.append_sum(1.0f);
          attr.set_post_ops(ops);
        }
        dnnl::matmul::primitive_desc pd(dnnl::matmul::desc(a_md, b_md, c_md), attr, cache.engine);
        prim = std::make_shared<dnnl::matmul>(pd);
      } catch (const dnnl::error& e) {
        return Internal(std::string("oneDNN cannot build a matmul for this shape: ") + e.what());
      }
      cache.primitives.emplace(key, prim);
    }
  }
  thread_local dnnl::stream stream(cache.engine);
  int64_t elt = static_cast<int64_t>(DataTypeSize(a.dtype()));
  for (int64_t r = 0; r < (loop_batch ? p.batch : 1); ++r) {
    memory a_mem(a_md, cache.engine, static_cast<char*>(a.raw_data()) + r * p.m * p.k * elt);
    memory b_mem(b_md, cache.engine, b.raw_data());
    memory c_mem(c_md, cache.engine, static_cast<char*>(c.raw_data()) + r * p.m * p.n * elt);
    prim->execute(stream,
                  {{DNNL_ARG_SRC, a_mem}, {DNNL_ARG_WEIGHTS, b_mem}, {DNNL_ARG_DST, c_mem}});
  }
  stream.wait();
  return Status();
}

}  // namespace weir
