// The CUDA device runtime on a GPU: copies, fills, sums and conversions that programs rely on,
// the stream-ordered memory, waiting inside a TBB task, and a whole program with autodiff on
// cuda:0 against the host.
#include <gtest/gtest.h>
#include <tbb/task_arena.h>

#include "weir/device.h"
#include "weir/runtime/program.h"
#include "weir/testing/gpu.h"
#include "weir/testing/op_check.h"

namespace weir::testing {
namespace {

DeviceRuntime* Cuda0() {
  auto runtime = FindDeviceRuntime("cuda:0");
  EXPECT_TRUE(runtime.ok()) << runtime.status().ToString();
  return runtime.ok() ? *runtime : nullptr;
}

std::vector<double> RoundTrip(DeviceRuntime* d, StreamId s, const Tensor& device_tensor) {
  Tensor host = Tensor::Empty(device_tensor.dtype(), device_tensor.shape());
  EXPECT_TRUE(d->CopyToHost(host.raw_data(), device_tensor.raw_data(), host.nbytes(), s).ok());
  EXPECT_TRUE(d->Synchronize(s).ok());
  return host.ToVector();
}

TEST(CudaRuntime, CopyFillSumConvert) {
  WEIR_REQUIRE_GPU();
  DeviceRuntime* d = Cuda0();
  ASSERT_NE(d, nullptr);
  auto stream = d->AcquireStream();
  ASSERT_TRUE(stream.ok()) << stream.status().ToString();
  StreamId s = *stream;
  const int64_t n = 1000003;  // not a multiple of any block size
  auto storage = [&](DataType t) {
    auto made = d->Allocate(static_cast<size_t>(n) * DataTypeSize(t), s);
    EXPECT_TRUE(made.ok()) << made.status().ToString();
    return Tensor::FromStorage(*made, t, {n});
  };
  std::vector<double> values(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) values[static_cast<size_t>(i)] = (i % 97) * 0.25 - 7;
  Tensor host = Tensor::FromValues(DT_F32, {n}, values);
  Tensor a = storage(DT_F32), b = storage(DT_F32), sum = storage(DT_F32);
  ASSERT_TRUE(d->CopyToDevice(a.raw_data(), host.raw_data(), host.nbytes(), s).ok());
  ASSERT_TRUE(d->Fill(b.raw_data(), DT_F32, n, 1.5, s).ok());
  ASSERT_TRUE(
      d->Sum({a.raw_data(), b.raw_data(), a.raw_data()}, sum.raw_data(), DT_F32, n, s).ok());
  std::vector<double> got = RoundTrip(d, s, sum);
  for (int64_t i = 0; i < n; i += 9973)
    EXPECT_EQ(got[static_cast<size_t>(i)], 2 * values[static_cast<size_t>(i)] + 1.5) << i;

  Tensor narrow = storage(DT_BF16), wide = storage(DT_F64);
  ASSERT_TRUE(d->Convert(a.raw_data(), DT_F32, narrow.raw_data(), DT_BF16, n, s).ok());
  ASSERT_TRUE(d->Convert(narrow.raw_data(), DT_BF16, wide.raw_data(), DT_F64, n, s).ok());
  std::vector<double> back = RoundTrip(d, s, wide);
  Tensor want = host.To(DT_BF16);  // the host's rounding, to nearest even
  for (int64_t i = 0; i < n; i += 7919) EXPECT_EQ(back[static_cast<size_t>(i)], want.At(i)) << i;
  d->ReleaseStream(s);
}

TEST(CudaRuntime, SynchronizeInsideTbbTaskFreesTheWorker) {
  WEIR_REQUIRE_GPU();
  DeviceRuntime* d = Cuda0();
  ASSERT_NE(d, nullptr);
  auto stream = d->AcquireStream();
  ASSERT_TRUE(stream.ok());
  tbb::task_arena one(1);
  Status waited;
  one.execute([&] { waited = d->Synchronize(*stream); });
  EXPECT_TRUE(waited.ok()) << waited.ToString();
  d->ReleaseStream(*stream);
}

TEST(CudaRuntime, ProgramWithGradientsMatchesTheHost) {
  WEIR_REQUIRE_GPU();
  // A small MLP through nn ops: parameters, constants, accumulated gradients and every copy.
  OpCase c{"nn.Linear", "out_features=7 T=f32", {{DT_F32, {3, 5, 9}}}};
  EXPECT_GT(CheckDeviceGradients(c, "cuda:0", 1e-4), 0);
  std::vector<std::string> not_runnable;
  auto compared = CheckDeviceConformance(c, 1e-4, &not_runnable);
  EXPECT_NE(std::find(compared.begin(), compared.end(), "cuda"), compared.end());
}

TEST(CudaRuntime, UnknownDeviceIndexIsAClearError) {
  WEIR_REQUIRE_GPU();
  auto runtime = FindDeviceRuntime("cuda:4096");
  ASSERT_FALSE(runtime.ok());
  EXPECT_NE(runtime.status().ToString().find("cuda:4096"), std::string::npos)
      << runtime.status().ToString();
}

}  // namespace
}  // namespace weir::testing
