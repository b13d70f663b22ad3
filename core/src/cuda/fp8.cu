// FP8 e4m3 with DeepSeek-V3's fine-grained scales (cuda_gemm.h; spec deepseek.md §6): the 1×128
// tile quantizer and the block-scaled GEMM.
//
// The GEMM is weir's own kernel rather than cuBLASLt's VEC128/BLK128x128 scale modes: those exist
// for sm_90 in cuBLAS 12.9+, but their scale layouts (outer-dim-major, padded) could not be
// checked against a GPU when this was written, and a wrong layout would be silently wrong
// numbers. The kernel follows the spec's recipe instead: e4m3 tensor-core products
// (mma.sync m16n8k32, f32 accumulators) over one 128-wide slice of K at a time, promoted into f32
// totals after each slice with the product of the A tile's and the B block's scales.
#include <cuda_fp8.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <string>

#include "weir/cuda_gemm.h"
#include "weir/cuda_kernel.h"

namespace weir::cuda {
namespace {

constexpr int kTile = 128;          // elements of K per scale
constexpr float kE4m3Max = 448.0f;  // the largest finite e4m3
constexpr float kMinAmax = 1e-4f;   // DeepSeek's clamp, so an all-zero tile gets a finite scale

// ---------------------------------------------------------------------------------------------
// Quantization: one warp per 1×128 tile, four elements per lane.

template <typename T>
__global__ void QuantizeTilesKernel(const T* __restrict__ x, int64_t rows, int64_t k,
                                    int64_t tiles_per_row, uint8_t* __restrict__ q,
                                    float* __restrict__ scales) {
  const int lane = threadIdx.x & 31;
  const int64_t warps = static_cast<int64_t>(gridDim.x) * (blockDim.x / 32);
  const int64_t tiles = rows * tiles_per_row;
  for (int64_t tile = static_cast<int64_t>(blockIdx.x) * (blockDim.x / 32) + threadIdx.x / 32;
       tile < tiles; tile += warps) {
    const int64_t row = tile / tiles_per_row;
    const int64_t begin = (tile - row * tiles_per_row) * kTile;
    const T* in = x + row * k;
    float v[kTile / 32];
    float amax = 0.0f;
#pragma unroll
    for (int i = 0; i < kTile / 32; ++i) {
      int64_t col = begin + lane + 32 * i;
      v[i] = col < k ? Load(in[col]) : 0.0f;
      amax = fmaxf(amax, fabsf(v[i]));
    }
#pragma unroll
    for (int offset = 16; offset > 0; offset >>= 1)
      amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, offset));
    // IEEE division (not a reciprocal multiply), as the host reference computes it.
    const float scale = fmaxf(amax, kMinAmax) / kE4m3Max;
    uint8_t* out = q + row * k;
#pragma unroll
    for (int i = 0; i < kTile / 32; ++i) {
      int64_t col = begin + lane + 32 * i;
      if (col < k) out[col] = __nv_cvt_float_to_fp8(v[i] / scale, __NV_SATFINITE, __NV_E4M3);
    }
    if (lane == 0) scales[tile] = scale;
  }
}

// ---------------------------------------------------------------------------------------------
// The block-scaled GEMM. A CTA computes a 128×64 tile of C with 8 warps (4 along M × 2 along N,
// 32×32 each); K advances 128 at a time (one scale slice) through two shared-memory stages
// filled by cp.async, so the next slice loads while this one multiplies. On sm_90, whose
// native FP8 path is wgmma, ptxas spends many more registers on e4m3 mma.sync than on int8 (it
// appears to widen the operands): a 128×128 tile per CTA spilled, 128×64 does not.

constexpr int kBlockM = 128, kBlockN = 64, kBlockK = 128;
constexpr int kThreads = 256;
constexpr int kWarpM = 32, kWarpN = 32;
static_assert(kTile % kBlockN == 0, "a CTA's columns share one scale block of B");
static_assert((kBlockM / kWarpM) * (kBlockN / kWarpN) * 32 == kThreads, "one warp per warp tile");
constexpr int kMmaM = kWarpM / 16, kMmaN = kWarpN / 8;  // m16n8k32 tiles per warp
// Shared rows are padded from 128 to 144 bytes: the 8 rows × 4 words a fragment load reads then
// fall in 32 distinct banks, and rows stay 16-byte aligned for cp.async.
constexpr int kRowBytes = kBlockK + 16;
constexpr int kStageBytes = (kBlockM + kBlockN) * kRowBytes;
constexpr int kStages = 2;
constexpr int kSmemBytes = kStages * kStageBytes;

