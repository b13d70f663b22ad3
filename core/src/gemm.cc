#include "weir/gemm.h"

#include <glog/logging.h>
#include <immintrin.h>
#include <omp.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstring>
#include <functional>
#include <memory>
#include <mutex>
#include <oneapi/dnnl/dnnl.hpp>
#include <thread>
#include <unordered_map>
#include <vector>

#include "weir/half.h"

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

// Debian's oneDNN builds bf16 matmuls only on CPUs with AVX-512 (avx512_core). Elsewhere bf16
// products widen their operands to f32 (exactly) and run the f32 matmul: the same f32
// accumulation and one rounding of C, at f32's speed. Set at the first bf16 matmul oneDNN refuses.
std::atomic<bool> bf16_widens{false};

void NoteBf16Widens(const Status& refused) {
  if (!bf16_widens.exchange(true)) {
    LOG(WARNING) << "oneDNN has no bf16 matmul on this CPU (" << refused.message()
                 << "); bf16 products run as f32 products of the widened operands";
  }
}

// C (ldc, c_type) = op(A)·op(B) (+ C) for bf16 A and B, through the f32 GemmBlock.
Status WidenedBf16Gemm(int64_t m, int64_t n, int64_t k, MatrixRef a, MatrixRef b, void* c,
                       DataType c_type, int64_t ldc, bool accumulate) {
  auto widen = [](int64_t rows, int64_t cols, MatrixRef r) {
    std::vector<float> out(static_cast<size_t>(rows * cols));
    const bf16* data = static_cast<const bf16*>(r.data);
    for (int64_t i = 0; i < rows; ++i)
      for (int64_t j = 0; j < cols; ++j)
        out[static_cast<size_t>(i * cols + j)] =
            static_cast<float>(r.transposed ? data[j * r.ld + i] : data[i * r.ld + j]);
    return out;
  };
  std::vector<float> wa = widen(m, k, a), wb = widen(k, n, b);
  if (c_type == DT_F32) {
    return GemmBlock(DT_F32, DT_F32, m, n, k, MatrixRef{wa.data(), k}, MatrixRef{wb.data(), n}, c,
                     ldc, accumulate);
  }
  bf16* cb = static_cast<bf16*>(c);
  std::vector<float> wc =
      accumulate ? widen(m, n, MatrixRef{c, ldc}) : std::vector<float>(static_cast<size_t>(m * n));
  WEIR_RETURN_IF_ERROR(GemmBlock(DT_F32, DT_F32, m, n, k, MatrixRef{wa.data(), k},
                                 MatrixRef{wb.data(), n}, wc.data(), n, accumulate));
  for (int64_t i = 0; i < m; ++i)
    for (int64_t j = 0; j < n; ++j) cb[i * ldc + j] = bf16(wc[static_cast<size_t>(i * n + j)]);
  return Status();
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

// Matrix-vector products (M = 1, f32): batch-1 decoding is made of them. oneDNN's matmul costs
// several microseconds per call before it multiplies anything (memory objects, a stream, an
// OpenMP region) and streamed config M's decoding weights at 10 GB/s where these loops reach
// 15-19 (the machine's 2-thread read bandwidth: 18-30 GB/s, as loaded), so they take them. Every
// output element is one sum in a fixed order (16 lanes of four accumulators, then the tail),
// whatever the thread count: results do not depend on how the rows are shared out. gemm.cc is built
// without -march=native, so the AVX-512 versions are chosen at run time.

// Above this many multiply-adds a product is shared out among as many threads as OpenMP would
// use (so SingleThreadedGemms keeps it on one); 64K multiply-adds take about 10 us.
constexpr int64_t kParallelGemv = int64_t{1} << 16;

__attribute__((target("avx512f"))) float DotAvx512(const float* a, const float* b, int64_t k) {
  __m512 s0 = _mm512_setzero_ps(), s1 = s0, s2 = s0, s3 = s0;
  int64_t l = 0;
  for (; l + 64 <= k; l += 64) {
    s0 = _mm512_fmadd_ps(_mm512_loadu_ps(a + l), _mm512_loadu_ps(b + l), s0);
    s1 = _mm512_fmadd_ps(_mm512_loadu_ps(a + l + 16), _mm512_loadu_ps(b + l + 16), s1);
    s2 = _mm512_fmadd_ps(_mm512_loadu_ps(a + l + 32), _mm512_loadu_ps(b + l + 32), s2);
    s3 = _mm512_fmadd_ps(_mm512_loadu_ps(a + l + 48), _mm512_loadu_ps(b + l + 48), s3);
  }
  for (; l + 16 <= k; l += 16)
    s0 = _mm512_fmadd_ps(_mm512_loadu_ps(a + l), _mm512_loadu_ps(b + l), s0);
  if (l < k) {
    __mmask16 mask = static_cast<__mmask16>((1u << (k - l)) - 1);
    s1 =
        _mm512_fmadd_ps(_mm512_maskz_loadu_ps(mask, a + l), _mm512_maskz_loadu_ps(mask, b + l), s1);
  }
  // Summed by hand: GCC 12's _mm512_reduce_add_ps trips -Wuninitialized.
  alignas(64) float lanes[16];
  _mm512_store_ps(lanes, _mm512_add_ps(_mm512_add_ps(s0, s1), _mm512_add_ps(s2, s3)));
  float sum = 0;
  for (float x : lanes) sum += x;
  return sum;
}

float DotPlain(const float* a, const float* b, int64_t k) {
  float s[16] = {};
  int64_t l = 0;
  for (; l + 16 <= k; l += 16)
    for (int i = 0; i < 16; ++i) s[i] += a[l + i] * b[l + i];
  for (int i = 0; l < k; ++l, ++i) s[i] += a[l] * b[l];
  float sum = 0;
  for (float x : s) sum += x;
  return sum;
}

// c[j] (+)= a · b[j·ldb ..] for j in [begin, end): B stored as rows of K (a Linear's weight).
void DotRows(const float* a, const float* b, int64_t ldb, int64_t k, float* c, int64_t begin,
             int64_t end, bool accumulate) {
  // One row at a time: four rows sharing the loads of `a` ran at 60 % of this on config M's
  // weights (the 16 accumulators' arrays spilled), one row streams at the copy bandwidth.
  static const bool avx512 = __builtin_cpu_supports("avx512f");
  for (int64_t j = begin; j < end; ++j) {
    float dot = avx512 ? DotAvx512(a, b + j * ldb, k) : DotPlain(a, b + j * ldb, k);
    c[j] = accumulate ? c[j] + dot : dot;
  }
}

// c[begin, end) (+)= Σ_l a[l] · b[l·ldb + j]: B stored as K rows of N, summed row by row.
__attribute__((target("avx512f"))) void AxpyRowsAvx512(const float* a, const float* b, int64_t ldb,
                                                       int64_t k, float* c, int64_t begin,
                                                       int64_t end, bool accumulate) {
  for (int64_t j = begin; j < end; j += 16) {
    __mmask16 mask =
        end - j >= 16 ? __mmask16(0xFFFF) : static_cast<__mmask16>((1u << (end - j)) - 1);
    __m512 acc = accumulate ? _mm512_maskz_loadu_ps(mask, c + j) : _mm512_setzero_ps();
    for (int64_t l = 0; l < k; ++l)
      acc =
          _mm512_fmadd_ps(_mm512_set1_ps(a[l]), _mm512_maskz_loadu_ps(mask, b + l * ldb + j), acc);
    _mm512_mask_storeu_ps(c + j, mask, acc);
  }
}

void AxpyRowsPlain(const float* a, const float* b, int64_t ldb, int64_t k, float* c, int64_t begin,
                   int64_t end, bool accumulate) {
  for (int64_t j = begin; j < end; ++j) {
    float acc = accumulate ? c[j] : 0.0f;
    for (int64_t l = 0; l < k; ++l) acc = std::fma(a[l], b[l * ldb + j], acc);
    c[j] = acc;
  }
}

// Helper threads that share a product's column chunks with the thread that calls it. An OpenMP
// region under OMP_WAIT_POLICY=passive (which a shared machine needs: spinning OpenMP workers
// stall when another process holds a core) wakes its workers through the kernel each time; a
// decoding step runs ~60 products of ~30 us each, and those wake-ups ate the second core's
// share (two threads streamed config M's weights no faster than one). These helpers keep
// looking for work for a while after each product, yielding the core to anything runnable,
// then sleep. Chunks are claimed one at a time, so a helper that is slow to wake or is
// descheduled only leaves more chunks to the caller; which thread computes a chunk never
// changes its values.
class GemvHelpers {
 public:
  static GemvHelpers& Get() {
    static auto* helpers = new GemvHelpers();  // never destroyed: helpers may outlive main
    return *helpers;
  }

  // part(begin, end) over [0, n) in chunks of `chunk` (the last may be shorter), on the caller
  // and on up to `threads - 1` helpers. A second product that starts while one runs (nodes of
  // a concurrent wave) runs on its caller alone.
  void Run(int64_t n, int64_t chunk, int threads,
           const std::function<void(int64_t, int64_t)>& part) {
    if (threads <= 1) return part(0, n);
    std::unique_lock<std::mutex> busy(run_mu_, std::try_to_lock);
    if (!busy.owns_lock()) return part(0, n);
    Start(std::max(0, std::min(threads - 1, kMaxHelpers)));
    part_ = &part;
    n_ = n;
    chunk_ = chunk;
    chunks_.store((n + chunk - 1) / chunk, std::memory_order_relaxed);
    done_.store(0, std::memory_order_relaxed);
    // The generation goes in the claim word's high half: a helper that wakes late cannot claim
    // a chunk of a later product with this one's state.
    uint64_t generation = ++generation_;
    claim_.store(generation << 32, std::memory_order_seq_cst);
    if (sleeping_.load(std::memory_order_seq_cst) > 0) {
      std::lock_guard<std::mutex> lock(sleep_mu_);
      wake_.notify_all();
    }
    Work(generation);
    while (done_.load(std::memory_order_acquire) < chunks_.load(std::memory_order_relaxed))
      std::this_thread::yield();
  }

 private:
  // A few threads saturate the memory bandwidth a product is bound by; more would only spin.
  static constexpr int kMaxHelpers = 3;
  static constexpr auto kLinger = std::chrono::microseconds(200);

  void Start(int helpers) {
    while (started_ < helpers) {
      std::thread([this] { Loop(); }).detach();
      ++started_;
    }
  }

  // Claims and computes chunks of product `generation` until none is left.
  void Work(uint64_t generation) {
    uint64_t word = claim_.load(std::memory_order_acquire);
    // chunks_ may already be a later product's here: then the claim word's generation differs
    // too, and the exchange fails.
    while ((word >> 32) == generation &&
           static_cast<int64_t>(word & 0xFFFFFFFF) < chunks_.load(std::memory_order_relaxed)) {
      if (!claim_.compare_exchange_weak(word, word + 1, std::memory_order_acq_rel)) continue;
      int64_t c = static_cast<int64_t>(word & 0xFFFFFFFF);
      (*part_)(c * chunk_, std::min(n_, (c + 1) * chunk_));
      done_.fetch_add(1, std::memory_order_release);
      word = claim_.load(std::memory_order_acquire);
    }
  }

  void Loop() {
    uint64_t seen = 0;
    while (true) {
      auto idle_since = std::chrono::steady_clock::now();
      uint64_t now;
      while ((now = claim_.load(std::memory_order_acquire) >> 32) == seen) {
        if (std::chrono::steady_clock::now() - idle_since < kLinger) {
          std::this_thread::yield();
          continue;
        }
        std::unique_lock<std::mutex> lock(sleep_mu_);
        sleeping_.fetch_add(1, std::memory_order_seq_cst);
        wake_.wait(lock, [&] { return (claim_.load(std::memory_order_seq_cst) >> 32) != seen; });
        sleeping_.fetch_sub(1, std::memory_order_seq_cst);
      }
      seen = now;
      Work(now);
    }
  }

  std::mutex run_mu_;  // one product at a time
  int started_ = 0;
  uint64_t generation_ = 0;
  const std::function<void(int64_t, int64_t)>* part_ = nullptr;
  int64_t n_ = 0, chunk_ = 1;
  std::atomic<int64_t> chunks_{0};
  std::atomic<uint64_t> claim_{0};  // generation << 32 | next chunk
  std::atomic<int64_t> done_{0};
  std::atomic<int> sleeping_{0};
  std::mutex sleep_mu_;
  std::condition_variable wake_;
};

// Runs part(begin, end) over the n columns of a product of k-long dot products: on the calling
// thread alone when small, otherwise shared with the helper threads.
void ShareColumns(int64_t n, int64_t k, const std::function<void(int64_t, int64_t)>& part) {
  int threads = omp_get_max_threads();
  if (threads <= 1 || n * k < kParallelGemv || n < 32) return part(0, n);
  // Chunks of 64 columns (whole cache lines of C, ~128 KB of a 512-wide weight): enough of them
  // to balance two threads, few enough that claiming them costs nothing.
  GemvHelpers::Get().Run(n, 64, threads, part);
}

// C[1, n] (+)= A[1, k] · op(B) in f32.
void Gemv(int64_t n, int64_t k, MatrixRef a, MatrixRef b, float* c, bool accumulate) {
  const float* x = static_cast<const float*>(a.data);
  thread_local std::vector<float> gathered;
  if (a.transposed && k > 1) {  // A's one row is a column of the stored matrix
    gathered.resize(static_cast<size_t>(k));
    for (int64_t l = 0; l < k; ++l) gathered[static_cast<size_t>(l)] = x[l * a.ld];
    x = gathered.data();
  }
  const float* w = static_cast<const float*>(b.data);
  static const bool avx512 = __builtin_cpu_supports("avx512f");
  // Columns [begin, end) of the product; a share of the work for one thread.
  auto part = [&](int64_t begin, int64_t end) {
    if (b.transposed) {
      DotRows(x, w, b.ld, k, c, begin, end, accumulate);
    } else if (avx512) {
      AxpyRowsAvx512(x, w, b.ld, k, c, begin, end, accumulate);
    } else {
      AxpyRowsPlain(x, w, b.ld, k, c, begin, end, accumulate);
    }
  };
  ShareColumns(n, k, part);
}

// Matrix-vector products in bf16 (M = 1, f32 accumulation): batch-1 decoding in bf16 streams half
// the bytes of f32 weights, and oneDNN's bf16 matmul costs the same per call as its f32 one. The
// same scheme as Gemv: whole output elements per thread, each one sum in a fixed order, so the
// thread count never changes a bit. A dot product takes the input in blocks of 32 (pairs of
// elements in 16 lanes), four blocks to a step, then single blocks, then a zero-padded tail; each
// lane adds its odd element's product and then its even one's, as AVX512_BF16's vdpbf16ps
// describes its own order; then the four accumulators and the lanes are summed as in DotAvx512.
// Products of two bf16 values are exact in f32, so each of those additions rounds once, as an
// FMA does: the AVX-512F, AVX2 and plain fallbacks below follow the same steps (subnormal inputs
// aside, which vdpbf16ps flushes to zero).

std::atomic<int> bf16_gemv_cap{static_cast<int>(GemvIsa::kAvx512Bf16)};

GemvIsa Bf16GemvIsa() {
  static const GemvIsa best = [] {
    bool avx512 = __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl");
    if (avx512 && __builtin_cpu_supports("avx512bf16")) return GemvIsa::kAvx512Bf16;
    if (avx512) return GemvIsa::kAvx512;
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return GemvIsa::kAvx2;
    return GemvIsa::kPlain;
  }();
  return std::min(best, static_cast<GemvIsa>(bf16_gemv_cap.load(std::memory_order_relaxed)));
}

// The 16 lanes' sum, in the order DotAvx512 sums its f32 lanes.
__attribute__((target("avx512f"))) float SumLanes(__m512 s0, __m512 s1, __m512 s2, __m512 s3) {
  alignas(64) float lanes[16];
  _mm512_store_ps(lanes, _mm512_add_ps(_mm512_add_ps(s0, s1), _mm512_add_ps(s2, s3)));
  float sum = 0;
  for (float x : lanes) sum += x;
  return sum;
}

// (Lambdas do not take their function's target attribute: the steps are functions of their own.)
__attribute__((target("avx512f,avx512bf16"))) inline __m512 DpStep(__m512 acc, __m512i x,
                                                                   __m512i y) {
  return _mm512_dpbf16_ps(acc, reinterpret_cast<__m512bh>(x), reinterpret_cast<__m512bh>(y));
}

__attribute__((target("avx512f"))) inline __m512i Load32(const bf16* p) {
  return _mm512_loadu_si512(p);
}

__attribute__((target("avx512f,avx512bw,avx512bf16"))) float DotBf16Dp(const bf16* a, const bf16* b,
                                                                       int64_t k) {
  __m512 s0 = _mm512_setzero_ps(), s1 = s0, s2 = s0, s3 = s0;
  int64_t l = 0;
  for (; l + 128 <= k; l += 128) {
    s0 = DpStep(s0, Load32(a + l), Load32(b + l));
    s1 = DpStep(s1, Load32(a + l + 32), Load32(b + l + 32));
    s2 = DpStep(s2, Load32(a + l + 64), Load32(b + l + 64));
    s3 = DpStep(s3, Load32(a + l + 96), Load32(b + l + 96));
  }
  for (; l + 32 <= k; l += 32) s0 = DpStep(s0, Load32(a + l), Load32(b + l));
  if (l < k) {
    __mmask32 mask = static_cast<__mmask32>((uint64_t{1} << (k - l)) - 1);
    s1 = DpStep(s1, _mm512_maskz_loadu_epi16(mask, a + l), _mm512_maskz_loadu_epi16(mask, b + l));
  }
  return SumLanes(s0, s1, s2, s3);
}

// bf16 in the low halves of 32-bit lanes as f32 bits. (Masked here and in AxpyRowsBf16Avx512:
// GCC 12's unmasked shift and widening trip -Wmaybe-uninitialized.)
__attribute__((target("avx512f"))) inline __m512i ShiftUp(__m512i x) {
  return _mm512_maskz_slli_epi32(__mmask16(0xFFFF), x, 16);
}

// vdpbf16ps's step with AVX-512F: a bf16 pair in a 32-bit lane is two f32 values, the odd one
// its high half (masked out), the even one its low half (shifted up).
__attribute__((target("avx512f"))) inline __m512 DotPairs(__m512 acc, __m512i x, __m512i y) {
  const __m512i high = _mm512_set1_epi32(static_cast<int>(0xFFFF0000u));
  acc = _mm512_fmadd_ps(_mm512_castsi512_ps(_mm512_and_si512(x, high)),
                        _mm512_castsi512_ps(_mm512_and_si512(y, high)), acc);
  return _mm512_fmadd_ps(_mm512_castsi512_ps(ShiftUp(x)), _mm512_castsi512_ps(ShiftUp(y)), acc);
}

__attribute__((target("avx512f,avx512bw"))) float DotBf16Avx512(const bf16* a, const bf16* b,
                                                                int64_t k) {
  __m512 s0 = _mm512_setzero_ps(), s1 = s0, s2 = s0, s3 = s0;
  int64_t l = 0;
  for (; l + 128 <= k; l += 128) {
    s0 = DotPairs(s0, Load32(a + l), Load32(b + l));
    s1 = DotPairs(s1, Load32(a + l + 32), Load32(b + l + 32));
    s2 = DotPairs(s2, Load32(a + l + 64), Load32(b + l + 64));
    s3 = DotPairs(s3, Load32(a + l + 96), Load32(b + l + 96));
  }
  for (; l + 32 <= k; l += 32) s0 = DotPairs(s0, Load32(a + l), Load32(b + l));
  if (l < k) {
    __mmask32 mask = static_cast<__mmask32>((uint64_t{1} << (k - l)) - 1);
    s1 = DotPairs(s1, _mm512_maskz_loadu_epi16(mask, a + l), _mm512_maskz_loadu_epi16(mask, b + l));
  }
  return SumLanes(s0, s1, s2, s3);
}

// The same steps on AVX2 (most x86-64 CPUs without AVX-512): each 16-lane accumulator is two
// 8-lane halves, and the tail is copied into zeros (AVX2 has no masked 16-bit loads).
__attribute__((target("avx2,fma"))) inline void DotPairsAvx2(__m256 acc[2], const bf16* x,
                                                             const bf16* y) {
  const __m256i high = _mm256_set1_epi32(static_cast<int>(0xFFFF0000u));
  for (int half = 0; half < 2; ++half) {
    __m256i xv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x + 16 * half));
    __m256i yv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(y + 16 * half));
    acc[half] = _mm256_fmadd_ps(_mm256_castsi256_ps(_mm256_and_si256(xv, high)),
                                _mm256_castsi256_ps(_mm256_and_si256(yv, high)), acc[half]);
    acc[half] = _mm256_fmadd_ps(_mm256_castsi256_ps(_mm256_slli_epi32(xv, 16)),
                                _mm256_castsi256_ps(_mm256_slli_epi32(yv, 16)), acc[half]);
  }
}

