// safetensors: round trips, shards, and refusal of damaged files.
#include "weir/safetensors.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

namespace weir {
namespace {

namespace fs = std::filesystem;

TEST(Safetensors, RoundTripsEveryDtype) {
  fs::path path = fs::path(::testing::TempDir()) / "all.safetensors";
  std::vector<std::pair<std::string, Tensor>> tensors;
  for (DataType t : {DT_F32, DT_F64, DT_BF16, DT_F16, DT_I64, DT_I32, DT_U8, DT_F8E4M3})
    tensors.emplace_back(std::string("t_") + DataTypeName(t),
                         Tensor::FromValues(t, {2, 3}, {1, -2, 3, 0.5, 4, -1}));
  ASSERT_TRUE(WriteSafetensors(path, tensors, {{"format", "pt"}}).ok());
  auto file = SafetensorsFile::Open(path);
  ASSERT_TRUE(file.ok()) << file.status().ToString();
  EXPECT_EQ((*file)->metadata().at("format"), "pt");
  EXPECT_EQ((*file)->names().size(), tensors.size());
  for (const auto& [name, t] : tensors) {
    auto back = (*file)->Get(name);
    ASSERT_TRUE(back.ok());
    EXPECT_EQ(back->dtype(), t.dtype());
    EXPECT_EQ(back->shape(), t.shape());
    EXPECT_EQ(back->ToVector(), t.ToVector()) << name;
  }
}

TEST(Safetensors, ShardsPastTheLimit) {
  fs::path dir = fs::path(::testing::TempDir()) / "sharded";
  fs::remove_all(dir);
  fs::create_directories(dir);
  std::vector<std::pair<std::string, Tensor>> tensors;
  for (int i = 0; i < 5; ++i)
    tensors.emplace_back("w" + std::to_string(i), Tensor::Full(DT_F32, {100}, i));
  ASSERT_TRUE(WriteSafetensorsSharded(dir, "model", tensors, 1000).ok());
  EXPECT_TRUE(fs::exists(dir / "model.safetensors.index.json"));
  EXPECT_TRUE(fs::exists(dir / "model-00001-of-00003.safetensors"));
  EXPECT_FALSE(fs::exists(dir / "model.safetensors"));
  auto back = ReadSafetensorsSharded(dir, "model");
  ASSERT_TRUE(back.ok()) << back.status().ToString();
  ASSERT_EQ(back->size(), 5u);
  EXPECT_EQ(back->at("w3").At(99), 3);
}

TEST(Safetensors, DamagedFilesAreRefusedWithAReason) {
  fs::path path = fs::path(::testing::TempDir()) / "bad.safetensors";
  auto write = [&](const std::string& header, size_t data) {
    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    uint64_t n = header.size();
    out.write(reinterpret_cast<const char*>(&n), 8);
    out << header << std::string(data, '\0');
  };
  write(R"({"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}})", 8);
  auto past = SafetensorsFile::Open(path);
  ASSERT_FALSE(past.ok());
  EXPECT_NE(past.status().message().find("tensor 'a' lies outside the data (8 bytes)"),
            std::string::npos);
  write(R"({"a":{"dtype":"F32","shape":[3],"data_offsets":[0,16]}})", 16);
  auto size = SafetensorsFile::Open(path);
  ASSERT_FALSE(size.ok());
  EXPECT_NE(size.status().message().find("holds 16 bytes, its shape needs 12"), std::string::npos);
  write(R"({"a":{"dtype":"Q4","shape":[4],"data_offsets":[0,16]}})", 16);
  EXPECT_NE(SafetensorsFile::Open(path).status().message().find("unknown dtype 'Q4'"),
            std::string::npos);
  write("not json", 0);
  EXPECT_FALSE(SafetensorsFile::Open(path).ok());
  std::ofstream(path, std::ios::binary | std::ios::trunc) << "\xff\xff\xff\xff\xff\xff\xff\x7f";
  EXPECT_NE(SafetensorsFile::Open(path).status().message().find("does not fit"), std::string::npos);
  // Found by fuzzing (tests/fuzz): converting this dim to an integer was undefined.
  write(R"({"a":{"dtype":"F32","shape":[1e300],"data_offsets":[0,4]}})", 4);
  EXPECT_NE(
      SafetensorsFile::Open(path).status().message().find("tensor 'a' has the dimension 1e+300"),
      std::string::npos);
}

}  // namespace
}  // namespace weir
