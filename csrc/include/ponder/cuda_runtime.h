// What the CUDA side of ponder can report without any tensor: whether kernels were built and
// which devices the runtime sees. Defined in csrc/cuda/runtime.cu, or as stubs without CUDA.
#pragma once

#include <cstdint>

namespace ponder::cuda {

bool built();
// 0 when the build has no CUDA or no driver/device is present; never throws.
int device_count();
int num_sms(int device);

}  // namespace ponder::cuda
