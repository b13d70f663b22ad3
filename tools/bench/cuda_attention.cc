// Times the CUDA kernels of nn.Attention (forward) and nn.AttentionGrad (backward) on cuda:0 at
// DeepSeek's MLA shape, and MLA's absorbed decode over the paged latent cache
// (nn.PagedLatentAttention: memory bandwidth), calling them directly
// through a KernelContext:
//   weir_cuda_attention [tokens [heads [d [dv [batch]]]]]   (default 4096 16 192 128 2, causal
//   bf16)
// prints a readable line and one JSON line {"name", "tflops", "ms"} per measurement: the median
// of 10 runs after 3 warm-up runs, timed with CUDA events on the kernels' stream. Without a GPU
// it says so and exits 0.
//
// FLOPs count the useful matrix products over the (query, key) pairs that attention visits:
// pairs = tokens·(tokens + 1)/2 per batch row and head when causal (the diagonal block counted
// once, as nn.Attention's Cost does), tokens² otherwise.
//   forward:  2·batch·heads·pairs·(d + dv)        (q·kᵀ and p·v)
//   backward: 2·batch·heads·pairs·(3·d + 2·dv)    (q·kᵀ recomputed once, do·vᵀ, pᵀ·do, dsᵀ·q,
//                                                  ds·k: FlashAttention-2's five products; the
//                                                  second recomputation of the dq pass is not
//                                                  counted)
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "weir/attrs.h"
#include "weir/cuda.h"
#include "weir/device.h"
#include "weir/half.h"
#include "weir/tensor_op.h"

namespace weir::nn {
// plugins/nn/cuda/attention.cu
Status AttentionForwardCuda(KernelContext& ctx);
Status AttentionBackwardCuda(KernelContext& ctx);
Status AttentionCuda(KernelContext& ctx);             // nn.Attention's kernel: flash or split-key
Status PagedLatentAttentionCuda(KernelContext& ctx);  // attention_decode.cu
}  // namespace weir::nn

namespace {

using weir::Status;
using weir::StatusOr;
using weir::Tensor;

void Require(const Status& status, const char* what) {
  if (status.ok()) return;
  std::fprintf(stderr, "%s: %s\n", what, status.ToString().c_str());
  std::exit(1);
}

void RequireCuda(cudaError_t error, const char* what) {
  if (error == cudaSuccess) return;
  std::fprintf(stderr, "%s: %s\n", what, cudaGetErrorString(error));
  std::exit(1);
}

// A device copy of `host`.
Tensor ToDevice(const weir::StreamContext& ctx, weir::DeviceRuntime* runtime, const Tensor& host) {
  auto device = ctx.Empty(host.dtype(), host.shape());
  Require(device.status(), "allocating an input");
  Require(runtime->CopyToDevice(device->raw_data(), host.raw_data(), host.nbytes(), ctx.stream()),
          "copying an input");
  Require(runtime->Synchronize(ctx.stream()), "copying an input");
  return *device;
}

// A bf16 device tensor of uniform values in [-1, 1].
Tensor RandomBf16(const weir::StreamContext& ctx, weir::DeviceRuntime* runtime,
                  const weir::Shape& shape, uint64_t seed) {
  Tensor host = Tensor::Empty(weir::DT_BF16, shape);
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  weir::bf16* values = host.data<weir::bf16>();
  for (int64_t i = 0; i < host.numel(); ++i) values[i] = weir::bf16(u(rng));
  return ToDevice(ctx, runtime, host);
}

// Median milliseconds of `runs` calls of `launch`, after `warmup` calls.
template <typename Launch>
double MedianMs(cudaStream_t stream, Launch launch, int warmup = 3, int runs = 10) {
  for (int i = 0; i < warmup; ++i) launch();
  RequireCuda(cudaStreamSynchronize(stream), "warm-up");
  cudaEvent_t start, stop;
  RequireCuda(cudaEventCreate(&start), "cudaEventCreate");
  RequireCuda(cudaEventCreate(&stop), "cudaEventCreate");
  std::vector<double> ms;
  for (int i = 0; i < runs; ++i) {
    RequireCuda(cudaEventRecord(start, stream), "cudaEventRecord");
    launch();
    RequireCuda(cudaEventRecord(stop, stream), "cudaEventRecord");
    RequireCuda(cudaEventSynchronize(stop), "running the kernels");
    float elapsed = 0;
    RequireCuda(cudaEventElapsedTime(&elapsed, start, stop), "cudaEventElapsedTime");
    ms.push_back(elapsed);
  }
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
  std::sort(ms.begin(), ms.end());
  return (ms[ms.size() / 2 - 1] + ms[ms.size() / 2]) / 2;  // even count: mean of the middle two
}

void Report(const std::string& name, double flops, double ms) {
  double tflops = flops / (ms * 1e-3) / 1e12;
  std::printf("%-48s %9.3f ms %8.2f TFLOP/s\n", name.c_str(), ms, tflops);
  std::printf("{\"name\": \"%s\", \"tflops\": %.3f, \"ms\": %.4f}\n", name.c_str(), tflops, ms);
}

}  // namespace

