#include "weir/testing/gpu.h"

#include <algorithm>
#include <cmath>

#include "weir/device.h"

namespace weir::testing {

bool HaveCudaDevice(std::string* why) {
  auto runtime = FindDeviceRuntime("cuda:0");
  if (runtime.ok()) return true;
  if (why != nullptr) *why = runtime.status().message();
  return false;
}

const std::vector<DtypeTolerance>& GpuTolerances() {
  static const std::vector<DtypeTolerance> all = {{DT_F32, 1e-4}, {DT_BF16, 2e-2}, {DT_F64, 1e-9}};
  return all;
}

std::string DescribeCase(const OpCase& c) {
  std::string s = c.op + " [" + c.attrs + "]";
  for (const TensorType& t : c.inputs) s += " " + t.ToString();
  return s;
}

bool HasCudaKernel(const std::string& op) {
  const OpEntry* entry = TestRegistry().Find(op);
  if (entry == nullptr) return false;
  for (const KernelDef& k : entry->def.kernel())
    if (k.device() == "cuda") return true;
  return false;
}

void ExpectCudaConformance(const OpCase& c, double tolerance) {
  SCOPED_TRACE(DescribeCase(c));
  std::vector<std::string> not_runnable;
  std::vector<std::string> compared = CheckDeviceConformance(c, tolerance, &not_runnable);
  EXPECT_NE(std::find(compared.begin(), compared.end(), "cuda"), compared.end())
      << "cuda was not compared";
}

void ExpectCudaGradients(const OpCase& c, double tolerance) {
  SCOPED_TRACE(DescribeCase(c));
  EXPECT_GT(CheckDeviceGradients(c, "cuda", tolerance), 0);
}

void ExpectCudaNearCpu(const OpCase& c, double tolerance, double floor,
                       const std::vector<int64_t>& rows) {
  SCOPED_TRACE(DescribeCase(c));
  EXPECT_TRUE(HasCudaKernel(c.op)) << "no cuda kernel for " << c.op;
  auto cpu = RunOp(c, {}, nullptr, "cpu");
  ASSERT_TRUE(cpu.ok()) << cpu.status().ToString();
  auto gpu = RunOp(c, {}, nullptr, "cuda");
  ASSERT_TRUE(gpu.ok()) << "cuda: " << gpu.status().ToString();
  ASSERT_EQ(gpu->size(), cpu->size());
  for (size_t o = 0; o < cpu->size(); ++o) {
    const Tensor &w = (*cpu)[o], &g = (*gpu)[o];
    ASSERT_EQ(w.shape(), g.shape()) << "output " << o;
    std::vector<double> want = w.To(DT_F64).ToVector(), got = g.To(DT_F64).ToVector();
    size_t n = want.size();
    if (o < rows.size() && rows[o] >= 0 && w.rank() > 0)
      n = std::min(n, static_cast<size_t>(rows[o] * (w.numel() / std::max<int64_t>(1, w.dim(0)))));
    double largest = 0;
    for (size_t i = 0; i < n; ++i)
      if (std::isfinite(want[i])) largest = std::max(largest, std::abs(want[i]));
    int reported = 0;
    for (size_t i = 0; i < n && reported < 10; ++i) {
      if (std::isinf(want[i]) && got[i] == want[i]) continue;
      double allowed = std::max(1e-12, tolerance * std::max(std::abs(want[i]), floor * largest));
      if (std::abs(got[i] - want[i]) <= allowed) continue;
      ADD_FAILURE() << c.op << " output " << o << "[" << i << "]: cuda " << got[i] << ", cpu "
                    << want[i] << " (allowed difference " << allowed << ")";
      ++reported;
    }
  }
}

}  // namespace weir::testing
