// Action-sampling kernels: masked, logit-scaled, epsilon-exploring sampling in one pass, the
// log-probability of given actions, and its backward.
//
// One warp per (row, chunk of columns); lanes stride over column pairs (sampling: one Philox
// block (row, pair) feeds both columns, words 0/1 the even one and 2/3 the odd one) or columns
// (log-prob). Each lane keeps a streaming max / sum of exponentials / entropy tilt and the two
// argmaxes (Gumbel keys of the policy branch, raw uint32 keys of the uniform branch), then the
// warp merges them with the rules of gfn_fast/reference/sampling.py: NaN keys count as -inf,
// ties go to the smallest index, NaN logits propagate into the sums. The scaled logit
// clip(scale * x) * inv_temperature and the key z + G are rounded operation by operation
// (_rn intrinsics, no FMA contraction) so they match the CPU and Triton backends bit for bit
// up to the last bits of log/exp. Rows split over several warps (gridDim.y > 1) write partials
// that gfn_fast.reference.sampling.finish_partials combines.
#pragma once

#include <math.h>

#include "gfn_fast/common.cuh"
#include "gfn_fast/philox.cuh"
#include "gfn_fast/sampling.h"

namespace gfn_fast {
namespace sampling_detail {

template <typename acc_t> __device__ __forceinline__ acc_t mul_rn(acc_t a, acc_t b);
template <> __device__ __forceinline__ float mul_rn<float>(float a, float b) { return __fmul_rn(a, b); }
template <> __device__ __forceinline__ double mul_rn<double>(double a, double b) { return __dmul_rn(a, b); }
template <typename acc_t> __device__ __forceinline__ acc_t add_rn(acc_t a, acc_t b);
template <> __device__ __forceinline__ float add_rn<float>(float a, float b) { return __fadd_rn(a, b); }
template <> __device__ __forceinline__ double add_rn<double>(double a, double b) { return __dadd_rn(a, b); }

template <typename acc_t> __device__ __forceinline__ acc_t ninf() { return -static_cast<acc_t>(INFINITY); }

__device__ __forceinline__ bool allowed_at(const SamplingRows& p, int64_t r, int64_t a) {
  if (!p.mask) return true;
  if (p.packed) return ((p.mask[r * p.stride_mr + (a >> 3) * p.stride_ma] >> (a & 7)) & 1) != 0;
  return p.mask[r * p.stride_mr + a * p.stride_ma] != 0;
}

template <typename acc_t>
__device__ __forceinline__ acc_t row_value(const void* ptr, int64_t stride, int64_t r, acc_t fallback) {
  return ptr ? static_cast<const acc_t*>(ptr)[r * stride] : fallback;
}

template <typename acc_t>
struct RowParams {
  acc_t scale, inv_t, lo, hi;
};

template <typename acc_t>
__device__ __forceinline__ RowParams<acc_t> row_params(const SamplingRows& p, int64_t r) {
  return RowParams<acc_t>{row_value<acc_t>(p.scale, p.stride_scale, r, acc_t(1)),
                          row_value<acc_t>(p.inv_temperature, p.stride_inv_t, r, acc_t(1)),
                          static_cast<acc_t>(p.clip_lo), static_cast<acc_t>(p.clip_hi)};
}

template <typename scalar_t, typename acc_t>
__device__ __forceinline__ acc_t load_x(const SamplingRows& p, int64_t r, int64_t a) {
  return to_acc<acc_t>(static_cast<const scalar_t*>(p.logits)[r * p.stride_r + a * p.stride_a]);
}

// clip(scale * x) * inv_t, keeping NaN.
template <typename acc_t>
__device__ __forceinline__ acc_t scaled(const RowParams<acc_t>& q, acc_t x) {
  acc_t y = mul_rn(q.scale, x);
  y = y < q.lo ? q.lo : (y > q.hi ? q.hi : y);
  return mul_rn(y, q.inv_t);
}

template <typename acc_t>
struct Lse {
  acc_t m, s, t;  // max (NaN-free), sum of exp(z - m), sum of exp(z - m) (z - m)
};

template <typename acc_t>
__device__ __forceinline__ void lse_push(Lse<acc_t>& st, acc_t z) {
  if (z > st.m) {
    if (st.m != ninf<acc_t>()) {
      const acc_t alpha = exp(st.m - z);
      st.t = alpha * (st.t + (st.m - z) * st.s);
      st.s = alpha * st.s;
    }
    st.s += acc_t(1);
    st.m = z;
  } else if (z != ninf<acc_t>()) {
    const acc_t d = z - st.m;
    const acc_t e = exp(d);
    st.s += e;
    st.t += e * d;
  }
}

template <typename acc_t>
__device__ __forceinline__ Lse<acc_t> lse_merge(const Lse<acc_t>& a, const Lse<acc_t>& b) {
  const acc_t top = a.m > b.m ? a.m : b.m;
  const bool a_live = a.m != ninf<acc_t>(), b_live = b.m != ninf<acc_t>();
  const acc_t wa = a_live ? exp(a.m - top) : acc_t(0);
  const acc_t wb = b_live ? exp(b.m - top) : acc_t(0);
  Lse<acc_t> out;
  out.m = top;
  out.s = wa * a.s + wb * b.s;
  out.t = (a_live ? wa * (a.t + (a.m - top) * a.s) : acc_t(0)) + (b_live ? wb * (b.t + (b.m - top) * b.s) : acc_t(0));
  return out;
}

template <typename key_t, typename acc_t>
struct Arg {
  key_t key;
  int64_t idx;  // == width: no candidate
  acc_t z;
};

template <typename key_t, typename acc_t>
__device__ __forceinline__ void arg_take(Arg<key_t, acc_t>& cur, const Arg<key_t, acc_t>& other, int64_t width) {
  if (other.idx < width &&
      (cur.idx >= width || other.key > cur.key || (other.key == cur.key && other.idx < cur.idx))) {
    cur = other;
  }
}

template <typename T>
__device__ __forceinline__ T shfl(T v, int offset) {
  return __shfl_xor_sync(0xffffffffu, v, offset);
}

template <typename acc_t>
__device__ __forceinline__ Lse<acc_t> shfl_lse(const Lse<acc_t>& st, int offset) {
  return Lse<acc_t>{shfl(st.m, offset), shfl(st.s, offset), shfl(st.t, offset)};
}

template <typename key_t, typename acc_t>
__device__ __forceinline__ Arg<key_t, acc_t> shfl_arg(const Arg<key_t, acc_t>& a, int offset) {
  return Arg<key_t, acc_t>{shfl(a.key, offset), shfl(a.idx, offset), shfl(a.z, offset)};
}

template <typename acc_t>
__device__ __forceinline__ acc_t log_mixture(acc_t log_pi, acc_t eps, int64_t count) {
  const acc_t a = eps < acc_t(1) ? log1p(-eps) + log_pi : ninf<acc_t>();
  const acc_t b = eps > acc_t(0) ? log(eps) - log(static_cast<acc_t>(count)) : ninf<acc_t>();
  const acc_t high = a > b ? a : b;
  const acc_t low = a > b ? b : a;
  return low == ninf<acc_t>() ? high : high + log1p(exp(low - high));
}

}  // namespace sampling_detail

template <typename scalar_t, typename acc_t>
__global__ void sample_actions_kernel(SamplingRows p, SamplingOut o) {
  using namespace sampling_detail;
  const int lane = threadIdx.x & 31;
  const int64_t r = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) >> 5;
  if (r >= p.rows) return;  // uniform per warp
  const int64_t split = blockIdx.y;
  const RowParams<acc_t> q = row_params<acc_t>(p, r);
  const PhiloxKey key = philox_key(o.seed);
  const int64_t pairs_total = (p.width + 1) / 2;
  const int64_t pair_lo = split * p.chunk;
  const int64_t pair_hi = min(pair_lo + p.chunk, pairs_total);
  Lse<acc_t> st{ninf<acc_t>(), acc_t(0), acc_t(0)};
  Arg<acc_t, acc_t> g{ninf<acc_t>(), p.width, acc_t(0)};
  Arg<int64_t, acc_t> u{int64_t(-1), p.width, acc_t(0)};
  int64_t count = 0;
  for (int64_t pair = pair_lo + lane; pair < pair_hi; pair += 32) {
    const Words4 w = philox_at(key, o.offset, static_cast<uint32_t>(r), static_cast<uint32_t>(pair));
#pragma unroll
    for (int j = 0; j < 2; ++j) {
      const int64_t a = 2 * pair + j;
      if (a >= p.width || !allowed_at(p, r, a)) continue;
      ++count;
      const acc_t z = scaled(q, load_x<scalar_t, acc_t>(p, r, a));
      lse_push(st, z);
      acc_t gk = add_rn(z, static_cast<acc_t>(gumbel_from_bits(w.w[2 * j])));
      if (gk != gk) gk = ninf<acc_t>();
      if (g.idx >= p.width || gk > g.key) g = Arg<acc_t, acc_t>{gk, a, z};
      const int64_t uk = static_cast<int64_t>(w.w[2 * j + 1]);
      if (u.idx >= p.width || uk > u.key) u = Arg<int64_t, acc_t>{uk, a, z};
    }
  }
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) {
    const Lse<acc_t> other = shfl_lse(st, offset);
    const Arg<acc_t, acc_t> other_g = shfl_arg(g, offset);
    const Arg<int64_t, acc_t> other_u = shfl_arg(u, offset);
    count += shfl(count, offset);
    st = lse_merge(st, other);
    arg_take(g, other_g, p.width);
    arg_take(u, other_u, p.width);
  }
  if (lane != 0) return;
  const acc_t eps = row_value<acc_t>(p.epsilon, p.stride_eps, r, acc_t(0));
  const Words4 coin = philox_at(key, o.offset, static_cast<uint32_t>(r), kCoinCol);
  const bool explore = static_cast<acc_t>(fmul_rn(u32_to_float(coin.w[0] >> 8), 5.9604644775390625e-08f)) < eps;
  if (p.splits > 1) {
    const int64_t plane = p.rows * p.splits, base = r * p.splits + split;
    acc_t* f = static_cast<acc_t*>(o.part_f);
    f[base] = st.m;
    f[plane + base] = st.s;
    f[2 * plane + base] = st.t;
    f[3 * plane + base] = g.key;
    f[4 * plane + base] = g.z;
    f[5 * plane + base] = u.z;
    o.part_i[base] = g.idx;
    o.part_i[plane + base] = u.key;
    o.part_i[2 * plane + base] = u.idx;
    o.part_i[3 * plane + base] = count;
    o.part_i[4 * plane + base] = explore ? 1 : 0;
    return;
  }
  const acc_t lse = st.m + log(st.s);
  int64_t chosen = explore ? u.idx : g.idx;
  const acc_t z_a = explore ? u.z : g.z;
  if (chosen >= p.width) chosen = 0;
  const acc_t log_pi = z_a - lse;
  o.actions[r] = chosen;
  static_cast<acc_t*>(o.log_pi)[r] = log_pi;
  static_cast<acc_t*>(o.lse)[r] = lse;
  if (o.log_mu) static_cast<acc_t*>(o.log_mu)[r] = log_mixture(log_pi, eps, count);
  if (o.entropy) static_cast<acc_t*>(o.entropy)[r] = log(st.s) - st.t / st.s;
}

