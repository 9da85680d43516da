// Philox4x32-10 counter-based RNG and its bits -> float transforms, for host and device.
//
// The contract (key/counter layout, which words feed what, float resolution) is documented in
// gfn_fast/reference/_philox.py and must stay bit-identical to it:
//   key     = (seed mod 2^32, seed >> 32)
//   counter = (col, row, offset mod 2^32, offset >> 32)
// Float transforms use the _rn intrinsics on the device so nvcc never contracts them into FMAs
// (the CPU backends round every multiply and add separately). The functions are also compiled
// for the host, which is how the tests check this header against the reference without a GPU.
#pragma once

#include <cstdint>
#include <math.h>

#if defined(__CUDACC__)
#define GFN_FAST_HD __host__ __device__ __forceinline__
#else
#define GFN_FAST_HD inline
#endif

namespace gfn_fast {

constexpr uint32_t kPhiloxM0 = 0xD2511F53u;
constexpr uint32_t kPhiloxM1 = 0xCD9E8D57u;
constexpr uint32_t kPhiloxW0 = 0x9E3779B9u;
constexpr uint32_t kPhiloxW1 = 0xBB67AE85u;
// Counter column of the per-row epsilon coin of the sampler (never a column pair index).
constexpr uint32_t kCoinCol = 0xFFFFFFFFu;

struct PhiloxKey {
  uint32_t k0, k1;
};

struct Words4 {
  uint32_t w[4];
};

GFN_FAST_HD PhiloxKey philox_key(uint64_t seed) {
  return PhiloxKey{static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32)};
}

GFN_FAST_HD uint32_t mulhi32(uint32_t a, uint32_t b) {
#if defined(__CUDA_ARCH__)
  return __umulhi(a, b);
#else
  return static_cast<uint32_t>((static_cast<uint64_t>(a) * b) >> 32);
#endif
}

// One block: key `key`, counter (c0, c1, c2, c3).
GFN_FAST_HD Words4 philox4x32(PhiloxKey key, uint32_t c0, uint32_t c1, uint32_t c2, uint32_t c3) {
  uint32_t k0 = key.k0, k1 = key.k1;
#pragma unroll
  for (int round = 0; round < 10; ++round) {
    const uint32_t hi0 = mulhi32(c0, kPhiloxM0), lo0 = c0 * kPhiloxM0;
    const uint32_t hi1 = mulhi32(c2, kPhiloxM1), lo1 = c2 * kPhiloxM1;
    const uint32_t n0 = hi1 ^ c1 ^ k0, n2 = hi0 ^ c3 ^ k1;
    c0 = n0;
    c1 = lo1;
    c2 = n2;
    c3 = lo0;
    k0 += kPhiloxW0;
    k1 += kPhiloxW1;
  }
  return Words4{{c0, c1, c2, c3}};
}

// Block for (row, col) at a 64-bit offset.
GFN_FAST_HD Words4 philox_at(PhiloxKey key, uint64_t offset, uint32_t row, uint32_t col) {
  return philox4x32(key, col, row, static_cast<uint32_t>(offset), static_cast<uint32_t>(offset >> 32));
}

GFN_FAST_HD float fmul_rn(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fmul_rn(a, b);
#else
  return a * b;
#endif
}

GFN_FAST_HD float fadd_rn(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fadd_rn(a, b);
#else
  return a + b;
#endif
}

GFN_FAST_HD float fdiv_rn(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fdiv_rn(a, b);
#else
  return a / b;
#endif
}

GFN_FAST_HD float u32_to_float(uint32_t x) {
#if defined(__CUDA_ARCH__)
  return __uint2float_rn(x);
#else
  return static_cast<float>(x);
#endif
}

// float32 (2 (x >> 9) + 1) * 2^-24 in [2^-24, 1 - 2^-24] (exact).
GFN_FAST_HD float uniform_from_bits(uint32_t bits) {
  return fmul_rn(u32_to_float((bits >> 9) * 2u + 1u), 5.9604644775390625e-08f);
}

// float32(x) * 2^-32 + 2^-33 in (0, 1].
GFN_FAST_HD float open_unit_from_bits(uint32_t bits) {
  return fadd_rn(fmul_rn(u32_to_float(bits), 2.3283064365386963e-10f), 1.1641532182693481e-10f);
}

// log(1 - v) for v in [0, 1): log(w) * t / (w - 1), t = -v, w = 1 + t.
GFN_FAST_HD float log1p_neg(float v) {
  const float t = -v;
  const float w = fadd_rn(1.0f, t);
  if (w == 1.0f) return t;
  return fdiv_rn(fmul_rn(logf(w), t), fadd_rn(w, -1.0f));
}

GFN_FAST_HD float exponential_from_bits(uint32_t bits) {
  const float v = fminf(open_unit_from_bits(bits), 0.99999994039535522f);
  return -log1p_neg(v);
}

GFN_FAST_HD float gumbel_from_bits(uint32_t bits) { return -logf(exponential_from_bits(bits)); }

GFN_FAST_HD void normal_pair_from_bits(uint32_t bits0, uint32_t bits1, float& n0, float& n1) {
  const float u1 = open_unit_from_bits(bits0);
  const float radius = sqrtf(fmul_rn(-2.0f, logf(u1)));
  const float theta = fmul_rn(uniform_from_bits(bits1), 6.2831854820251465f);
  n0 = fmul_rn(radius, cosf(theta));
  n1 = fmul_rn(radius, sinf(theta));
}

// The (cos, sin) Box-Muller normals of words (0, 1) of `block`, or of words (2, 3) when `odd`.
GFN_FAST_HD void normal_pair_at(PhiloxKey key, uint64_t offset, uint64_t block, bool odd, float& n0,
                                float& n1) {
  const Words4 b = philox_at(key, offset, static_cast<uint32_t>(block >> 32), static_cast<uint32_t>(block));
  normal_pair_from_bits(b.w[odd ? 2 : 0], b.w[odd ? 3 : 1], n0, n1);
}

// Standard normal `index` of the flat normal stream: output index & 3 of block index >> 2, the
// outputs of a block being (cos, sin) of words (0, 1) then (cos, sin) of words (2, 3).
GFN_FAST_HD float normal_at(PhiloxKey key, uint64_t offset, uint64_t index) {
  float n0, n1;
  normal_pair_at(key, offset, index >> 2, (index & 2) != 0, n0, n1);
  return (index & 1) ? n1 : n0;
}

}  // namespace gfn_fast