int main(int argc, char** argv) {
  const int64_t tokens = argc > 1 ? std::atoll(argv[1]) : 4096;
  const int64_t heads = argc > 2 ? std::atoll(argv[2]) : 16;
  const int64_t d = argc > 3 ? std::atoll(argv[3]) : 192;
  const int64_t dv = argc > 4 ? std::atoll(argv[4]) : 128;
  const int64_t batch = argc > 5 ? std::atoll(argv[5]) : 2;
  const bool causal = true;

  std::string why;
  if (weir::cuda::DeviceCount(&why) == 0) {
    std::printf("no CUDA device (%s): nothing to measure\n", why.c_str());
    return 0;
  }
  auto runtime_or = weir::FindDeviceRuntime("cuda:0");
  Require(runtime_or.status(), "cuda:0");
  weir::DeviceRuntime* runtime = *runtime_or;
  auto info = weir::cuda::Device(0);
  if (info.ok()) std::printf("device: %s\n", info->name.c_str());
  auto stream_or = runtime->AcquireStream();
  Require(stream_or.status(), "acquiring a stream");
  weir::StreamContext ctx(runtime, *stream_or);
  cudaStream_t stream = reinterpret_cast<cudaStream_t>(*stream_or);

  Tensor q = RandomBf16(ctx, runtime, {batch, tokens, heads, d}, 1);
  Tensor k = RandomBf16(ctx, runtime, {batch, tokens, heads, d}, 2);
  Tensor v = RandomBf16(ctx, runtime, {batch, tokens, heads, dv}, 3);
  Tensor dout = RandomBf16(ctx, runtime, {batch, tokens, heads, dv}, 4);
  auto empty = [&](weir::DataType dtype, const weir::Shape& shape) {
    auto t = ctx.Empty(dtype, shape);
    Require(t.status(), "allocating an output");
    return *t;
  };
  Tensor o = empty(weir::DT_BF16, {batch, tokens, heads, dv});
  Tensor lse = empty(weir::DT_F32, {batch, heads, tokens});
  Tensor dq = empty(weir::DT_BF16, q.shape()), dk = empty(weir::DT_BF16, k.shape()),
         dv_grad = empty(weir::DT_BF16, v.shape());

  weir::AttrValue causal_attr, scale_attr;
  causal_attr.set_b(causal);
  scale_attr.set_f(0.0);  // 1/√d
  weir::Attrs attrs({{"causal", causal_attr}, {"scale", scale_attr}}, "op 'nn.Attention'");
  weir::KernelContext forward({&q, &k, &v}, {&o, &lse}, &attrs, &ctx);
  weir::KernelContext backward({&q, &k, &v, &o, &lse, &dout}, {&dq, &dk, &dv_grad}, &attrs, &ctx);

  const double t = static_cast<double>(tokens);
  const double pairs = static_cast<double>(batch * heads) * (causal ? t * (t + 1) / 2 : t * t);
  const double fd = static_cast<double>(d), fdv = static_cast<double>(dv);
  const std::string shape = "bf16_b" + std::to_string(batch) + "_t" + std::to_string(tokens) +
                            "_h" + std::to_string(heads) + "_d" + std::to_string(d) + "_dv" +
                            std::to_string(dv) + (causal ? "_causal" : "");

  double forward_ms = MedianMs(
      stream, [&] { Require(weir::nn::AttentionForwardCuda(forward), "nn.Attention on cuda"); });
  Require(runtime->Synchronize(*stream_or), "nn.Attention on cuda");
  Report("attention_forward_" + shape, 2 * pairs * (fd + fdv), forward_ms);

  double backward_ms = MedianMs(stream, [&] {
    Require(weir::nn::AttentionBackwardCuda(backward), "nn.AttentionGrad on cuda");
  });
  Require(runtime->Synchronize(*stream_or), "nn.AttentionGrad on cuda");
  Report("attention_backward_" + shape, 2 * pairs * (3 * fd + 2 * fdv), backward_ms);

  // MLA's absorbed decode (spec §2.2) over the paged cache: one new token per sequence, 128
  // heads over one latent head (rows 576 wide: c_KV and the RoPE key; values c_KV's 512), 4095
  // cached tokens in blocks of 64 scattered through the pool. It reads the cache once per step,
  // so its rate is bytes read over time, against the H200's HBM3e 4.8 TB/s.
  {
    const int64_t seqs = 64, cached = 4095, mla_heads = 128, width = 576, latent = 512;
    const int64_t block = 64, per_seq = (cached + block - 1) / block;
    Tensor mq = RandomBf16(ctx, runtime, {seqs, 1, mla_heads, width}, 5);
    Tensor mkv = RandomBf16(ctx, runtime, {seqs, 1, width}, 6);
    Tensor pool = RandomBf16(ctx, runtime, {seqs * per_seq, block, width}, 7);
    std::vector<double> ids(static_cast<size_t>(seqs * per_seq));
    for (size_t i = 0; i < ids.size(); ++i) ids[i] = static_cast<double>(i);
    std::shuffle(ids.begin(), ids.end(), std::mt19937_64(8));
    Tensor table = ToDevice(ctx, runtime, Tensor::FromValues(weir::DT_I64, {seqs, per_seq}, ids));
    Tensor lengths = ToDevice(ctx, runtime,
                              Tensor::FromValues(weir::DT_I64, {seqs},
                                                 std::vector<double>(static_cast<size_t>(seqs),
                                                                     static_cast<double>(cached))));
    Tensor mo = empty(weir::DT_BF16, {seqs, 1, mla_heads, latent});
    Tensor mlse = empty(weir::DT_F32, {seqs, mla_heads, 1});
    weir::AttrValue value_dim;
    value_dim.set_i(latent);
    weir::Attrs paged_attrs({{"value_dim", value_dim}, {"scale", scale_attr}},
                            "op 'nn.PagedLatentAttention'");
    weir::KernelContext decode({&mq, &mkv, &pool, &table, &lengths}, {&mo, &mlse}, &paged_attrs,
                               &ctx);
    double ms = MedianMs(
        stream, [&] { Require(weir::nn::PagedLatentAttentionCuda(decode), "MLA decode on cuda"); });
    Require(runtime->Synchronize(*stream_or), "MLA decode on cuda");
    // Bytes the step must move: every sequence's cached rows, its new row, q and o.
    double bytes =
        static_cast<double>(seqs * cached * width * 2 + mkv.nbytes() + mq.nbytes() + mo.nbytes());
    double gbps = bytes / (ms * 1e-3) / 1e9;
    std::printf("%-48s %9.3f ms %8.1f GB/s (%.1f%% of 4.8 TB/s)\n", "mla_decode_paged", ms, gbps,
                gbps / 48);
    std::printf(
        "{\"name\": \"mla_decode_paged_b64_cache4096_h128\", \"gb_per_s\": %.1f, "
        "\"hbm_fraction\": %.4f, \"ms\": %.4f}\n",
        gbps, gbps / 4800, ms);
  }

  runtime->ReleaseStream(*stream_or);
  return 0;
}