__device__ __forceinline__ void CopyAsync16(uint32_t shared, const void* global, bool valid) {
  // With a source size of 0 nothing is read and the 16 bytes are zero-filled: rows past m or n.
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(shared), "l"(global),
               "r"(valid ? 16 : 0)
               : "memory");
}
__device__ __forceinline__ void CommitAsync() {
  asm volatile("cp.async.commit_group;\n" ::: "memory");
}
template <int kPending>
__device__ __forceinline__ void WaitAsync() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(kPending) : "memory");
}

// d += a · b for one m16n8k32 e4m3 tile (PTX ISA, "Matrix Fragments for mma.m16n8k32"): with
// g = lane / 4 and t = lane % 4, a holds A rows g and g+8 at k 4t..4t+3 (a0, a1) and at
// k 16+4t.. (a2, a3); b holds column g of B at k 4t.. (b0) and 16+4t.. (b1); d holds C rows g
// (d0, d1) and g+8 (d2, d3) at columns 2t, 2t+1.
__device__ __forceinline__ void MmaE4m3(float (&d)[4], const uint32_t (&a)[4],
                                        const uint32_t (&b)[2]) {
  asm volatile(
      "mma.sync.aligned.m16n8k32.row.col.f32.e4m3.e4m3.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
      "{%8, %9}, {%0, %1, %2, %3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

// A 32-bit shared-memory load that stays in program order with the mma asm around it, so the
// compiler does not hoist every fragment of the slice into registers at once (which spills).
__device__ __forceinline__ uint32_t LoadShared32(uint32_t address) {
  uint32_t value;
  asm volatile("ld.shared.b32 %0, [%1];\n" : "=r"(value) : "r"(address));
  return value;
}

template <typename C>
__device__ __forceinline__ void StorePair(C* out, float v0, float v1) {
  if constexpr (std::is_same_v<C, float>) {
    *reinterpret_cast<float2*>(out) = make_float2(v0, v1);
  } else {
    *reinterpret_cast<__nv_bfloat162*>(out) = __floats2bfloat162_rn(v0, v1);
  }
}

// a [m, k] and b [n, k] e4m3, row-major; a_scales [m, k/128]; b_scales [ceil(n/128), k/128].
// `pairs`: C's rows start at 2-element-aligned addresses, so column pairs store as one word.
template <typename C>
__global__ void __launch_bounds__(kThreads, 1)
    Fp8BlockScaledKernel(const uint8_t* __restrict__ a, const float* __restrict__ a_scales,
                         const uint8_t* __restrict__ b, const float* __restrict__ b_scales,
                         C* __restrict__ c, int m, int n, int k, bool pairs) {
  extern __shared__ __align__(16) uint8_t smem[];
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int g = lane >> 2, t = lane & 3;
  const int warp_m = (warp / (kBlockN / kWarpN)) * kWarpM;
  const int warp_n = (warp % (kBlockN / kWarpN)) * kWarpN;
  const int m0 = blockIdx.y * kBlockM, n0 = blockIdx.x * kBlockN;
  const int slices = k / kBlockK;
  const uint32_t smem_base = static_cast<uint32_t>(__cvta_generic_to_shared(smem));

  // Slice s of A's and B's rows into stage `stage`: 16-byte chunks, 8 per row, 8 consecutive
  // threads per row so that global reads are coalesced.
  auto load_slice = [&](int stage, int slice) {
    const uint32_t a_stage = smem_base + stage * kStageBytes;
    const uint32_t b_stage = a_stage + kBlockM * kRowBytes;
    const int64_t k_offset = static_cast<int64_t>(slice) * kBlockK;
#pragma unroll
    for (int i = 0; i < kBlockM * kBlockK / 16 / kThreads; ++i) {
      int chunk = tid + i * kThreads, row = chunk >> 3, col = (chunk & 7) * 16;
      bool valid = m0 + row < m;
      const uint8_t* src = valid ? a + static_cast<int64_t>(m0 + row) * k + k_offset + col : a;
      CopyAsync16(a_stage + row * kRowBytes + col, src, valid);
    }
#pragma unroll
    for (int i = 0; i < kBlockN * kBlockK / 16 / kThreads; ++i) {
      int chunk = tid + i * kThreads, row = chunk >> 3, col = (chunk & 7) * 16;
      bool valid = n0 + row < n;
      const uint8_t* src = valid ? b + static_cast<int64_t>(n0 + row) * k + k_offset + col : b;
      CopyAsync16(b_stage + row * kRowBytes + col, src, valid);
    }
  };

  float total[kMmaM][kMmaN][4] = {};
  load_slice(0, 0);
  CommitAsync();
  for (int slice = 0; slice < slices; ++slice) {
    if (slice + 1 < slices) {
      load_slice((slice + 1) & 1, slice + 1);
      CommitAsync();
      WaitAsync<1>();  // this slice has landed; the next one may still be in flight
    } else {
      WaitAsync<0>();
    }
    __syncthreads();

    // The scales of this slice, read before the products so their latency hides behind them.
    float a_scale[kMmaM][2];
#pragma unroll
    for (int i = 0; i < kMmaM; ++i) {
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        int row = m0 + warp_m + i * 16 + g + 8 * h;
        a_scale[i][h] = row < m ? a_scales[static_cast<int64_t>(row) * slices + slice] : 0.0f;
      }
    }
    const float b_scale = b_scales[static_cast<int64_t>(n0 / kTile) * slices + slice];

    const uint32_t a_tile = smem_base + (slice & 1) * kStageBytes;
    const uint32_t b_tile = a_tile + kBlockM * kRowBytes;
    // The warp's B fragments for the whole slice stay in registers while it walks its M tiles,
    // so the partial sums of only one M tile are live at a time.
    uint32_t b_frag[kBlockK / 32][kMmaN][2];
#pragma unroll
    for (int s = 0; s < kBlockK / 32; ++s) {
#pragma unroll
      for (int j = 0; j < kMmaN; ++j) {
        const uint32_t column = b_tile + (warp_n + j * 8 + g) * kRowBytes + s * 32 + 4 * t;
        b_frag[s][j][0] = LoadShared32(column);
        b_frag[s][j][1] = LoadShared32(column + 16);
      }
    }
#pragma unroll
    for (int i = 0; i < kMmaM; ++i) {
      float part[kMmaN][4] = {};
#pragma unroll
      for (int s = 0; s < kBlockK / 32; ++s) {
        const uint32_t top = a_tile + (warp_m + i * 16 + g) * kRowBytes + s * 32 + 4 * t;
        const uint32_t bottom = top + 8 * kRowBytes;
        uint32_t a_frag[4] = {LoadShared32(top), LoadShared32(bottom), LoadShared32(top + 16),
                              LoadShared32(bottom + 16)};
#pragma unroll
        for (int j = 0; j < kMmaN; ++j) MmaE4m3(part[j], a_frag, b_frag[s][j]);
      }
      // Promotion: the slice's partial sums join the f32 totals, dequantized.
#pragma unroll
      for (int j = 0; j < kMmaN; ++j)
#pragma unroll
        for (int e = 0; e < 4; ++e) total[i][j][e] += part[j][e] * (a_scale[i][e >> 1] * b_scale);
    }
    __syncthreads();  // every warp is done with this stage before the next load refills it
  }

#pragma unroll
  for (int i = 0; i < kMmaM; ++i) {
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      int row = m0 + warp_m + i * 16 + g + 8 * h;
      if (row >= m) continue;
      C* out = c + static_cast<int64_t>(row) * n;
#pragma unroll
      for (int j = 0; j < kMmaN; ++j) {
        int col = n0 + warp_n + j * 8 + 2 * t;
        float v0 = total[i][j][2 * h], v1 = total[i][j][2 * h + 1];
        if (pairs && col + 1 < n) {
          StorePair(out + col, v0, v1);
        } else {
          if (col < n) out[col] = Store<C>(v0);
          if (col + 1 < n) out[col + 1] = Store<C>(v1);
        }
      }
    }
  }
}

