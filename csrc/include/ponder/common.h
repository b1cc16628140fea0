// Types shared by the kernels and the core. Framework-free: no torch, no nanobind.
#pragma once

#include <cstdint>
#include <cstring>

namespace ponder {

enum class DType : int32_t { kFloat32 = 0, kBFloat16 = 1, kFloat16 = 2 };

inline int64_t dtype_size(DType dtype) { return dtype == DType::kFloat32 ? 4 : 2; }

// Kernels report failure instead of throwing so that they can be called from any host code.
// message points at a static string (or, for CUDA, at cudaGetErrorString's).
struct Status {
  int32_t code = 0;
  const char* message = "";
  bool ok() const { return code == 0; }
  static Status success() { return {}; }
  static Status error(const char* message) { return {1, message}; }
};

#if !defined(__CUDACC__)  // host-side conversions for the CPU kernels
// bfloat16 as raw bits; conversions round to nearest even like torch.
struct bf16 {
  uint16_t bits;
};

inline float to_f32(float x) { return x; }
inline float to_f32(bf16 x) {
  uint32_t u = static_cast<uint32_t>(x.bits) << 16;
  float f;
  std::memcpy(&f, &u, sizeof(f));
  return f;
}
inline float to_f32(_Float16 x) { return static_cast<float>(x); }

template <typename T>
inline T from_f32(float x);
template <>
inline float from_f32<float>(float x) { return x; }
template <>
inline bf16 from_f32<bf16>(float x) {
  uint32_t u;
  std::memcpy(&u, &x, sizeof(u));
  // NaN stays a (quiet) NaN; everything else rounds to nearest even. A select, not a branch,
  // so that loops over it vectorize.
  const uint32_t rounded = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
  const uint32_t nan = (u >> 16) | 0x40u;
  return bf16{static_cast<uint16_t>((u & 0x7fffffffu) > 0x7f800000u ? nan : rounded)};
}
template <>
inline _Float16 from_f32<_Float16>(float x) { return static_cast<_Float16>(x); }
#endif

}  // namespace ponder