template <typename scalar_t, typename acc_t>
__global__ void action_log_prob_kernel(SamplingRows p, LogProbOut o) {
  using namespace sampling_detail;
  const int lane = threadIdx.x & 31;
  const int64_t r = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) >> 5;
  if (r >= p.rows) return;
  const int64_t split = blockIdx.y;
  const RowParams<acc_t> q = row_params<acc_t>(p, r);
  const int64_t col_lo = split * p.chunk;
  const int64_t col_hi = min(col_lo + p.chunk, p.width);
  Lse<acc_t> st{ninf<acc_t>(), acc_t(0), acc_t(0)};
  for (int64_t a = col_lo + lane; a < col_hi; a += 32) {
    if (!allowed_at(p, r, a)) continue;
    lse_push(st, scaled(q, load_x<scalar_t, acc_t>(p, r, a)));
  }
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) st = lse_merge(st, shfl_lse(st, offset));
  if (lane != 0) return;
  const int64_t a = min(max(o.actions[r], int64_t(0)), p.width - 1);
  const acc_t z_a = allowed_at(p, r, a) ? scaled(q, load_x<scalar_t, acc_t>(p, r, a)) : ninf<acc_t>();
  if (p.splits > 1) {
    const int64_t plane = p.rows * p.splits, base = r * p.splits + split;
    acc_t* part = static_cast<acc_t*>(o.part);
    part[base] = st.m;
    part[plane + base] = st.s;
    part[2 * plane + base] = z_a;
    return;
  }
  const acc_t lse = st.m + log(st.s);
  static_cast<acc_t*>(o.lse)[r] = lse;
  static_cast<acc_t*>(o.log_pi)[r] = z_a - lse;
}