std::string Fp8Shape(const Fp8GemmArgs& g) {
  return "FP8 block-scaled GEMM [m=" + std::to_string(g.m) + ", n=" + std::to_string(g.n) +
         ", k=" + std::to_string(g.k) + "] -> " + DataTypeName(g.c_type);
}

template <typename C>
Status LaunchFp8Gemm(const KernelContext& ctx, const Fp8GemmArgs& g) {
  auto kernel = Fp8BlockScaledKernel<C>;
  WEIR_RETURN_IF_ERROR(
      Check(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, kSmemBytes),
            "cudaFuncSetAttribute (FP8 GEMM shared memory)"));
  dim3 grid(static_cast<unsigned>((g.n + kBlockN - 1) / kBlockN),
            static_cast<unsigned>((g.m + kBlockM - 1) / kBlockM));
  bool pairs = g.n % 2 == 0 && reinterpret_cast<uintptr_t>(g.c) % (2 * sizeof(C)) == 0;
  kernel<<<grid, kThreads, kSmemBytes, Stream(ctx)>>>(
      static_cast<const uint8_t*>(g.a), g.a_scales, static_cast<const uint8_t*>(g.b), g.b_scales,
      static_cast<C*>(g.c), static_cast<int>(g.m), static_cast<int>(g.n), static_cast<int>(g.k),
      pairs);
  return CheckLaunch("Fp8BlockScaledKernel");
}

}  // namespace

