// Scalar math for the CPU kernels, written so that loops over it vectorize (libm's expf is a
// call per element that no loop vectorizes), and the CPU check of their AVX-512 paths.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>

namespace ponder::cpu {

// Whether this CPU runs the kernels' AVX-512 paths (F, BW, VL and DQ), checked at run time.
inline bool has_avx512() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
}

// Cephes' expf polynomial: about 1 ulp on the reduced range; inputs are clamped to
// [-87, 88], so it never returns 0 or inf.
__attribute__((always_inline)) inline float fast_exp(float x) {
  x = std::min(std::max(x, -87.0f), 88.0f);
  // n = x / ln 2 rounded to nearest by the 1.5 * 2^23 trick: std::floor would not vectorize
  // (GCC keeps it scalar unless -fno-trapping-math).
  const float n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
  float r = x - n * 0.693359375f;
  r = r + n * 2.12194440e-4f;
  float y = 1.9875691500e-4f;
  y = y * r + 1.3981999507e-3f;
  y = y * r + 8.3334519073e-3f;
  y = y * r + 4.1665795894e-2f;
  y = y * r + 1.6666665459e-1f;
  y = y * r + 5.0000001201e-1f;
  y = y * r * r + r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return y * scale;
}

}  // namespace ponder::cpu