template <typename scalar_t, typename acc_t>
__global__ void action_log_prob_backward_kernel(SamplingRows p, LogProbGrad gr) {
  using namespace sampling_detail;
  const int lane = threadIdx.x & 31;
  const int64_t r = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) >> 5;
  if (r >= p.rows) return;
  const int64_t split = blockIdx.y;
  const RowParams<acc_t> q = row_params<acc_t>(p, r);
  const acc_t g = static_cast<const acc_t*>(gr.grad)[r];
  const acc_t lse = static_cast<const acc_t*>(gr.lse)[r];
  const int64_t action = gr.actions[r];
  const int64_t col_lo = split * p.chunk;
  const int64_t col_hi = min(col_lo + p.chunk, p.width);
  scalar_t* grad_logits = static_cast<scalar_t*>(gr.grad_logits);
  acc_t acc = 0;
  for (int64_t a = col_lo + lane; a < col_hi; a += 32) {
    acc_t value = 0;
    if (allowed_at(p, r, a)) {
      const acc_t x = load_x<scalar_t, acc_t>(p, r, a);
      const acc_t y = mul_rn(q.scale, x);
      if (y >= q.lo && y <= q.hi) {
        const acc_t z = scaled(q, x);
        value = g * q.inv_t * ((a == action ? acc_t(1) : acc_t(0)) - exp(z - lse));
        if (value != acc_t(0)) acc += value * x;  // 0 * -inf would be NaN (cpu/sampling.py)
        value *= q.scale;
      }
    }
    if (grad_logits) grad_logits[r * gr.stride_gr + a * gr.stride_ga] = from_acc<scalar_t>(value);
  }
  if (!gr.grad_scale) return;
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) acc += shfl(acc, offset);
  if (lane == 0) static_cast<acc_t*>(gr.grad_scale)[r * p.splits + split] = acc;
}

}  // namespace gfn_fast
