// cuda::Gemm (cuda_gemm.h) through cuBLASLt.
//
// weir's matrices are row-major and cuBLASLt's are column-major. A row-major [r, c] matrix with
// leading dimension ld is the column-major [c, r] matrix with the same ld, its transpose, so
// C = op(A)·op(B) is computed as Cᵀ = op(B)ᵀ·op(A)ᵀ: cuBLASLt's first operand is our B, its
// second our A, its output (n × m, column-major) our C, and the transpose flags carry over
// unchanged.
//
// Each thread keeps, per device, one cuBLASLt handle and the plans it has made: a plan holds the
// descriptors and the heuristic's algorithms for one shape, type, layout and pointer alignment,
// so a repeated GEMM costs one cublasLtMatmul call. Plans and handles live as long as the
// thread: they are leaked at exit on purpose, since destroying cuBLASLt objects while the
// process exits may run after the CUDA runtime has shut down.
#include <cublasLt.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <tuple>
#include <vector>

#include "weir/cuda_gemm.h"
#include "weir/cuda_kernel.h"

namespace weir::cuda {
namespace {

// What the heuristic may ask for; plenty for any GEMM on an H200 (split-K reductions).
constexpr size_t kMaxWorkspaceBytes = size_t{32} << 20;
// Algorithms asked of the heuristic: the best is used, the others when it refuses to run.
constexpr int kAlgorithmsPerPlan = 8;

struct PlanKey {
  int device = 0;
  DataType type = DT_F32, c_type = DT_F32;
  int64_t m = 0, n = 0, k = 0;
  bool trans_a = false, trans_b = false;
  int64_t lda = 0, ldb = 0, ldc = 0;
  int64_t batch = 1, stride_a = 0, stride_b = 0, stride_c = 0;
  uint32_t align_a = 0, align_b = 0, align_c = 0;

  auto Tie() const {
    return std::tie(device, type, c_type, m, n, k, trans_a, trans_b, lda, ldb, ldc, batch, stride_a,
                    stride_b, stride_c, align_a, align_b, align_c);
  }
  bool operator<(const PlanKey& other) const { return Tie() < other.Tie(); }
};

struct Plan {
  cublasLtMatmulDesc_t op = nullptr;
  // cuBLASLt's A (our B), B (our A) and C = D (our C).
  cublasLtMatrixLayout_t lt_a = nullptr, lt_b = nullptr, lt_c = nullptr;
  std::vector<cublasLtMatmulHeuristicResult_t> algorithms;
  size_t chosen = 0;  // the first algorithm that ran