__attribute__((target("avx2,fma"))) float DotBf16Avx2(const bf16* a, const bf16* b, int64_t k) {
  __m256 s[4][2];
  for (auto& acc : s) acc[0] = acc[1] = _mm256_setzero_ps();
  int64_t l = 0;
  for (; l + 128 <= k; l += 128)
    for (int acc = 0; acc < 4; ++acc) DotPairsAvx2(s[acc], a + l + 32 * acc, b + l + 32 * acc);
  for (; l + 32 <= k; l += 32) DotPairsAvx2(s[0], a + l, b + l);
  if (l < k) {
    bf16 x[32] = {}, y[32] = {};
    std::copy(a + l, a + k, x);
    std::copy(b + l, b + k, y);
    DotPairsAvx2(s[1], x, y);
  }
  alignas(32) float lanes[16];
  for (int half = 0; half < 2; ++half) {
    _mm256_store_ps(lanes + 8 * half, _mm256_add_ps(_mm256_add_ps(s[0][half], s[1][half]),
                                                    _mm256_add_ps(s[2][half], s[3][half])));
  }
  float sum = 0;
  for (float x : lanes) sum += x;
  return sum;
}

float DotBf16Plain(const bf16* a, const bf16* b, int64_t k) {
  float s[4][16] = {};
  // One block of up to 32 elements into accumulator `acc`, the missing ones as zeros.
  auto block = [&](int acc, int64_t l) {
    for (int i = 0; i < 16; ++i) {
      for (int64_t e : {l + 2 * i + 1, l + 2 * i}) {
        if (e < k)
          s[acc][i] = std::fma(static_cast<float>(a[e]), static_cast<float>(b[e]), s[acc][i]);
      }
    }
  };
  int64_t l = 0;
  for (; l + 128 <= k; l += 128)
    for (int acc = 0; acc < 4; ++acc) block(acc, l + 32 * acc);
  for (; l + 32 <= k; l += 32) block(0, l);
  if (l < k) block(1, l);
  float sum = 0;
  for (int i = 0; i < 16; ++i) sum += (s[0][i] + s[1][i]) + (s[2][i] + s[3][i]);
  return sum;
}

