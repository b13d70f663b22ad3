// Times weir's GPU GEMMs on cuda:0 against the H200's dense peak: bf16 through cuda::Gemm
// (cuBLASLt) and FP8 e4m3 with DeepSeek-V3's block scales through cuda::GemmFp8BlockScaled, on
// square sizes and on DeepSeek-V3's projection shapes (C [m, n] = A [m, k] · Wᵀ, W [n, k], m
// tokens). Each GEMM runs a few times to warm up, then 20 times between CUDA events; the median
// counts.
//   weir_cuda_gemm   human-readable lines on stderr, one JSON object per GEMM on stdout:
//                    {"name", "m", "n", "k", "dtype", "tflops", "peak_fraction"}
// Without a GPU it says so in one line and exits 0.
#include "weir/cuda_gemm.h"

#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "weir/cuda.h"
#include "weir/device.h"
#include "weir/half.h"

namespace {

using weir::DataType;
using weir::Shape;
using weir::Status;
using weir::StatusOr;
using weir::Tensor;

// H200 SXM dense tensor-core peaks (no sparsity), TFLOP/s.
constexpr double kBf16Peak = 989.0, kFp8Peak = 1979.0;
constexpr int kWarmup = 3, kTimed = 20;

struct Problem {
  const char* name;
  int64_t m, n, k;
};

// Square sizes, then DeepSeek-V3 (hidden 7168, 128 heads of 128 + 64 rope dims, q_lora 1536,
// kv_lora 512, expert intermediate 2048, dense intermediate 18432) for 4096 tokens.
const Problem kProblems[] = {
    {"square_4096", 4096, 4096, 4096},       {"square_8192", 8192, 8192, 8192},
    {"v3_expert_down", 4096, 7168, 2048},    {"v3_expert_gate_up", 4096, 4096, 7168},
    {"v3_q_a_proj", 4096, 1536, 7168},       {"v3_q_b_proj", 4096, 24576, 1536},
    {"v3_kv_a_proj", 4096, 576, 7168},       {"v3_o_proj", 4096, 7168, 16384},
    {"v3_dense_gate_up", 4096, 36864, 7168},
};

[[noreturn]] void Fail(const std::string& what, const Status& status) {
  std::fprintf(stderr, "weir_cuda_gemm: %s: %s\n", what.c_str(), status.ToString().c_str());
  std::exit(1);
}

template <typename T>
T Must(StatusOr<T> value, const std::string& what) {
  if (!value.ok()) Fail(what, value.status());
  return std::move(value).value();
}

void Must(const Status& status, const std::string& what) {
  if (!status.ok()) Fail(what, status);
}

void MustCuda(cudaError_t error, const char* what) {
  if (error != cudaSuccess) {
    std::fprintf(stderr, "weir_cuda_gemm: %s: %s\n", what, cudaGetErrorString(error));
    std::exit(1);
  }
}

// A cheap deterministic generator for the inputs: uniform in [-1, 1).
struct Lcg {
  uint64_t state;
  float Next() {
    state = state * 6364136223846793005ULL + 1442695040888963407ULL;
    return static_cast<float>(static_cast<int32_t>(state >> 32)) * 0x1.0p-31f;
  }
};

class Bench {
 public:
  Bench() {
    runtime_ = Must(weir::FindDeviceRuntime("cuda:0"), "cuda:0");
    stream_ = Must(runtime_->AcquireStream(), "a stream");
    context_ = std::make_unique<weir::StreamContext>(runtime_, stream_);
    kernel_ = std::make_unique<weir::KernelContext>(
        std::vector<const Tensor*>{}, std::vector<Tensor*>{}, &attrs_, context_.get());
  }
  ~Bench() { runtime_->ReleaseStream(stream_); }

  const weir::KernelContext& ctx() const { return *kernel_; }
  cudaStream_t stream() const { return reinterpret_cast<cudaStream_t>(stream_); }

  Tensor Empty(DataType dtype, const Shape& shape) {
    return Must(context_->Empty(dtype, shape), "device memory");
  }

  // Random bf16 values in [-1, 1).
  Tensor RandomBf16(const Shape& shape, uint64_t seed) {
    Tensor host = Tensor::Empty(weir::DT_BF16, shape);
    weir::bf16* data = host.data<weir::bf16>();
    Lcg rng{seed};
    for (int64_t i = 0; i < host.numel(); ++i) data[i] = weir::bf16(rng.Next());
    return Upload(host);
  }

  // Random finite e4m3 codes (0x7f and 0xff are NaN).
  Tensor RandomE4m3(const Shape& shape, uint64_t seed) {
    Tensor host = Tensor::Empty(weir::DT_U8, shape);
    uint8_t* data = host.data<uint8_t>();
    Lcg rng{seed};
    for (int64_t i = 0; i < host.numel(); ++i) {
      rng.Next();
      uint8_t code = static_cast<uint8_t>(rng.state >> 56);
      data[i] = (code & 0x7f) == 0x7f ? code ^ 1 : code;
    }
    return Upload(host);
  }

  Tensor Filled(DataType dtype, const Shape& shape, double value) {
    Tensor t = Empty(dtype, shape);
    Must(runtime_->Fill(t.raw_data(), dtype, t.numel(), value, stream_), "fill");
    return t;
  }

