// Philox4x32-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3", SC'11), the
// counter-based generator of Random123 and cuRAND. Shared by host C++ and CUDA so that both
// draw bit-identical uniforms: a draw is a pure function of (key, counter), never of a stream
// position, which is what makes sampling independent of batch composition.
#pragma once

#include <cstdint>

#ifdef __CUDACC__
#define PONDER_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define PONDER_HOST_DEVICE inline
#endif

namespace ponder {

struct Philox4x32Result {
  uint32_t v[4];
};

// counter: 4 x 32 bits, key: 2 x 32 bits; ten rounds, as in Random123's philox4x32_R(10, ...).
PONDER_HOST_DEVICE Philox4x32Result philox4x32_10(uint32_t c0, uint32_t c1, uint32_t c2,
                                                  uint32_t c3, uint32_t k0, uint32_t k1) {
  constexpr uint32_t kMul0 = 0xD2511F53u, kMul1 = 0xCD9E8D57u;
  constexpr uint32_t kWeyl0 = 0x9E3779B9u, kWeyl1 = 0xBB67AE85u;
  for (int round = 0; round < 10; ++round) {
    const uint64_t p0 = static_cast<uint64_t>(kMul0) * c0;
    const uint64_t p1 = static_cast<uint64_t>(kMul1) * c2;
    const uint32_t hi0 = static_cast<uint32_t>(p0 >> 32), lo0 = static_cast<uint32_t>(p0);
    const uint32_t hi1 = static_cast<uint32_t>(p1 >> 32), lo1 = static_cast<uint32_t>(p1);
    c0 = hi1 ^ c1 ^ k0;
    c1 = lo1;
    c2 = hi0 ^ c3 ^ k1;
    c3 = lo0;
    k0 += kWeyl0;
    k1 += kWeyl1;
  }
  return {{c0, c1, c2, c3}};
}

// One uniform double in [0, 1) from the top 53 bits of (v[0], v[1]) of Philox4x32-10 with
// counter = (seq_id lo, seq_id hi, position lo, position hi) and key = (seed lo, seed hi).
PONDER_HOST_DEVICE double philox_uniform(uint64_t seed, uint64_t seq_id, uint64_t position) {
  const Philox4x32Result r = philox4x32_10(
      static_cast<uint32_t>(seq_id), static_cast<uint32_t>(seq_id >> 32),
      static_cast<uint32_t>(position), static_cast<uint32_t>(position >> 32),
      static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32));
  const uint64_t bits = ((static_cast<uint64_t>(r.v[0]) << 32) | r.v[1]) >> 11;
  return static_cast<double>(bits) * (1.0 / 9007199254740992.0);  // 2^-53
}

}  // namespace ponder
