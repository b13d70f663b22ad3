// Tensor: a typed, shaped view of shared storage.
//
// Shapes and strides count elements; strides make transposes and slices views without copies.
// Kernels that need dense memory call Contiguous(), which copies only when the view is not dense.
// Tensors share their Storage: copying a Tensor is cheap and aliases the data. Not thread-safe for
// concurrent writes to the same elements.
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "weir/allocator.h"
#include "weir/dtype.h"
#include "weir/half.h"
#include "weir/status.h"

namespace weir {

using Shape = std::vector<int64_t>;

// "[2, 3]"; "[]" for a scalar.
std::string ShapeString(const Shape& shape);
int64_t NumElements(const Shape& shape);

enum class DeviceType { kCpu, kCuda };

struct Device {
  DeviceType type = DeviceType::kCpu;
  int index = 0;
  std::string ToString() const;
  bool operator==(const Device&) const = default;
};

// Bytes on a device. Freed (or unmapped) when the last tensor using it goes away.
class Storage {
 public:
  static std::shared_ptr<Storage> Allocate(size_t bytes, Allocator* allocator = nullptr);
  // Memory owned elsewhere (on `device`); `release` runs when the storage dies.
  static std::shared_ptr<Storage> Wrap(void* data, size_t bytes, std::function<void()> release,
                                       Device device = {});
  // A read-only, private mapping of [offset, offset + bytes) of a file.
  static StatusOr<std::shared_ptr<Storage>> MapFile(const std::filesystem::path& file,
                                                    size_t offset, size_t bytes);
  ~Storage();
  Storage(const Storage&) = delete;
  Storage& operator=(const Storage&) = delete;

  void* data() const { return data_; }
  size_t bytes() const { return bytes_; }
  Device device() const { return device_; }

 private:
  Storage() = default;
  void* data_ = nullptr;
  size_t bytes_ = 0;
  Device device_;
  std::function<void()> release_;
};

template <typename T>
constexpr DataType DataTypeOf();
template <>
constexpr DataType DataTypeOf<float>() {
  return DT_F32;
}
template <>
constexpr DataType DataTypeOf<double>() {
  return DT_F64;
}
template <>
constexpr DataType DataTypeOf<bf16>() {
  return DT_BF16;
}
template <>
constexpr DataType DataTypeOf<f16>() {
  return DT_F16;
}
template <>
constexpr DataType DataTypeOf<f8e4m3>() {
  return DT_F8E4M3;
}
template <>
constexpr DataType DataTypeOf<f8e5m2>() {
  return DT_F8E5M2;
}
template <>
constexpr DataType DataTypeOf<int8_t>() {
  return DT_I8;
}
template <>
constexpr DataType DataTypeOf<int32_t>() {
  return DT_I32;
}
template <>
constexpr DataType DataTypeOf<int64_t>() {
  return DT_I64;
}
template <>
constexpr DataType DataTypeOf<uint8_t>() {
  return DT_U8;
}
template <>
constexpr DataType DataTypeOf<bool>() {
  return DT_BOOL;
}

bool IsFloating(DataType t);

class Tensor {
 public:
  Tensor() = default;

  // Uninitialized memory from `allocator` (the pooled CPU allocator by default).
  static Tensor Empty(DataType dtype, const Shape& shape, Allocator* allocator = nullptr);
  static Tensor Zeros(DataType dtype, const Shape& shape);
  static Tensor Full(DataType dtype, const Shape& shape, double value);
  // Values converted to `dtype`; values.size() must equal the shape's element count.
  static Tensor FromValues(DataType dtype, const Shape& shape, const std::vector<double>& values);
  // A tensor over existing storage (for example a memory-mapped file); contiguous.
  static Tensor FromStorage(std::shared_ptr<Storage> storage, DataType dtype, const Shape& shape,
                            int64_t offset_elements = 0);

  bool defined() const { return storage_ != nullptr || NumElements(shape_) == 0; }
  DataType dtype() const { return dtype_; }
  const Shape& shape() const { return shape_; }
  const Shape& strides() const { return strides_; }
  int rank() const { return static_cast<int>(shape_.size()); }
  // Negative dims count from the end.
  int64_t dim(int d) const { return shape_.at(d < 0 ? d + rank() : d); }
  int64_t numel() const { return NumElements(shape_); }
  size_t nbytes() const { return static_cast<size_t>(numel()) * DataTypeSize(dtype_); }
  bool is_contiguous() const;
  Device device() const { return storage_ ? storage_->device() : Device{}; }
  const std::shared_ptr<Storage>& storage() const { return storage_; }

  // Typed pointer to the first element of the view. CHECK-fails on a dtype mismatch.
  template <typename T>
  T* data() const {
    CHECK_EQ(DataTypeOf<T>(), dtype_) << "tensor holds " << DataTypeName(dtype_);
    return reinterpret_cast<T*>(raw_data());
  }
  void* raw_data() const;

  // Views (no copy).
  StatusOr<Tensor> Reshape(const Shape& shape) const;  // needs a contiguous tensor; one dim -1
  Tensor Transpose(int a, int b) const;
  Tensor Slice(int dim, int64_t begin, int64_t end) const;

  // Copies.
  Tensor Contiguous() const;  // this tensor when already contiguous
  Tensor Clone() const;
  Tensor To(DataType dtype) const;   // converts (copies even when the dtype is the same)
  void CopyFrom(const Tensor& src);  // same shape; converts dtype

  // Element access through strides, as double; for tests and small tools, not kernels.
  double At(int64_t flat_index) const;
  std::vector<double> ToVector() const;

  std::string DebugString() const;  // "f32[2, 3]"

 private:
  std::shared_ptr<Storage> storage_;
  DataType dtype_ = DT_F32;
  Shape shape_;
  Shape strides_;
  int64_t offset_ = 0;  // elements
};

Shape ContiguousStrides(const Shape& shape);

// Reads element i of a dense array of `dtype` as double, and writes it.
double LoadAsDouble(const void* base, DataType dtype, int64_t i);
void StoreFromDouble(void* base, DataType dtype, int64_t i, double v);

}  // namespace weir
