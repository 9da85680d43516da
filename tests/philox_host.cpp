// Host build of csrc/include/gfn_fast/philox.cuh for tests/test_philox.py: reads lines
// "seed offset row col" (decimal uint64) on stdin and prints, per line, the 4 block words and the
// float32 bit patterns of uniform(w0), exponential(w0), gumbel(w0) and normal_pair(w0, w1).
#include <cinttypes>
#include <cstdio>
#include <cstring>

#include "gfn_fast/philox.cuh"

static uint32_t bits_of(float x) {
  uint32_t b;
  std::memcpy(&b, &x, sizeof b);
  return b;
}

int main() {
  uint64_t seed, offset, row, col;
  while (std::scanf("%" SCNu64 " %" SCNu64 " %" SCNu64 " %" SCNu64, &seed, &offset, &row, &col) == 4) {
    const gfn_fast::Words4 b = gfn_fast::philox_at(gfn_fast::philox_key(seed), offset, static_cast<uint32_t>(row),
                                                   static_cast<uint32_t>(col));
    float n0, n1;
    gfn_fast::normal_pair_from_bits(b.w[0], b.w[1], n0, n1);
    std::printf("%u %u %u %u %u %u %u %u %u\n", b.w[0], b.w[1], b.w[2], b.w[3],
                bits_of(gfn_fast::uniform_from_bits(b.w[0])), bits_of(gfn_fast::exponential_from_bits(b.w[0])),
                bits_of(gfn_fast::gumbel_from_bits(b.w[0])), bits_of(n0), bits_of(n1));
  }
  return 0;
}
