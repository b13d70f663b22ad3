#include "weir/tensor.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstring>
#include <numeric>

namespace weir {

std::string ShapeString(const Shape& shape) {
  std::string out = "[";
  for (size_t i = 0; i < shape.size(); ++i) out += (i ? ", " : "") + std::to_string(shape[i]);
  return out + "]";
}

int64_t NumElements(const Shape& shape) {
  return std::accumulate(shape.begin(), shape.end(), int64_t{1}, std::multiplies<int64_t>());
}

std::string Device::ToString() const {
  return (type == DeviceType::kCpu ? "cpu:" : "cuda:") + std::to_string(index);
}

bool IsFloating(DataType t) {
  switch (t) {
    case DT_F32:
    case DT_F64:
    case DT_BF16:
    case DT_F16:
    case DT_F8E4M3:
    case DT_F8E5M2:
      return true;
    default:
      return false;
  }
}

std::shared_ptr<Storage> Storage::Allocate(size_t bytes, Allocator* allocator) {
  if (allocator == nullptr) allocator = &PooledCpuAllocator::Global();
  std::shared_ptr<Storage> s(new Storage());
  s->data_ = allocator->Allocate(bytes);
  CHECK(s->data_ != nullptr || bytes == 0) << "out of memory allocating " << bytes << " bytes";
  s->bytes_ = bytes;
  s->release_ = [allocator, p = s->data_, bytes] { allocator->Free(p, bytes); };
  return s;
}

std::shared_ptr<Storage> Storage::Wrap(void* data, size_t bytes, std::function<void()> release,
                                       Device device) {
  std::shared_ptr<Storage> s(new Storage());
  s->data_ = data;
  s->bytes_ = bytes;
  s->release_ = std::move(release);
  s->device_ = device;
  return s;
}

StatusOr<std::shared_ptr<Storage>> Storage::MapFile(const std::filesystem::path& file,
                                                    size_t offset, size_t bytes) {
  int fd = ::open(file.c_str(), O_RDONLY);
  if (fd < 0) return Unavailable("cannot open " + file.string() + ": " + std::strerror(errno));
  struct stat st {};
  ::fstat(fd, &st);
  if (offset + bytes > static_cast<size_t>(st.st_size)) {
    ::close(fd);
    return InvalidArgument(file.string() + ": a tensor at bytes [" + std::to_string(offset) + ", " +
                           std::to_string(offset + bytes) + ") runs past the end of the " +
                           std::to_string(st.st_size) + "-byte file");
  }
  if (bytes == 0) {
    ::close(fd);
    return Wrap(nullptr, 0, nullptr);
  }
  // mmap offsets must be page-aligned: map from the page start and point into it.
  size_t page = static_cast<size_t>(::sysconf(_SC_PAGESIZE));
  size_t start = offset / page * page;
  size_t length = bytes + (offset - start);
  void* base = ::mmap(nullptr, length, PROT_READ, MAP_PRIVATE, fd, static_cast<off_t>(start));
  ::close(fd);
  if (base == MAP_FAILED)
    return Unavailable("cannot map " + file.string() + ": " + std::strerror(errno));
  return Wrap(static_cast<char*>(base) + (offset - start), bytes,
              [base, length] { ::munmap(base, length); });
}

Storage::~Storage() {
  if (release_) release_();
}

Shape ContiguousStrides(const Shape& shape) {
  Shape strides(shape.size());
  int64_t s = 1;
  for (size_t i = shape.size(); i-- > 0;) {
    strides[i] = s;
    s *= shape[i];
  }
  return strides;
}

double LoadAsDouble(const void* base, DataType dtype, int64_t i) {
  switch (dtype) {
    case DT_F32:
      return static_cast<const float*>(base)[i];
    case DT_F64:
      return static_cast<const double*>(base)[i];
    case DT_BF16:
      return static_cast<float>(static_cast<const bf16*>(base)[i]);
    case DT_F16:
      return static_cast<float>(static_cast<const f16*>(base)[i]);
    case DT_F8E4M3:
      return static_cast<float>(static_cast<const f8e4m3*>(base)[i]);
    case DT_F8E5M2:
      return static_cast<float>(static_cast<const f8e5m2*>(base)[i]);
    case DT_I8:
      return static_cast<const int8_t*>(base)[i];
    case DT_I32:
      return static_cast<const int32_t*>(base)[i];
    case DT_I64:
      return static_cast<double>(static_cast<const int64_t*>(base)[i]);
    case DT_U8:
      return static_cast<const uint8_t*>(base)[i];
    case DT_BOOL:
      return static_cast<const bool*>(base)[i] ? 1.0 : 0.0;
    default:
      LOG(FATAL) << "no element access for " << DataTypeName(dtype);
  }
  return 0;
}

void StoreFromDouble(void* base, DataType dtype, int64_t i, double v) {
  switch (dtype) {
    case DT_F32:
      static_cast<float*>(base)[i] = static_cast<float>(v);
      break;
    case DT_F64:
      static_cast<double*>(base)[i] = v;
      break;
    case DT_BF16:
      static_cast<bf16*>(base)[i] = bf16(static_cast<float>(v));
      break;
    case DT_F16:
      static_cast<f16*>(base)[i] = f16(static_cast<float>(v));
      break;
    case DT_F8E4M3:
      static_cast<f8e4m3*>(base)[i] = f8e4m3(static_cast<float>(v));
      break;
    case DT_F8E5M2:
      static_cast<f8e5m2*>(base)[i] = f8e5m2(static_cast<float>(v));
      break;
    case DT_I8:
      static_cast<int8_t*>(base)[i] = static_cast<int8_t>(v);
      break;
    case DT_I32:
      static_cast<int32_t*>(base)[i] = static_cast<int32_t>(v);
      break;
    case DT_I64:
      static_cast<int64_t*>(base)[i] = static_cast<int64_t>(v);
      break;
    case DT_U8:
      static_cast<uint8_t*>(base)[i] = static_cast<uint8_t>(v);
      break;
    case DT_BOOL:
      static_cast<bool*>(base)[i] = v != 0;
      break;
    default:
      LOG(FATAL) << "no element access for " << DataTypeName(dtype);
  }
}

Tensor Tensor::Empty(DataType dtype, const Shape& shape, Allocator* allocator) {
  Tensor t;
  t.dtype_ = dtype;
  t.shape_ = shape;
  t.strides_ = ContiguousStrides(shape);
  t.storage_ =
      Storage::Allocate(static_cast<size_t>(NumElements(shape)) * DataTypeSize(dtype), allocator);
  return t;
}

Tensor Tensor::Zeros(DataType dtype, const Shape& shape) {
  Tensor t = Empty(dtype, shape);
  std::memset(t.raw_data(), 0, t.nbytes());
  return t;
}

Tensor Tensor::Full(DataType dtype, const Shape& shape, double value) {
  Tensor t = Empty(dtype, shape);
  for (int64_t i = 0; i < t.numel(); ++i) StoreFromDouble(t.raw_data(), dtype, i, value);
  return t;
}

Tensor Tensor::FromValues(DataType dtype, const Shape& shape, const std::vector<double>& values) {
  CHECK_EQ(static_cast<int64_t>(values.size()), NumElements(shape));
  Tensor t = Empty(dtype, shape);
  for (size_t i = 0; i < values.size(); ++i)
    StoreFromDouble(t.raw_data(), dtype, static_cast<int64_t>(i), values[i]);
  return t;
}

Tensor Tensor::FromStorage(std::shared_ptr<Storage> storage, DataType dtype, const Shape& shape,
                           int64_t offset_elements) {
  CHECK_LE((offset_elements + NumElements(shape)) * static_cast<int64_t>(DataTypeSize(dtype)),
           static_cast<int64_t>(storage->bytes()));
  Tensor t;
  t.storage_ = std::move(storage);
  t.dtype_ = dtype;
  t.shape_ = shape;
  t.strides_ = ContiguousStrides(shape);
  t.offset_ = offset_elements;
  return t;
}

bool Tensor::is_contiguous() const {
  int64_t expected = 1;
  for (size_t i = shape_.size(); i-- > 0;) {
    if (shape_[i] != 1 && strides_[i] != expected) return false;
    expected *= shape_[i];
  }
  return true;
}

void* Tensor::raw_data() const {
  if (!storage_) return nullptr;
  return static_cast<char*>(storage_->data()) +
         offset_ * static_cast<int64_t>(DataTypeSize(dtype_));
}

StatusOr<Tensor> Tensor::Reshape(const Shape& shape) const {
  Shape resolved = shape;
  int64_t known = 1;
  int infer = -1;
  for (size_t i = 0; i < shape.size(); ++i) {
    if (shape[i] == -1) {
      if (infer >= 0) return InvalidArgument("reshape to " + ShapeString(shape) + ": two -1 dims");
      infer = static_cast<int>(i);
    } else {
      known *= shape[i];
    }
  }
  if (infer >= 0 && known > 0) resolved[infer] = numel() / known;
  if (NumElements(resolved) != numel()) {
    return InvalidArgument("cannot reshape " + ShapeString(shape_) + " (" +
                           std::to_string(numel()) + " elements) to " + ShapeString(shape));
  }
  Tensor t = is_contiguous() ? *this : Contiguous();
  t.shape_ = resolved;
  t.strides_ = ContiguousStrides(resolved);
  return t;
}

Tensor Tensor::Transpose(int a, int b) const {
  if (a < 0) a += rank();
  if (b < 0) b += rank();
  Tensor t = *this;
  std::swap(t.shape_.at(a), t.shape_.at(b));
  std::swap(t.strides_.at(a), t.strides_.at(b));
  return t;
}

Tensor Tensor::Slice(int d, int64_t begin, int64_t end) const {
  if (d < 0) d += rank();
  CHECK(0 <= begin && begin <= end && end <= shape_.at(d))
      << "slice [" << begin << ", " << end << ") of dim " << d << " of " << ShapeString(shape_);
  Tensor t = *this;
  t.offset_ += begin * strides_[d];
  t.shape_[d] = end - begin;
  return t;
}

Tensor Tensor::Contiguous() const {
  if (is_contiguous()) return *this;
  return Clone();
}

Tensor Tensor::Clone() const {
  CHECK(device().type == DeviceType::kCpu) << "Clone of a tensor on " << device().ToString();
  Tensor t = Empty(dtype_, shape_);
  t.CopyFrom(*this);
  return t;
}

Tensor Tensor::To(DataType dtype) const {
  CHECK(device().type == DeviceType::kCpu) << "To() of a tensor on " << device().ToString();
  Tensor t = Empty(dtype, shape_);
  t.CopyFrom(*this);
  return t;
}

void Tensor::CopyFrom(const Tensor& src) {
  CHECK(src.shape_ == shape_) << "copy " << ShapeString(src.shape_) << " into "
                              << ShapeString(shape_);
  // Host memory only: copies to and from a device go through its DeviceRuntime.
  CHECK(device().type == DeviceType::kCpu && src.device().type == DeviceType::kCpu)
      << "CopyFrom between " << src.device().ToString() << " and " << device().ToString();
  if (src.dtype_ == dtype_ && src.is_contiguous() && is_contiguous()) {
    std::memcpy(raw_data(), src.raw_data(), nbytes());
    return;
  }
  CHECK(is_contiguous()) << "CopyFrom into a strided view";
  if (src.is_contiguous()) {
    // The conversions on hot paths (bf16 compute over f32 masters) get typed loops.
    int64_t n = numel();
    auto convert = [&](auto* out, const auto* in) {
      using O = std::remove_pointer_t<decltype(out)>;
      for (int64_t i = 0; i < n; ++i) out[i] = O(static_cast<float>(in[i]));
    };
    if (src.dtype_ == DT_F32 && dtype_ == DT_BF16) return convert(data<bf16>(), src.data<float>());
    if (src.dtype_ == DT_BF16 && dtype_ == DT_F32) return convert(data<float>(), src.data<bf16>());
    if (src.dtype_ == DT_F32 && dtype_ == DT_F64) {
      for (int64_t i = 0; i < n; ++i) data<double>()[i] = src.data<float>()[i];
      return;
    }
  }
  for (int64_t i = 0; i < numel(); ++i) StoreFromDouble(raw_data(), dtype_, i, src.At(i));
}

double Tensor::At(int64_t flat) const {
  CHECK(device().type == DeviceType::kCpu) << "At() of a tensor on " << device().ToString();
  int64_t offset = 0;
  for (size_t d = shape_.size(); d-- > 0;) {
    offset += (flat % shape_[d]) * strides_[d];
    flat /= shape_[d];
  }
  return LoadAsDouble(raw_data(), dtype_, offset);
}

std::vector<double> Tensor::ToVector() const {
  std::vector<double> out(static_cast<size_t>(numel()));
  for (int64_t i = 0; i < numel(); ++i) out[static_cast<size_t>(i)] = At(i);
  return out;
}

std::string Tensor::DebugString() const {
  return std::string(DataTypeName(dtype_)) + ShapeString(shape_);
}

}  // namespace weir