// C's element j (f32 or bf16, rounded once) (+)= value.
inline void StoreColumn(void* c, DataType c_type, int64_t j, float value, bool accumulate) {
  if (c_type == DT_F32) {
    float* out = static_cast<float*>(c) + j;
    *out = accumulate ? *out + value : value;
  } else {
    bf16* out = static_cast<bf16*>(c) + j;
    *out = bf16(accumulate ? static_cast<float>(*out) + value : value);
  }
}

// c[begin, end) (+)= Σ_l x[l] · b[l·ldb + j] with x widened to f32: B stored as K rows of N. Each
// column is one chain of FMAs down the rows, as in AxpyRowsAvx512.
__attribute__((target("avx512f,avx512bw,avx512vl"))) void AxpyRowsBf16Avx512(
    const float* x, const bf16* b, int64_t ldb, int64_t k, void* c, DataType c_type, int64_t begin,
    int64_t end, bool accumulate) {
  for (int64_t j = begin; j < end; j += 16) {
    __mmask16 mask =
        end - j >= 16 ? __mmask16(0xFFFF) : static_cast<__mmask16>((1u << (end - j)) - 1);
    __m512 acc = _mm512_setzero_ps();
    for (int64_t l = 0; l < k; ++l) {
      __m512i wide = _mm512_maskz_cvtepu16_epi32(__mmask16(0xFFFF),
                                                 _mm256_maskz_loadu_epi16(mask, b + l * ldb + j));
      acc = _mm512_fmadd_ps(_mm512_set1_ps(x[l]), _mm512_castsi512_ps(ShiftUp(wide)), acc);
    }
    alignas(64) float sums[16];
    _mm512_store_ps(sums, acc);
    for (int64_t i = 0; i < std::min<int64_t>(16, end - j); ++i)
      StoreColumn(c, c_type, j + i, sums[i], accumulate);
  }
}

