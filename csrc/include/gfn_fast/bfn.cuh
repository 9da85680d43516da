// Bayesian Flow Network kernels: continuous/discretised/discrete losses, outputs and updates.
//
// Mappings: per-sample losses use one block per sample whose threads stride over its D elements
// and reduce in shared memory (deterministic, no atomics); elementwise ops use a grid-stride
// loop over B*D elements; discrete ops give each thread one (b, d) row of K classes. The math
// mirrors gfn_fast/cpu/bfn.py (Numba) line by line; see that file for the derivations.
#pragma once

#include "gfn_fast/bfn.h"
#include "gfn_fast/common.cuh"
#include "gfn_fast/philox.cuh"

namespace gfn_fast {
namespace bfn {

constexpr int kThreads = 256;
constexpr double kSigmaMin = 1e-3, kSigmaMax = 10.0;
constexpr double kInvSqrt2 = 0.70710678118654752440;
constexpr double kInvSqrt2Pi = 0.39894228040143267794;

__device__ __forceinline__ int64_t global_thread() { return int64_t(blockIdx.x) * blockDim.x + threadIdx.x; }
__device__ __forceinline__ int64_t grid_threads() { return int64_t(gridDim.x) * blockDim.x; }

// Sum over the block (blockDim.x == kThreads); the result is valid in thread 0.
template <typename acc_t>
__device__ __forceinline__ acc_t block_sum(acc_t value) {
  __shared__ acc_t partial[kThreads / 32];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) value += __shfl_xor_sync(0xffffffffu, value, offset);
  if (lane == 0) partial[warp] = value;
  __syncthreads();
  value = threadIdx.x < kThreads / 32 ? partial[threadIdx.x] : acc_t(0);
  if (warp == 0) {
#pragma unroll
    for (int offset = 16; offset > 0; offset >>= 1) value += __shfl_xor_sync(0xffffffffu, value, offset);
  }
  return value;
}

template <typename acc_t>
__device__ __forceinline__ acc_t clamp_to(acc_t v, acc_t lo, acc_t hi) {
  return v < lo ? lo : (v > hi ? hi : v);
}

// (a, c) with x_hat = a mu - c eps_hat; both 0 below t_min, where x_hat is 0 (`linear_x_hat`).
template <typename acc_t>
__device__ __forceinline__ void output_coefficients(acc_t t, acc_t log_s, acc_t t_min, acc_t& a, acc_t& c) {
  if (t < t_min) {
    a = acc_t(0);
    c = acc_t(0);
    return;
  }
  const acc_t g = -expm1(acc_t(2) * t * log_s);
  a = acc_t(1) / g;
  c = sqrt(exp(acc_t(2) * t * log_s) / g);
}

// w(t) = weight_scale * sigma_1^(-2t) (weight_scale folded on the host from sigma_1, n_steps).
template <typename acc_t>
__device__ __forceinline__ acc_t loss_weight(const BfnArgs& p, acc_t t) {
  return acc_t(p.weight_scale) * exp(acc_t(-2) * t * acc_t(p.log_sigma_1));
}

// a mu - c eps_hat, exactly 0 below t_min (a = 0 only there: a = 1 / gamma >= 1 otherwise)
// whatever eps_hat holds: 0 * an inf or NaN network output would be NaN, not the spec's 0.
template <typename acc_t>
__device__ __forceinline__ acc_t linear_x_hat(acc_t a, acc_t c, acc_t mu, acc_t eps_hat) {
  return a == acc_t(0) ? acc_t(0) : a * mu - c * eps_hat;
}

template <typename scalar_t, typename acc_t>
__device__ __forceinline__ acc_t continuous_x_hat(const BfnArgs& p, int64_t i, acc_t a, acc_t c) {
  const acc_t x_hat = linear_x_hat(a, c, to_acc<acc_t>(static_cast<const scalar_t*>(p.mu)[i]),
                                   to_acc<acc_t>(static_cast<const scalar_t*>(p.eps)[i]));
  return p.clamp ? clamp_to(x_hat, acc_t(p.x_min), acc_t(p.x_max)) : x_hat;
}

template <typename scalar_t, typename acc_t>
__global__ void continuous_output_kernel(BfnArgs p) {
  const acc_t* t = static_cast<const acc_t*>(p.t);
  scalar_t* out = static_cast<scalar_t*>(p.out);
  const int64_t n = p.batch * p.dims;
  for (int64_t i = global_thread(); i < n; i += grid_threads()) {
    acc_t a, c;
    output_coefficients(t[i / p.dims], acc_t(p.log_sigma_1), acc_t(p.t_min), a, c);
    out[i] = from_acc<scalar_t>(continuous_x_hat<scalar_t, acc_t>(p, i, a, c));
  }
}

// out[b] = loss_b; when out2 is given, also out2[b, d] = d loss_b / d eps_hat[b, d] (acc_t,
// zero where x_hat is clamped away), so that the backward is one multiply by the upstream
// gradient instead of a second pass over x, mu and eps_hat.
template <typename scalar_t, typename acc_t>
__global__ void continuous_loss_forward_kernel(BfnArgs p) {
  const int64_t b = blockIdx.x;
  const acc_t t = static_cast<const acc_t*>(p.t)[b];
  const scalar_t* x = static_cast<const scalar_t*>(p.x);
  const scalar_t* mu = static_cast<const scalar_t*>(p.mu);
  const scalar_t* eps = static_cast<const scalar_t*>(p.eps);
  acc_t* unit = static_cast<acc_t*>(p.out2);
  acc_t a, c;
  output_coefficients(t, acc_t(p.log_sigma_1), acc_t(p.t_min), a, c);
  const acc_t weight = loss_weight(p, t);
  const acc_t unit_scale = acc_t(2) * c * weight;
  const acc_t lo = acc_t(p.x_min), hi = acc_t(p.x_max);
  acc_t total = 0;
  for (int64_t d = threadIdx.x; d < p.dims; d += blockDim.x) {
    const int64_t i = b * p.dims + d;
    const acc_t raw = linear_x_hat(a, c, to_acc<acc_t>(mu[i]), to_acc<acc_t>(eps[i]));
    const bool outside = p.clamp && (raw < lo || raw > hi);
    const acc_t diff = to_acc<acc_t>(x[i]) - (p.clamp ? clamp_to(raw, lo, hi) : raw);
    total += diff * diff;
    if (unit != nullptr) unit[i] = outside ? acc_t(0) : unit_scale * diff;
  }
  total = block_sum(total);
  if (threadIdx.x == 0) static_cast<acc_t*>(p.out)[b] = weight * total;
}

template <typename scalar_t, typename acc_t>
__global__ void continuous_update_kernel(BfnArgs p) {
  const acc_t* alpha = static_cast<const acc_t*>(p.alpha);
  const acc_t* rho = static_cast<const acc_t*>(p.rho);
  const scalar_t* mu = static_cast<const scalar_t*>(p.mu);
  const scalar_t* y = static_cast<const scalar_t*>(p.eps);
  scalar_t* out = static_cast<scalar_t*>(p.out);
  const int64_t n = p.batch * p.dims;
  for (int64_t i = global_thread(); i < n; i += grid_threads()) {
    const int64_t b = i / p.dims, d = i - b * p.dims;
    const acc_t a = alpha[b];
    const acc_t m = to_acc<acc_t>(mu[i]);
    const acc_t r = rho[b * p.stride_rho_b + d * p.stride_rho_d];
    out[i] = from_acc<scalar_t>(m + a / (r + a) * (to_acc<acc_t>(y[i]) - m));
  }
}

template <typename acc_t>
__device__ __forceinline__ acc_t phi_cdf(acc_t z) {
  return acc_t(0.5) * erfc(-z * acc_t(kInvSqrt2));
}

template <typename acc_t>
__device__ __forceinline__ acc_t discretised_sigma(acc_t log_sigma) {
  return clamp_to(exp(log_sigma), acc_t(kSigmaMin), acc_t(kSigmaMax));
}

// x_hat = k_c(K) - (2/K) sum_{j<K} Phi((e_j - mu)/sigma), e_j = -1 + 2j/K; with
// (2/K) sum phi(z_j) and (2/K) sum phi(z_j) z_j when want_grad.
template <typename acc_t>
__device__ __forceinline__ acc_t discretised_mean(acc_t mu, acc_t sigma, int64_t bins, bool want_grad,
                                                  acc_t& pdf_sum, acc_t& pdf_z_sum) {
  const acc_t width = acc_t(2) / acc_t(bins);
  acc_t cdf_sum = 0;
  pdf_sum = 0;
  pdf_z_sum = 0;
  for (int64_t j = 1; j < bins; ++j) {
    const acc_t z = (acc_t(j) * width - acc_t(1) - mu) / sigma;
    cdf_sum += phi_cdf(z);
    if (want_grad) {
      const acc_t pdf = acc_t(kInvSqrt2Pi) * exp(acc_t(-0.5) * z * z);
      pdf_sum += pdf;
      pdf_z_sum += pdf * z;
    }
  }
  pdf_sum *= width;
  pdf_z_sum *= width;
  return acc_t(1) - acc_t(0.5) * width - width * cdf_sum;
}

template <typename scalar_t, typename acc_t>
__global__ void discretised_loss_forward_kernel(BfnArgs p) {
  const int64_t b = blockIdx.x;
  const scalar_t* x = static_cast<const scalar_t*>(p.x);
  const scalar_t* mu = static_cast<const scalar_t*>(p.mu);
  const scalar_t* log_sigma = static_cast<const scalar_t*>(p.eps);
  acc_t total = 0, unused_pdf, unused_pdf_z;
  for (int64_t d = threadIdx.x; d < p.dims; d += blockDim.x) {
    const int64_t i = b * p.dims + d;
    const acc_t x_hat = discretised_mean(to_acc<acc_t>(mu[i]), discretised_sigma(to_acc<acc_t>(log_sigma[i])),
                                         p.bins, false, unused_pdf, unused_pdf_z);
    const acc_t diff = to_acc<acc_t>(x[i]) - x_hat;
    total += diff * diff;
  }
  total = block_sum(total);
  if (threadIdx.x == 0) static_cast<acc_t*>(p.out)[b] = loss_weight(p, static_cast<const acc_t*>(p.t)[b]) * total;
}

template <typename scalar_t, typename acc_t>
__global__ void discretised_loss_backward_kernel(BfnArgs p) {
  const acc_t* t = static_cast<const acc_t*>(p.t);
  const acc_t* grad = static_cast<const acc_t*>(p.grad);
  const scalar_t* x = static_cast<const scalar_t*>(p.x);
  const scalar_t* mu = static_cast<const scalar_t*>(p.mu);
  const scalar_t* log_sigma = static_cast<const scalar_t*>(p.eps);
  scalar_t* grad_mu = static_cast<scalar_t*>(p.out);
  scalar_t* grad_log_sigma = static_cast<scalar_t*>(p.out2);
  const int64_t n = p.batch * p.dims;
  for (int64_t i = global_thread(); i < n; i += grid_threads()) {
    const int64_t b = i / p.dims;
    const acc_t scale = acc_t(2) * grad[b] * loss_weight(p, t[b]);
    const acc_t raw_sigma = exp(to_acc<acc_t>(log_sigma[i]));
    const acc_t sigma = clamp_to(raw_sigma, acc_t(kSigmaMin), acc_t(kSigmaMax));
    acc_t pdf_sum, pdf_z_sum;
    const acc_t x_hat = discretised_mean(to_acc<acc_t>(mu[i]), sigma, p.bins, true, pdf_sum, pdf_z_sum);
    const acc_t g = scale * (x_hat - to_acc<acc_t>(x[i]));
    const bool inside = raw_sigma >= acc_t(kSigmaMin) && raw_sigma <= acc_t(kSigmaMax);
    grad_mu[i] = from_acc<scalar_t>(g * pdf_sum / sigma);
    grad_log_sigma[i] = from_acc<scalar_t>(inside ? g * pdf_z_sum : acc_t(0));
  }
}

// Element (r, k) of the [N, K] bin probabilities; upper-tail differences right of the mean.
template <typename scalar_t, typename acc_t>
__global__ void discretised_probs_kernel(BfnArgs p) {
  const scalar_t* mu_x = static_cast<const scalar_t*>(p.mu);
  const scalar_t* log_sigma = static_cast<const scalar_t*>(p.eps);
  acc_t* out = static_cast<acc_t*>(p.out);
  const int64_t n = p.batch * p.bins;
  const acc_t width = acc_t(2) / acc_t(p.bins);
  for (int64_t i = global_thread(); i < n; i += grid_threads()) {
    const int64_t r = i / p.bins, k = i - r * p.bins;
    const acc_t mu = to_acc<acc_t>(mu_x[r]);
    const acc_t sigma = discretised_sigma(to_acc<acc_t>(log_sigma[r]));
    const acc_t z_left = (acc_t(k) * width - acc_t(1) - mu) / sigma;
    const acc_t z_right = (acc_t(k + 1) * width - acc_t(1) - mu) / sigma;
    const bool last = k == p.bins - 1;
    if (k > 0 && z_left > acc_t(0)) {
      out[i] = phi_cdf(-z_left) - (last ? acc_t(0) : phi_cdf(-z_right));
    } else {
      out[i] = (last ? acc_t(1) : phi_cdf(z_right)) - (k > 0 ? phi_cdf(z_left) : acc_t(0));
    }
  }
}

// (max, sum exp(l - max)) of one row of K logits.
template <typename scalar_t, typename acc_t>
__device__ __forceinline__ void softmax_stats(const scalar_t* row, int64_t classes, acc_t& m, acc_t& s) {
  m = -INFINITY;
  for (int64_t k = 0; k < classes; ++k) m = max(m, to_acc<acc_t>(row[k]));
  s = 0;
  for (int64_t k = 0; k < classes; ++k) s += exp(to_acc<acc_t>(row[k]) - m);
}

template <typename scalar_t, typename acc_t>
__global__ void discrete_loss_forward_kernel(BfnArgs p) {
  const int64_t b = blockIdx.x;
  const scalar_t* logits = static_cast<const scalar_t*>(p.logits);
  acc_t total = 0;
  for (int64_t d = threadIdx.x; d < p.dims; d += blockDim.x) {
    const int64_t row = b * p.dims + d;
    const scalar_t* l = logits + row * p.classes;
    acc_t m, s;
    softmax_stats(l, p.classes, m, s);
    // sum_k (p_k - e_x)^2 = sum_{k != x} p_k^2 + q^2, q = sum_{k != x} p_k: 1 - p_x, which
    // cancels when p_x nears 1, is never formed (gfn_fast/cpu/bfn.py)
    const int64_t target = p.index[row];
    acc_t q = 0, sum_sq = 0;
    for (int64_t k = 0; k < p.classes; ++k) {
      if (k == target) continue;
      const acc_t prob = exp(to_acc<acc_t>(l[k]) - m) / s;
      q += prob;
      sum_sq += prob * prob;
    }
    total += sum_sq + q * q;
  }
  total = block_sum(total);
  if (threadIdx.x == 0) {
    const acc_t t = static_cast<const acc_t*>(p.t)[b];
    static_cast<acc_t*>(p.out)[b] = acc_t(p.classes) * acc_t(p.beta_1) * t * total;
  }
}

template <typename scalar_t, typename acc_t>
__global__ void discrete_loss_backward_kernel(BfnArgs p) {
  const scalar_t* logits = static_cast<const scalar_t*>(p.logits);
  const acc_t* t = static_cast<const acc_t*>(p.t);
  const acc_t* grad = static_cast<const acc_t*>(p.grad);
  scalar_t* out = static_cast<scalar_t*>(p.out);
  const int64_t rows = p.batch * p.dims;
  for (int64_t row = global_thread(); row < rows; row += grid_threads()) {
    const int64_t b = row / p.dims;
    const scalar_t* l = logits + row * p.classes;
    acc_t m, s;
    softmax_stats(l, p.classes, m, s);
    const int64_t target = p.index[row];
    const acc_t c = acc_t(2) * acc_t(p.classes) * acc_t(p.beta_1) * t[b] * grad[b];
    // c p_j (r_j - sum_k r_k p_k), r = p - e_x, as p_j + q p_x - S (j != x) and -(S + q^2)
    // (j = x), S = sum_{k != x} p_k^2, q = sum_{k != x} p_k (gfn_fast/cpu/bfn.py)
    acc_t q = 0, sum_sq = 0, p_x = 0;
    for (int64_t k = 0; k < p.classes; ++k) {
      const acc_t prob = exp(to_acc<acc_t>(l[k]) - m) / s;
      if (k == target) {
        p_x = prob;
      } else {
        q += prob;
        sum_sq += prob * prob;
      }
    }
    const acc_t shift = q * p_x - sum_sq, at_target = -(sum_sq + q * q);
    for (int64_t k = 0; k < p.classes; ++k) {
      const acc_t prob = exp(to_acc<acc_t>(l[k]) - m) / s;
      out[row * p.classes + k] = from_acc<scalar_t>(c * prob * (k == target ? at_target : prob + shift));
    }
  }
}

template <typename scalar_t, typename acc_t>
__global__ void discrete_update_kernel(BfnArgs p) {
  const scalar_t* log_theta = static_cast<const scalar_t*>(p.logits);
  const scalar_t* y = static_cast<const scalar_t*>(p.eps);
  scalar_t* out = static_cast<scalar_t*>(p.out);
  const int64_t rows = p.batch * p.dims;
  for (int64_t row = global_thread(); row < rows; row += grid_threads()) {
    const int64_t base = row * p.classes;
    acc_t m = -INFINITY;
    for (int64_t k = 0; k < p.classes; ++k) m = max(m, to_acc<acc_t>(log_theta[base + k]) + to_acc<acc_t>(y[base + k]));
    acc_t s = 0;
    for (int64_t k = 0; k < p.classes; ++k) s += exp(to_acc<acc_t>(log_theta[base + k]) + to_acc<acc_t>(y[base + k]) - m);
    const acc_t lse = m + log(s);
    for (int64_t k = 0; k < p.classes; ++k)
      out[base + k] = from_acc<scalar_t>(to_acc<acc_t>(log_theta[base + k]) + to_acc<acc_t>(y[base + k]) - lse);
  }
}

// ---- noisy ops. Noise contract: gfn_fast/reference/bfn.py ("noise"). Normal i is output i & 3
// of Philox block i >> 2; an element needing two normals takes the (cos, sin) pair i & 1 of block
// i >> 1; the discrete step's uniform of row r is word 0 of block (2^31 | r >> 32, r mod 2^32).

__device__ __forceinline__ float first_normal(const BfnArgs& p, int64_t index) {
  return normal_at(philox_key(p.seed), p.offset, uint64_t(index));
}

__device__ __forceinline__ void normal_pair(const BfnArgs& p, int64_t index, float& n0, float& n1) {
  normal_pair_at(philox_key(p.seed), p.offset, uint64_t(index) >> 1, (index & 1) != 0, n0, n1);
}

__device__ __forceinline__ float row_uniform(const BfnArgs& p, int64_t row) {
  const Words4 w = philox_at(philox_key(p.seed), p.offset,
                             static_cast<uint32_t>(uint64_t(row) >> 32) | 0x80000000u,
                             static_cast<uint32_t>(uint64_t(row)));
  return uniform_from_bits(w.w[0]);
}

template <typename scalar_t, typename acc_t>
__global__ void continuous_flow_kernel(BfnArgs p) {
  const acc_t* t = static_cast<const acc_t*>(p.t);
  const scalar_t* x = static_cast<const scalar_t*>(p.x);
  scalar_t* out = static_cast<scalar_t*>(p.out);
  const acc_t log_s = acc_t(p.log_sigma_1);
  const int64_t n = p.batch * p.dims;
  for (int64_t i = global_thread(); i < n; i += grid_threads()) {
    const acc_t tb = t[i / p.dims];
    const acc_t g = -expm1(acc_t(2) * tb * log_s);
    const acc_t spread = sqrt(g * exp(acc_t(2) * tb * log_s));
    out[i] = from_acc<scalar_t>(g * to_acc<acc_t>(x[i]) + spread * acc_t(first_normal(p, i)));
  }
}

// y_k = alpha (K [k == target] - 1) + sqrt(alpha K) eps_k, noise index base + k.
template <typename acc_t>
__device__ __forceinline__ acc_t sender_logit(const BfnArgs& p, int64_t base, int64_t k, int64_t target,
                                              acc_t alpha, acc_t spread) {
  return alpha * ((k == target ? acc_t(p.classes) : acc_t(0)) - acc_t(1)) + spread * acc_t(first_normal(p, base + k));
}

// Output in acc_t (theta or log theta); scalar_t == acc_t here (dtype is the output's).
template <typename scalar_t, typename acc_t>
__global__ void discrete_flow_kernel(BfnArgs p) {
  const acc_t* t = static_cast<const acc_t*>(p.t);
  acc_t* out = static_cast<acc_t*>(p.out);
  const int64_t rows = p.batch * p.dims;
  for (int64_t row = global_thread(); row < rows; row += grid_threads()) {
    const acc_t tb = t[row / p.dims];
    const acc_t beta_t = acc_t(p.beta_1) * tb * tb;
    const acc_t spread = sqrt(beta_t * acc_t(p.classes));
    const int64_t base = row * p.classes, target = p.index[row];
    acc_t m = -INFINITY;
    for (int64_t k = 0; k < p.classes; ++k) {
      const acc_t y = sender_logit(p, base, k, target, beta_t, spread);
      out[base + k] = y;
      m = max(m, y);
    }
    acc_t s = 0;
    for (int64_t k = 0; k < p.classes; ++k) s += exp(out[base + k] - m);
    const acc_t lse = m + log(s);
    for (int64_t k = 0; k < p.classes; ++k)
      out[base + k] = p.log_output ? out[base + k] - lse : exp(out[base + k] - lse);
  }
}

// One (b, d) row of the n-step loss: (y_x - logsumexp_k z_k, logsumexp_k z_k), z = ln p_O + y.
template <typename scalar_t, typename acc_t>
__device__ __forceinline__ acc_t nstep_row(const BfnArgs& p, int64_t row, acc_t alpha, acc_t& lse, acc_t& m_l,
                                           acc_t& s_l) {
  const scalar_t* l = static_cast<const scalar_t*>(p.logits) + row * p.classes;
  softmax_stats(l, p.classes, m_l, s_l);
  const acc_t log_norm = m_l + log(s_l);
  const acc_t spread = sqrt(alpha * acc_t(p.classes));
  const int64_t base = row * p.classes, target = p.index[row];
  acc_t m = -INFINITY, s = 0, y_target = 0;
  for (int64_t k = 0; k < p.classes; ++k) {
    const acc_t y = sender_logit(p, base, k, target, alpha, spread);
    if (k == target) y_target = y;
    const acc_t z = to_acc<acc_t>(l[k]) - log_norm + y;
    if (z > m) {
      s = s * exp(m - z) + acc_t(1);
      m = z;
    } else {
      s += exp(z - m);
    }
  }
  lse = m + log(s);
  return y_target - lse;
}

template <typename acc_t>
__device__ __forceinline__ acc_t nstep_alpha(const BfnArgs& p, acc_t t) {
  const acc_t n = acc_t(p.n_steps);
  return acc_t(p.beta_1) * (acc_t(2) * t * n + acc_t(1)) / (n * n);
}

template <typename scalar_t, typename acc_t>
__global__ void discrete_nstep_loss_forward_kernel(BfnArgs p) {
  const int64_t b = blockIdx.x;
  const acc_t alpha = nstep_alpha(p, static_cast<const acc_t*>(p.t)[b]);
  acc_t total = 0, lse, m_l, s_l;
  for (int64_t d = threadIdx.x; d < p.dims; d += blockDim.x)
    total += nstep_row<scalar_t, acc_t>(p, b * p.dims + d, alpha, lse, m_l, s_l);
  total = block_sum(total);
  if (threadIdx.x == 0) static_cast<acc_t*>(p.out)[b] = acc_t(p.n_steps) * total;
}

// d/d logits_k = n grad (p_k - w_k), w = softmax(ln p_O + y): the noise is drawn again for w.
template <typename scalar_t, typename acc_t>
__global__ void discrete_nstep_loss_backward_kernel(BfnArgs p) {
  const acc_t* t = static_cast<const acc_t*>(p.t);
  const acc_t* grad = static_cast<const acc_t*>(p.grad);
  scalar_t* out = static_cast<scalar_t*>(p.out);
  const int64_t rows = p.batch * p.dims;
  for (int64_t row = global_thread(); row < rows; row += grid_threads()) {
    const int64_t b = row / p.dims;
    const acc_t alpha = nstep_alpha(p, t[b]);
    acc_t lse, m_l, s_l;
    nstep_row<scalar_t, acc_t>(p, row, alpha, lse, m_l, s_l);
    const scalar_t* l = static_cast<const scalar_t*>(p.logits) + row * p.classes;
    const acc_t log_norm = m_l + log(s_l);
    const acc_t spread = sqrt(alpha * acc_t(p.classes));
    const acc_t scale = acc_t(p.n_steps) * grad[b];
    const int64_t base = row * p.classes, target = p.index[row];
    for (int64_t k = 0; k < p.classes; ++k) {
      const acc_t lk = to_acc<acc_t>(l[k]);
      const acc_t z = lk - log_norm + sender_logit(p, base, k, target, alpha, spread);
      out[base + k] = from_acc<scalar_t>(scale * (exp(lk - m_l) / s_l - exp(z - lse)));
    }
  }
}

template <typename scalar_t, typename acc_t>
__global__ void continuous_step_kernel(BfnArgs p) {
  scalar_t* mu = static_cast<scalar_t*>(p.state);
  const scalar_t* eps_hat = static_cast<const scalar_t*>(p.eps);
  const acc_t* rho = static_cast<const acc_t*>(p.rho);
  const acc_t alpha = acc_t(p.alpha_value);
  const int64_t n = p.batch * p.dims;
  for (int64_t i = global_thread(); i < n; i += grid_threads()) {
    const acc_t m = to_acc<acc_t>(mu[i]);
    acc_t x_hat = linear_x_hat(acc_t(p.coef_a), acc_t(p.coef_c), m, to_acc<acc_t>(eps_hat[i]));
    if (p.clamp) x_hat = clamp_to(x_hat, acc_t(p.x_min), acc_t(p.x_max));
    const acc_t y = x_hat + acc_t(p.inv_sqrt_alpha) * acc_t(first_normal(p, i));
    mu[i] = from_acc<scalar_t>(m + alpha / (rho[i / p.dims] + alpha) * (y - m));
  }
}

template <typename scalar_t, typename acc_t>
__global__ void discretised_step_kernel(BfnArgs p) {
  scalar_t* mu = static_cast<scalar_t*>(p.state);
  const scalar_t* mu_x = static_cast<const scalar_t*>(p.mu);
  const scalar_t* log_sigma = static_cast<const scalar_t*>(p.eps);
  const acc_t* rho = static_cast<const acc_t*>(p.rho);
  scalar_t* draw = static_cast<scalar_t*>(p.draw);
  const acc_t alpha = acc_t(p.alpha_value), bins = acc_t(p.bins);
  const int64_t n = p.batch * p.dims;
  for (int64_t i = global_thread(); i < n; i += grid_threads()) {
    float eps_draw, eps_send;
    normal_pair(p, i, eps_draw, eps_send);
    const acc_t value = to_acc<acc_t>(mu_x[i]) + discretised_sigma(to_acc<acc_t>(log_sigma[i])) * acc_t(eps_draw);
    const acc_t k = clamp_to(floor((value + acc_t(1)) * (acc_t(0.5) * bins)), acc_t(0), bins - acc_t(1));
    const acc_t centre = (acc_t(2) * k + acc_t(1)) / bins - acc_t(1);
    draw[i] = from_acc<scalar_t>(centre);
    if (p.update) {
      const acc_t m = to_acc<acc_t>(mu[i]);
      const acc_t y = centre + acc_t(p.inv_sqrt_alpha) * acc_t(eps_send);
      mu[i] = from_acc<scalar_t>(m + alpha / (rho[i / p.dims] + alpha) * (y - m));
    }
  }
}

template <typename scalar_t, typename acc_t>
__global__ void discrete_step_kernel(BfnArgs p) {
  scalar_t* log_theta = static_cast<scalar_t*>(p.state);
  const scalar_t* logits = static_cast<const scalar_t*>(p.logits);
  int64_t* draw = static_cast<int64_t*>(p.draw);
  const acc_t alpha = acc_t(p.alpha_value);
  const acc_t spread = sqrt(alpha * acc_t(p.classes));
  const int64_t rows = p.batch * p.dims;
  for (int64_t row = global_thread(); row < rows; row += grid_threads()) {
    const int64_t base = row * p.classes;
    const scalar_t* l = logits + base;
    acc_t m_l, s_l;
    softmax_stats(l, p.classes, m_l, s_l);
    // Inverse CDF: the first k whose running sum of exp(l - max) exceeds u * total. None
    // exceeds a NaN target (a NaN logit row): that row draws 0, the count of running sums
    // <= target that the reference and Triton take.
    const acc_t target = acc_t(row_uniform(p, row)) * s_l;
    int64_t chosen = target == target ? p.classes - 1 : 0;
    acc_t running = 0;
    for (int64_t k = 0; k < p.classes; ++k) {
      running += exp(to_acc<acc_t>(l[k]) - m_l);
      if (running > target) {
        chosen = k;
        break;
      }
    }
    draw[row] = chosen;
    if (!p.update) continue;
    acc_t m = -INFINITY;
    for (int64_t k = 0; k < p.classes; ++k) {
      const acc_t z = to_acc<acc_t>(log_theta[base + k]) + sender_logit(p, base, k, chosen, alpha, spread);
      log_theta[base + k] = from_acc<scalar_t>(z);
      m = max(m, z);
    }
    acc_t s = 0;
    for (int64_t k = 0; k < p.classes; ++k) s += exp(to_acc<acc_t>(log_theta[base + k]) - m);
    const acc_t lse = m + log(s);
    for (int64_t k = 0; k < p.classes; ++k)
      log_theta[base + k] = from_acc<scalar_t>(to_acc<acc_t>(log_theta[base + k]) - lse);
  }
}

}  // namespace bfn
}  // namespace gfn_fast
