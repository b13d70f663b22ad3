// Tensors, views, dtype conversions and the pooled allocator.
#include "weir/tensor.h"

#include <gtest/gtest.h>

#include <cmath>
#include <fstream>
#include <limits>

namespace weir {
namespace {

TEST(Half, Bf16RoundsToNearestEven) {
  EXPECT_EQ(static_cast<float>(bf16(1.0f)), 1.0f);
  // 1 + 2^-8 is halfway between 1 and 1 + 2^-7: ties go to the even mantissa (1.0).
  EXPECT_EQ(static_cast<float>(bf16(1.0f + std::ldexp(1.0f, -8))), 1.0f);
  EXPECT_EQ(static_cast<float>(bf16(1.0f + 3 * std::ldexp(1.0f, -8))), 1.0f + std::ldexp(1.0f, -6));
  EXPECT_TRUE(std::isnan(static_cast<float>(bf16(std::nanf("")))));
  EXPECT_EQ(static_cast<float>(bf16(-3.5f)), -3.5f);
}

TEST(Half, F16MatchesIeeeBinary16) {
  EXPECT_EQ(f16(1.0f).bits, 0x3c00);
  EXPECT_EQ(f16(-2.0f).bits, 0xc000);
  EXPECT_EQ(f16(65504.0f).bits, 0x7bff);               // largest finite
  EXPECT_EQ(f16(70000.0f).bits, 0x7c00);               // overflows to infinity
  EXPECT_EQ(f16(std::ldexp(1.0f, -24)).bits, 0x0001);  // smallest subnormal
  EXPECT_EQ(f16::ToFloat(0x3555), 0.333251953125f);
  for (uint32_t h = 0; h < 0x7c00; ++h)  // every finite positive value round-trips
    ASSERT_EQ(f16(f16::ToFloat(static_cast<uint16_t>(h))).bits, h);
}

TEST(Half, Fp8FormatsRoundTripAndSaturate) {
  for (int b = 0; b < 256; ++b) {
    f8e4m3 x;
    x.bits = static_cast<uint8_t>(b);
    float v = static_cast<float>(x);
    if (std::isnan(v)) continue;
    ASSERT_EQ(f8e4m3(v).bits, x.bits) << b;
  }
  EXPECT_EQ(static_cast<float>(f8e4m3(448.0f)), 448.0f);
  EXPECT_EQ(static_cast<float>(f8e4m3(1e6f)), 448.0f);  // saturates, no infinity
  EXPECT_EQ(static_cast<float>(f8e4m3(std::ldexp(1.0f, -9))), std::ldexp(1.0f, -9));  // subnormal
  for (int b = 0; b < 256; ++b) {
    f8e5m2 x;
    x.bits = static_cast<uint8_t>(b);
    float v = static_cast<float>(x);
    if (std::isnan(v)) continue;
    ASSERT_EQ(f8e5m2(v).bits, x.bits) << b;
  }
  EXPECT_EQ(static_cast<float>(f8e5m2(57344.0f)), 57344.0f);
  EXPECT_TRUE(std::isinf(static_cast<float>(f8e5m2(1e6f))));
}

TEST(Tensor, ViewsShareStorage) {
  Tensor t = Tensor::FromValues(DT_F32, {2, 3}, {0, 1, 2, 3, 4, 5});
  Tensor tt = t.Transpose(0, 1);
  EXPECT_EQ(tt.shape(), (Shape{3, 2}));
  EXPECT_FALSE(tt.is_contiguous());
  EXPECT_EQ(tt.ToVector(), (std::vector<double>{0, 3, 1, 4, 2, 5}));
  Tensor s = t.Slice(1, 1, 3);
  EXPECT_EQ(s.ToVector(), (std::vector<double>{1, 2, 4, 5}));
  t.data<float>()[1] = 10;
  EXPECT_EQ(s.At(0), 10);  // aliases
  Tensor c = tt.Contiguous();
  EXPECT_TRUE(c.is_contiguous());
  EXPECT_EQ(c.ToVector(), (std::vector<double>{0, 3, 10, 4, 2, 5}));
  auto r = t.Reshape({3, -1});
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->shape(), (Shape{3, 2}));
  EXPECT_EQ(t.Reshape({4, 2}).status().message(), "cannot reshape [2, 3] (6 elements) to [4, 2]");
}

TEST(Tensor, ConvertsBetweenDtypes) {
  Tensor t = Tensor::FromValues(DT_F32, {4}, {1.5, -2.25, 1e-3, 300});
  Tensor b = t.To(DT_BF16);
  EXPECT_EQ(b.dtype(), DT_BF16);
  EXPECT_EQ(b.At(0), 1.5);
  EXPECT_NEAR(b.At(2), 1e-3, 1e-5);
  Tensor i = t.To(DT_I64);
  EXPECT_EQ(i.ToVector(), (std::vector<double>{1, -2, 0, 300}));
  EXPECT_EQ(t.To(DT_F64).ToVector()[1], -2.25);
}

TEST(Tensor, MapsAFileRange) {
  std::string path = ::testing::TempDir() + "/mapped.bin";
  std::vector<float> values(5000);
  for (size_t i = 0; i < values.size(); ++i) values[i] = static_cast<float>(i);
  std::ofstream(path, std::ios::binary)
      .write(reinterpret_cast<const char*>(values.data()),
             static_cast<std::streamsize>(values.size() * 4));
  // An offset that is not page-aligned.
  auto storage = Storage::MapFile(path, 4 * 1000, 4 * 3000);
  ASSERT_TRUE(storage.ok()) << storage.status().ToString();
  Tensor t = Tensor::FromStorage(*storage, DT_F32, {3000});
  EXPECT_EQ(t.At(0), 1000);
  EXPECT_EQ(t.At(2999), 3999);
  auto past = Storage::MapFile(path, 4 * 4000, 4 * 3000);
  EXPECT_FALSE(past.ok());
  EXPECT_NE(past.status().message().find("runs past the end of the 20000-byte file"),
            std::string::npos);
}

TEST(Allocator, ReusesBlocksAndTracksPeak) {
  PooledCpuAllocator a;
  void* p = a.Allocate(1000);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(p) % 64, 0u);
  void* q = a.Allocate(3000);
  EXPECT_EQ(a.stats().live_bytes, 4000);
  a.Free(p, 1000);
  EXPECT_EQ(a.stats().live_bytes, 3000);
  EXPECT_EQ(a.stats().peak_bytes, 4000);
  void* p2 = a.Allocate(990);  // same size class: the freed block comes back
  EXPECT_EQ(p2, p);
  EXPECT_EQ(a.stats().system_allocations, 2);
  a.Free(p2, 990);
  a.Free(q, 3000);
  EXPECT_EQ(a.stats().live_bytes, 0);
  a.Trim();
  EXPECT_EQ(a.stats().pooled_bytes, 0);
}

}  // namespace
}  // namespace weir