void AxpyRowsBf16Plain(const float* x, const bf16* b, int64_t ldb, int64_t k, void* c,
                       DataType c_type, int64_t begin, int64_t end, bool accumulate) {
  for (int64_t j = begin; j < end; ++j) {
    float acc = 0;
    for (int64_t l = 0; l < k; ++l) acc = std::fma(x[l], static_cast<float>(b[l * ldb + j]), acc);
    StoreColumn(c, c_type, j, acc, accumulate);
  }
}

// Eight columns at a time, the last few on the plain loop.
__attribute__((target("avx2,fma"))) void AxpyRowsBf16Avx2(const float* x, const bf16* b,
                                                          int64_t ldb, int64_t k, void* c,
                                                          DataType c_type, int64_t begin,
                                                          int64_t end, bool accumulate) {
  int64_t j = begin;
  for (; j + 8 <= end; j += 8) {
    __m256 acc = _mm256_setzero_ps();
    for (int64_t l = 0; l < k; ++l) {
      __m128i narrow = _mm_loadu_si128(reinterpret_cast<const __m128i*>(b + l * ldb + j));
      __m256 wide = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(narrow), 16));
      acc = _mm256_fmadd_ps(_mm256_set1_ps(x[l]), wide, acc);
    }
    alignas(32) float sums[8];
    _mm256_store_ps(sums, acc);
    for (int i = 0; i < 8; ++i) StoreColumn(c, c_type, j + i, sums[i], accumulate);
  }
  AxpyRowsBf16Plain(x, b, ldb, k, c, c_type, j, end, accumulate);
}