Status QuantizeFp8Tiles(const KernelContext& ctx, const Tensor& x, void* q, float* scales) {
  if (ctx.device() == nullptr) return Internal("QuantizeFp8Tiles ran without a device context");
  if (x.dtype() != DT_BF16 && x.dtype() != DT_F32) {
    return InvalidArgument(std::string("QuantizeFp8Tiles: x is ") + DataTypeName(x.dtype()) +
                           ShapeString(x.shape()) + ", expected bf16 or f32");
  }
  if (x.rank() < 1) return InvalidArgument("QuantizeFp8Tiles: x has no dims");
  int64_t k = x.dim(-1);
  if (x.numel() == 0) return Status();
  if (q == nullptr || scales == nullptr)
    return InvalidArgument("QuantizeFp8Tiles: null output for x " + ShapeString(x.shape()));
  int64_t rows = x.numel() / k, tiles_per_row = (k + kTile - 1) / kTile;
  constexpr unsigned kQuantThreads = 256;  // 8 warps, one tile each per step
  unsigned blocks = Blocks(rows * tiles_per_row * 32, kQuantThreads);
  cudaStream_t stream = Stream(ctx);
  if (x.dtype() == DT_BF16) {
    QuantizeTilesKernel<<<blocks, kQuantThreads, 0, stream>>>(Data<bf16>(x), rows, k, tiles_per_row,
                                                              static_cast<uint8_t*>(q), scales);
  } else {
    QuantizeTilesKernel<<<blocks, kQuantThreads, 0, stream>>>(
        Data<float>(x), rows, k, tiles_per_row, static_cast<uint8_t*>(q), scales);
  }
  return CheckLaunch("QuantizeTilesKernel");
}

Status GemmFp8BlockScaled(const KernelContext& ctx, const Fp8GemmArgs& args) {
  if (ctx.device() == nullptr) return Internal(Fp8Shape(args) + ": no device context");
  auto bad = [&](const std::string& why) { return InvalidArgument(Fp8Shape(args) + ": " + why); };
  if (args.c_type != DT_BF16 && args.c_type != DT_F32) return bad("C must be bf16 or f32");
  if (args.m < 0 || args.n < 0 || args.k < 0) return bad("negative size");
  if (args.k % kTile != 0) return bad("k must be a multiple of 128");
  if (args.m > INT32_MAX || args.n > INT32_MAX || args.k > INT32_MAX) return bad("too large");
  if ((args.m + kBlockM - 1) / kBlockM > 65535) return bad("m too large for one launch");
  if (args.m == 0 || args.n == 0) return Status();
  if (args.c == nullptr) return bad("null C");
  if (args.k == 0) {  // an empty sum
    return Check(
        cudaMemsetAsync(args.c, 0, static_cast<size_t>(args.m * args.n) * DataTypeSize(args.c_type),
                        Stream(ctx)),
        "cudaMemsetAsync (FP8 GEMM with k = 0)");
  }
  if (args.a == nullptr || args.b == nullptr || args.a_scales == nullptr ||
      args.b_scales == nullptr)
    return bad("null operand or scales");
  // Rows of A and B are multiples of 128 bytes: 16-byte aligned bases keep every cp.async
  // chunk aligned.
  if (reinterpret_cast<uintptr_t>(args.a) % 16 != 0 ||
      reinterpret_cast<uintptr_t>(args.b) % 16 != 0)
    return bad("A and B must be 16-byte aligned");
  if (reinterpret_cast<uintptr_t>(args.c) % DataTypeSize(args.c_type) != 0)
    return bad("C is misaligned for its type");
  if (args.c_type == DT_BF16) return LaunchFp8Gemm<__nv_bfloat16>(ctx, args);
  return LaunchFp8Gemm<float>(ctx, args);
}

}  // namespace weir::cuda
