// Built instead of runtime.cu when ponder is compiled without CUDA.
#include "ponder/cuda_runtime.h"

namespace ponder::cuda {
bool built() { return false; }
int device_count() { return 0; }
int num_sms(int) { return 0; }
}  // namespace ponder::cuda