  // The median time in milliseconds of `run` over kTimed runs after kWarmup.
  double MedianMs(const std::function<Status()>& run, const std::string& what) {
    for (int i = 0; i < kWarmup; ++i) Must(run(), what);
    std::vector<cudaEvent_t> events(2 * kTimed);
    for (cudaEvent_t& e : events) MustCuda(cudaEventCreate(&e), "cudaEventCreate");
    for (int i = 0; i < kTimed; ++i) {
      MustCuda(cudaEventRecord(events[2 * i], stream()), "cudaEventRecord");
      Must(run(), what);
      MustCuda(cudaEventRecord(events[2 * i + 1], stream()), "cudaEventRecord");
    }
    MustCuda(cudaEventSynchronize(events.back()), "cudaEventSynchronize");
    std::vector<float> ms(kTimed);
    for (int i = 0; i < kTimed; ++i)
      MustCuda(cudaEventElapsedTime(&ms[i], events[2 * i], events[2 * i + 1]), "elapsed time");
    for (cudaEvent_t e : events) cudaEventDestroy(e);
    std::sort(ms.begin(), ms.end());
    return 0.5 * (ms[kTimed / 2 - 1] + ms[kTimed / 2]);
  }

  void Sync() { Must(runtime_->Synchronize(stream_), "synchronize"); }

 private:
  Tensor Upload(const Tensor& host) {
    Tensor device = Empty(host.dtype(), host.shape());
    Must(runtime_->CopyToDevice(device.raw_data(), host.raw_data(), host.nbytes(), stream_),
         "copy to the device");
    Sync();  // the host buffer dies on return
    return device;
  }

  weir::DeviceRuntime* runtime_ = nullptr;
  weir::StreamId stream_{};
  weir::Attrs attrs_;
  std::unique_ptr<weir::StreamContext> context_;
  std::unique_ptr<weir::KernelContext> kernel_;
};

void Report(const Problem& p, const char* dtype, double ms, double peak) {
  double tflops = 2.0 * static_cast<double>(p.m) * static_cast<double>(p.n) *
                  static_cast<double>(p.k) / (ms * 1e-3) / 1e12;
  std::fprintf(stderr,
               "%-20s %-5s m=%-6lld n=%-6lld k=%-6lld %9.3f ms %8.1f TFLOP/s  %5.1f%% of %.0f\n",
               p.name, dtype, static_cast<long long>(p.m), static_cast<long long>(p.n),
               static_cast<long long>(p.k), ms, tflops, 100.0 * tflops / peak, peak);
  std::printf(
      "{\"name\": \"%s\", \"m\": %lld, \"n\": %lld, \"k\": %lld, \"dtype\": \"%s\", \"tflops\": "
      "%.2f, \"peak_fraction\": %.4f}\n",
      p.name, static_cast<long long>(p.m), static_cast<long long>(p.n), static_cast<long long>(p.k),
      dtype, tflops, tflops / peak);
  std::fflush(stdout);
}

void Bf16(Bench& bench, const Problem& p) {
  Tensor a = bench.RandomBf16({p.m, p.k}, 1), w = bench.RandomBf16({p.n, p.k}, 2);
  Tensor c = bench.Empty(weir::DT_BF16, {p.m, p.n});
  weir::cuda::GemmArgs g;
  g.type = g.c_type = weir::DT_BF16;
  g.m = p.m;
  g.n = p.n;
  g.k = p.k;
  g.trans_b = true;
  g.a = a.raw_data();
  g.lda = p.k;
  g.b = w.raw_data();
  g.ldb = p.k;
  g.c = c.raw_data();
  g.ldc = p.n;
  double ms = bench.MedianMs([&] { return weir::cuda::Gemm(bench.ctx(), g); }, p.name);
  Report(p, "bf16", ms, kBf16Peak);
}

void Fp8(Bench& bench, const Problem& p) {
  int64_t slices = p.k / 128, n_blocks = (p.n + 127) / 128;
  // A quantized on the device from bf16 activations, as a forward pass would; the weights'
  // codes and block scales made up (their values do not change the time).
  Tensor x = bench.RandomBf16({p.m, p.k}, 3);
  Tensor a = bench.Empty(weir::DT_U8, {p.m, p.k}),
         a_scales = bench.Empty(weir::DT_F32, {p.m, slices});
  Must(weir::cuda::QuantizeFp8Tiles(bench.ctx(), x, a.raw_data(), a_scales.data<float>()),
       "QuantizeFp8Tiles");
  Tensor w = bench.RandomE4m3({p.n, p.k}, 4);
  Tensor w_scales = bench.Filled(weir::DT_F32, {n_blocks, slices}, 1.0 / 448);
  Tensor c = bench.Empty(weir::DT_BF16, {p.m, p.n});
  bench.Sync();
  weir::cuda::Fp8GemmArgs g;
  g.m = p.m;
  g.n = p.n;
  g.k = p.k;
  g.a = a.raw_data();
  g.a_scales = a_scales.data<float>();
  g.b = w.raw_data();
  g.b_scales = w_scales.data<float>();
  g.c = c.raw_data();
  g.c_type = weir::DT_BF16;
  double ms =
      bench.MedianMs([&] { return weir::cuda::GemmFp8BlockScaled(bench.ctx(), g); }, p.name);
  Report(p, "fp8", ms, kFp8Peak);
}

}  // namespace

int main() {
  std::string why;
  if (weir::cuda::DeviceCount(&why) == 0) {
    std::printf("weir_cuda_gemm: no CUDA device (%s); nothing to measure\n", why.c_str());
    return 0;
  }
  Bench bench;
  for (const Problem& p : kProblems) {
    Bf16(bench, p);
    bench.Sync();  // one problem at a time
  }
  for (const Problem& p : kProblems) {
    Fp8(bench, p);
    bench.Sync();
  }
  return 0;
}