// C[1, n] (+)= A[1, k] · op(B), A and B bf16, C f32 or bf16.
void GemvBf16(int64_t n, int64_t k, MatrixRef a, MatrixRef b, void* c, DataType c_type,
              bool accumulate) {
  const bf16* x = static_cast<const bf16*>(a.data);
  thread_local std::vector<bf16> gathered;
  if (a.transposed && k > 1) {  // A's one row is a column of the stored matrix
    gathered.resize(static_cast<size_t>(k));
    for (int64_t l = 0; l < k; ++l) gathered[static_cast<size_t>(l)] = x[l * a.ld];
    x = gathered.data();
  }
  const bf16* w = static_cast<const bf16*>(b.data);
  GemvIsa isa = Bf16GemvIsa();
  if (b.transposed) {
    auto dot = isa == GemvIsa::kAvx512Bf16 ? DotBf16Dp
               : isa == GemvIsa::kAvx512   ? DotBf16Avx512
               : isa == GemvIsa::kAvx2     ? DotBf16Avx2
                                           : DotBf16Plain;
    ShareColumns(n, k, [&](int64_t begin, int64_t end) {
      for (int64_t j = begin; j < end; ++j)
        StoreColumn(c, c_type, j, dot(x, w + j * b.ld, k), accumulate);
    });
    return;
  }
  // Rows of B are added up scaled by the input's elements: those are widened once.
  thread_local std::vector<float> widened;
  widened.resize(static_cast<size_t>(k));
  for (int64_t l = 0; l < k; ++l) widened[static_cast<size_t>(l)] = static_cast<float>(x[l]);
  const float* xf = widened.data();  // the helpers see their own thread_local, not this one
  auto axpy = isa == GemvIsa::kPlain  ? AxpyRowsBf16Plain
              : isa == GemvIsa::kAvx2 ? AxpyRowsBf16Avx2
                                      : AxpyRowsBf16Avx512;
  ShareColumns(n, k, [&](int64_t begin, int64_t end) {
    axpy(xf, w, b.ld, k, c, c_type, begin, end, accumulate);
  });
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
  // Single products, a shared B under a transposed A (a loop of 2-D products), f64 and bf16
  // without oneDNN's bf16 go through GemmBlock; a batched B runs as one 3-D primitive.
  auto loop = [&]() -> Status {
    for (int64_t r = 0; r < p.batch; ++r) {
      MatrixRef ar{at(a.raw_data(), r, p.m * p.k), ta ? p.m : p.k, ta};
      MatrixRef br{at(b.raw_data(), p.batched_b ? r : 0, p.k * p.n), tb ? p.k : p.n, tb};
      WEIR_RETURN_IF_ERROR(GemmBlock(a.dtype(), c.dtype(), p.m, p.n, p.k, ar, br,
                                     const_cast<char*>(at(c.raw_data(), r, p.m * p.n)), p.n,
                                     accumulate));
    }
    return Status();
  };
  if (p.batch == 1 || !p.batched_b || a.dtype() == DT_F64 ||
      (a.dtype() == DT_BF16 && bf16_widens.load(std::memory_order_relaxed))) {
    return loop();
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
  auto prim = Primitive(key, a_md, b_md, c_md, accumulate);
  if (!prim.ok() && a.dtype() == DT_BF16) {
    NoteBf16Widens(prim.status());
    return loop();
  }
  WEIR_RETURN_IF_ERROR(prim.status());
  Execute(**prim, a_md, a.raw_data(), b_md, b.raw_data(), c_md, c.raw_data());
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
  if (m == 1 && ab_type == DT_F32 && c_type == DT_F32) {
    Gemv(n, k, a, b, static_cast<float*>(c), accumulate);
    return Status();
  }
  if (m == 1 && ab_type == DT_BF16) {
    GemvBf16(n, k, a, b, c, c_type, accumulate);
    return Status();
  }
  if (ab_type == DT_BF16 && bf16_widens.load(std::memory_order_relaxed))
    return WidenedBf16Gemm(m, n, k, a, b, c, c_type, ldc, accumulate);
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
  auto prim = Primitive(key, a_md, b_md, c_md, accumulate);
  if (!prim.ok() && ab_type == DT_BF16) {
    NoteBf16Widens(prim.status());
    return WidenedBf16Gemm(m, n, k, a, b, c, c_type, ldc, accumulate);
  }
  WEIR_RETURN_IF_ERROR(prim.status());
  Execute(**prim, a_md, a.data, b_md, b.data, c_md, c);
  return Status();
}

void LimitGemvIsa(GemvIsa isa) {
  bf16_gemv_cap.store(static_cast<int>(isa), std::memory_order_relaxed);
}

SingleThreadedGemms::SingleThreadedGemms() : saved_(omp_get_max_threads()) {
  omp_set_num_threads(1);
}

SingleThreadedGemms::~SingleThreadedGemms() { omp_set_num_threads(saved_); }

}  // namespace weir
