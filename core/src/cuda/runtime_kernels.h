// Kernels behind the CUDA DeviceRuntime (runtime.cc); queued on `stream`.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <vector>

#include "weir/dtype.h"
#include "weir/status.h"

namespace weir::cuda {

Status FillOnDevice(void* data, DataType dtype, int64_t count, double value, cudaStream_t stream);
Status SumOnDevice(const std::vector<const void*>& parts, void* out, DataType dtype, int64_t count,
                   cudaStream_t stream);
Status ConvertOnDevice(const void* in, DataType from, void* out, DataType to, int64_t count,
                       cudaStream_t stream);

}  // namespace weir::cuda