  Plan() = default;
  Plan(const Plan&) = delete;
  Plan& operator=(const Plan&) = delete;
  ~Plan() {
    if (lt_c != nullptr) cublasLtMatrixLayoutDestroy(lt_c);
    if (lt_b != nullptr) cublasLtMatrixLayoutDestroy(lt_b);
    if (lt_a != nullptr) cublasLtMatrixLayoutDestroy(lt_a);
    if (op != nullptr) cublasLtMatmulDescDestroy(op);
  }
};

struct ThreadState {
  std::map<int, cublasLtHandle_t> handles;  // by device
  std::map<PlanKey, std::unique_ptr<Plan>> plans;
};

ThreadState& State() {
  // Leaked with the thread on purpose (see the top of the file).
  static thread_local ThreadState* state = new ThreadState();
  return *state;
}

std::string Describe(const GemmArgs& g) {
  std::string s = std::string("GEMM ") + DataTypeName(g.type);
  if (g.c_type != g.type) s += std::string("->") + DataTypeName(g.c_type);
  s += " [m=" + std::to_string(g.m) + ", n=" + std::to_string(g.n) + ", k=" + std::to_string(g.k) +
       "]";
  if (g.batch != 1) s += " x" + std::to_string(g.batch);
  s += std::string(g.trans_a ? " Aᵀ" : " A") + (g.trans_b ? "·Bᵀ" : "·B");
  s += " (lda " + std::to_string(g.lda) + ", ldb " + std::to_string(g.ldb) + ", ldc " +
       std::to_string(g.ldc);
  if (g.batch != 1) {
    s += ", batch strides " + std::to_string(g.stride_a) + ", " + std::to_string(g.stride_b) +
         ", " + std::to_string(g.stride_c);
  }
  return s + ")";
}

Status LtCheck(cublasStatus_t status, const GemmArgs& g, const char* what) {
  if (status == CUBLAS_STATUS_SUCCESS) return Status();
  return Internal(Describe(g) + ": " + what + " failed with " + cublasLtGetStatusName(status) +
                  " (" + cublasLtGetStatusString(status) + ")");
}

cudaDataType_t CudaType(DataType t) {
  switch (t) {
    case DT_BF16:
      return CUDA_R_16BF;
    case DT_F64:
      return CUDA_R_64F;
    default:
      return CUDA_R_32F;
  }
}

// The largest power of two (up to 256, cuBLASLt's default assumption) dividing every matrix the
// GEMM touches through `p`: its address, and with a batch, its batch stride in bytes.
uint32_t Alignment(const void* p, int64_t stride_elements, int64_t batch, size_t element_bytes) {
  uint64_t bits = reinterpret_cast<uintptr_t>(p);
  if (batch > 1) bits |= static_cast<uint64_t>(stride_elements) * element_bytes;
  uint32_t align = 256;
  while (align > 1 && bits % align != 0) align /= 2;
  return align;
}

Status Validate(const GemmArgs& g) {
  auto bad = [&](const std::string& why) { return InvalidArgument(Describe(g) + ": " + why); };
  bool types_ok = (g.type == DT_F32 || g.type == DT_BF16 || g.type == DT_F64) &&
                  (g.c_type == g.type || (g.type == DT_BF16 && g.c_type == DT_F32));
  if (!types_ok) return bad("supported types are f32, bf16 (with a bf16 or f32 result) and f64");
  if (g.m < 0 || g.n < 0 || g.k < 0 || g.batch < 0) return bad("negative size");
  if (g.batch > INT32_MAX) return bad("batch too large for cuBLASLt");
  if (g.lda < std::max<int64_t>(1, g.trans_a ? g.m : g.k))
    return bad("lda is smaller than a stored row of A");
  if (g.ldb < std::max<int64_t>(1, g.trans_b ? g.k : g.n))
    return bad("ldb is smaller than a stored row of B");
  if (g.ldc < std::max<int64_t>(1, g.n)) return bad("ldc is smaller than a row of C");
  if (g.stride_a < 0 || g.stride_b < 0 || g.stride_c < 0) return bad("negative batch stride");
  if (g.batch > 1 && g.stride_c == 0) return bad("every batch entry would write the same C");
  if ((g.a == nullptr && g.k > 0) || (g.b == nullptr && g.k > 0) || g.c == nullptr)
    return bad("null matrix pointer");
  return Status();
}

StatusOr<cublasLtHandle_t> Handle(int device, const GemmArgs& g) {
  auto& handles = State().handles;
  auto found = handles.find(device);
  if (found != handles.end()) return found->second;
  cublasLtHandle_t handle = nullptr;
  WEIR_RETURN_IF_ERROR(LtCheck(cublasLtCreate(&handle), g, "cublasLtCreate"));
  handles[device] = handle;
  return handle;
}

Status SetLayoutBatch(cublasLtMatrixLayout_t layout, int64_t batch, int64_t stride,
                      const GemmArgs& g) {
  if (batch <= 1) return Status();
  int32_t count = static_cast<int32_t>(batch);
  WEIR_RETURN_IF_ERROR(
      LtCheck(cublasLtMatrixLayoutSetAttribute(layout, CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT, &count,
                                               sizeof(count)),
              g, "setting the batch count"));
  return LtCheck(cublasLtMatrixLayoutSetAttribute(
                     layout, CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET, &stride, sizeof(stride)),
                 g, "setting the batch stride");
}

StatusOr<std::unique_ptr<Plan>> MakePlan(cublasLtHandle_t handle, const PlanKey& key,
                                         const GemmArgs& g) {
  auto plan = std::make_unique<Plan>();
  bool f64 = g.type == DT_F64;
  // f32 in full f32 (no TF32: results must match the CPU); bf16 accumulates in f32.
  WEIR_RETURN_IF_ERROR(
      LtCheck(cublasLtMatmulDescCreate(&plan->op, f64 ? CUBLAS_COMPUTE_64F : CUBLAS_COMPUTE_32F,
                                       f64 ? CUDA_R_64F : CUDA_R_32F),
              g, "cublasLtMatmulDescCreate"));
  cublasOperation_t op_b = g.trans_b ? CUBLAS_OP_T : CUBLAS_OP_N;  // cuBLASLt's A is our B
  cublasOperation_t op_a = g.trans_a ? CUBLAS_OP_T : CUBLAS_OP_N;  // and its B our A
  WEIR_RETURN_IF_ERROR(LtCheck(
      cublasLtMatmulDescSetAttribute(plan->op, CUBLASLT_MATMUL_DESC_TRANSA, &op_b, sizeof(op_b)), g,
      "setting transa"));
  WEIR_RETURN_IF_ERROR(LtCheck(
      cublasLtMatmulDescSetAttribute(plan->op, CUBLASLT_MATMUL_DESC_TRANSB, &op_a, sizeof(op_a)), g,
      "setting transb"));

  // Our B, stored [k, n] (or [n, k] transposed) row-major: column-major [n, k] (or [k, n]).
  uint64_t b_rows = static_cast<uint64_t>(g.trans_b ? g.k : g.n);
  uint64_t b_cols = static_cast<uint64_t>(g.trans_b ? g.n : g.k);
  // Our A, stored [m, k] (or [k, m] transposed): column-major [k, m] (or [m, k]).
  uint64_t a_rows = static_cast<uint64_t>(g.trans_a ? g.m : g.k);
  uint64_t a_cols = static_cast<uint64_t>(g.trans_a ? g.k : g.m);
  cudaDataType_t ab_type = CudaType(g.type), c_type = CudaType(g.c_type);
  WEIR_RETURN_IF_ERROR(
      LtCheck(cublasLtMatrixLayoutCreate(&plan->lt_a, ab_type, b_rows, b_cols, g.ldb), g,
              "creating B's layout"));
  WEIR_RETURN_IF_ERROR(
      LtCheck(cublasLtMatrixLayoutCreate(&plan->lt_b, ab_type, a_rows, a_cols, g.lda), g,
              "creating A's layout"));
  WEIR_RETURN_IF_ERROR(
      LtCheck(cublasLtMatrixLayoutCreate(&plan->lt_c, c_type, static_cast<uint64_t>(g.n),
                                         static_cast<uint64_t>(g.m), g.ldc),
              g, "creating C's layout"));
  WEIR_RETURN_IF_ERROR(SetLayoutBatch(plan->lt_a, key.batch, key.stride_b, g));
  WEIR_RETURN_IF_ERROR(SetLayoutBatch(plan->lt_b, key.batch, key.stride_a, g));
  WEIR_RETURN_IF_ERROR(SetLayoutBatch(plan->lt_c, key.batch, key.stride_c, g));

  cublasLtMatmulPreference_t preference = nullptr;
  WEIR_RETURN_IF_ERROR(
      LtCheck(cublasLtMatmulPreferenceCreate(&preference), g, "cublasLtMatmulPreferenceCreate"));
  std::unique_ptr<cublasLtMatmulPreferenceOpaque_t, decltype(&cublasLtMatmulPreferenceDestroy)>
      owned(preference, &cublasLtMatmulPreferenceDestroy);
  uint64_t workspace = kMaxWorkspaceBytes;
  WEIR_RETURN_IF_ERROR(LtCheck(
      cublasLtMatmulPreferenceSetAttribute(preference, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                                           &workspace, sizeof(workspace)),
      g, "setting the workspace size"));
  // The heuristic assumes 256-byte aligned matrices unless told otherwise; blocks of larger
  // tensors (a head, a batch entry) often are not.
  const std::pair<cublasLtMatmulPreferenceAttributes_t, uint32_t> alignments[] = {
      {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, key.align_b},
      {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, key.align_a},
      {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, key.align_c},
      {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, key.align_c}};
  for (const auto& [attribute, bytes] : alignments) {
    WEIR_RETURN_IF_ERROR(
        LtCheck(cublasLtMatmulPreferenceSetAttribute(preference, attribute, &bytes, sizeof(bytes)),
                g, "setting an alignment"));
  }
  plan->algorithms.resize(kAlgorithmsPerPlan);
  int found = 0;
  WEIR_RETURN_IF_ERROR(LtCheck(cublasLtMatmulAlgoGetHeuristic(
                                   handle, plan->op, plan->lt_a, plan->lt_b, plan->lt_c, plan->lt_c,
                                   preference, kAlgorithmsPerPlan, plan->algorithms.data(), &found),
                               g, "cublasLtMatmulAlgoGetHeuristic"));
  plan->algorithms.resize(static_cast<size_t>(found));
  if (found == 0) return Internal(Describe(g) + ": cuBLASLt has no algorithm for it");
  return plan;
}

// One cublasLtMatmul: a strided batch when key.batch > 1.
Status Run(const KernelContext& ctx, const GemmArgs& g, const PlanKey& key) {
  ThreadState& state = State();
  WEIR_ASSIGN_OR_RETURN(cublasLtHandle_t handle, Handle(key.device, g));
  auto found = state.plans.find(key);
  if (found == state.plans.end()) {
    WEIR_ASSIGN_OR_RETURN(std::unique_ptr<Plan> made, MakePlan(handle, key, g));
    found = state.plans.emplace(key, std::move(made)).first;
  }
  Plan& plan = *found->second;
  float alpha_f = static_cast<float>(g.alpha), beta_f = static_cast<float>(g.beta);
  const void* alpha = &alpha_f;
  const void* beta = &beta_f;
  if (g.type == DT_F64) {
    alpha = &g.alpha;
    beta = &g.beta;
  }
  cudaStream_t stream = Stream(ctx);
  Status first_failure;
  for (size_t i = plan.chosen; i < plan.algorithms.size(); ++i) {
    const cublasLtMatmulHeuristicResult_t& algorithm = plan.algorithms[i];
    Tensor workspace;
    if (algorithm.workspaceSize > 0) {
      WEIR_ASSIGN_OR_RETURN(workspace,
                            Scratch(ctx, DT_U8, {static_cast<int64_t>(algorithm.workspaceSize)}));
    }
    cublasStatus_t status = cublasLtMatmul(
        handle, plan.op, alpha, g.b, plan.lt_a, g.a, plan.lt_b, beta, g.c, plan.lt_c, g.c,
        plan.lt_c, &algorithm.algo,
        workspace.defined() && algorithm.workspaceSize > 0 ? workspace.raw_data() : nullptr,
        algorithm.workspaceSize, stream);
    if (status == CUBLAS_STATUS_SUCCESS) {
      plan.chosen = i;
      return Status();
    }
    if (first_failure.ok()) first_failure = LtCheck(status, g, "cublasLtMatmul");
    // Only a refusal of this algorithm is worth trying the next one for.
    if (status != CUBLAS_STATUS_NOT_SUPPORTED && status != CUBLAS_STATUS_INVALID_VALUE) break;
  }
  return first_failure;
}

// C = beta · C without a product (k = 0): zeros when beta is 0, the only case weir needs.
Status ScaleOnly(const KernelContext& ctx, const GemmArgs& g) {
  if (g.beta != 0) {
    return InvalidArgument(Describe(g) +
                           ": k = 0 with beta != 0 (scaling C alone) is not implemented");
  }
  size_t element = DataTypeSize(g.c_type);
  for (int64_t r = 0; r < g.batch; ++r) {
    char* c = static_cast<char*>(g.c) + r * g.stride_c * static_cast<int64_t>(element);
    WEIR_RETURN_IF_ERROR(Check(cudaMemset2DAsync(c, static_cast<size_t>(g.ldc) * element, 0,
                                                 static_cast<size_t>(g.n) * element,
                                                 static_cast<size_t>(g.m), Stream(ctx)),
                               "cudaMemset2DAsync (GEMM with k = 0)"));
  }
  return Status();
}

}  // namespace

Status Gemm(const KernelContext& ctx, const GemmArgs& args) {
  if (ctx.device() == nullptr) return Internal(Describe(args) + ": no device context");
  WEIR_RETURN_IF_ERROR(Validate(args));
  if (args.m == 0 || args.n == 0 || args.batch == 0) return Status();
  int device = ctx.device()->device().index;
  WEIR_RETURN_IF_ERROR(Check(cudaSetDevice(device), "cudaSetDevice (GEMM)"));
  if (args.k == 0) return ScaleOnly(ctx, args);

  size_t ab_bytes = DataTypeSize(args.type), c_bytes = DataTypeSize(args.c_type);
  PlanKey key;
  key.device = device;
  key.type = args.type;
  key.c_type = args.c_type;
  key.m = args.m;
  key.n = args.n;
  key.k = args.k;
  key.trans_a = args.trans_a;
  key.trans_b = args.trans_b;
  key.lda = args.lda;
  key.ldb = args.ldb;
  key.ldc = args.ldc;
  key.batch = args.batch;
  if (args.batch > 1) {
    // A stride of 0 shares one matrix across the batch: cuBLASLt reads batch entry r at
    // base + r · stride, whatever the stride (NVIDIA's MatX relies on this for broadcasting);
    // heads interleaved in one tensor (stride < the matrix's extent) work the same way.
    key.stride_a = args.stride_a;
    key.stride_b = args.stride_b;
    key.stride_c = args.stride_c;
  }
  key.align_a = Alignment(args.a, args.stride_a, args.batch, ab_bytes);
  key.align_b = Alignment(args.b, args.stride_b, args.batch, ab_bytes);
  key.align_c = Alignment(args.c, args.stride_c, args.batch, c_bytes);
  return Run(ctx, args, key);
}

}  // namespace weir::cuda
