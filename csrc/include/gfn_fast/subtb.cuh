// Detailed-balance (DB) and sub-trajectory-balance (SubTB) kernels: one thread per trajectory,
// walking its steps in order. They mirror the Triton kernels (kernels/subtb.py) and the Numba
// ones (gfn_fast/cpu/subtb.py) operation for operation; read the latter for the math.
//
// SubTB works on the shifted potentials a(k) = F(k) - F(0) - P(k), k = 0..n, saved by the
// forward; every residual is d_ij = a(i) - a(j). Squared losses with geometric weights use
// Welford-style recurrences on neighbouring differences (O(n), nothing cancels however large a
// gets); other losses and tabulated weights loop over pairs (O(n^2) time, no memory).
// Lengths and offsets are clamped (trajectory_extent): bad values never index out of bounds.
#pragma once

#include "gfn_fast/balance.cuh"
#include "gfn_fast/common.cuh"
#include "gfn_fast/subtb.h"

namespace gfn_fast {

template <typename acc_t>
__device__ __forceinline__ acc_t terminal_flow(const FlowInputs& p, int64_t b) {
  acc_t value = clip_below(static_cast<const acc_t*>(p.log_reward)[b], acc_t(p.clip_min));
  if (p.beta) value *= static_cast<const acc_t*>(p.beta)[b * p.stride_beta];
  return value;
}

// log_flow (+ log_state_reward) at absolute column t of `row`
template <typename scalar_t, typename acc_t>
__device__ __forceinline__ acc_t state_flow(const FlowInputs& p, int64_t row, int64_t t) {
  acc_t value = to_acc<acc_t>(static_cast<const scalar_t*>(p.log_flow)[row * p.stride_fl_b + t * p.stride_fl_t]);
  if (p.log_state_reward)
    value += to_acc<acc_t>(static_cast<const scalar_t*>(p.log_state_reward)[row * p.stride_sr_b + t * p.stride_sr_t]);
  return value;
}

// log_pf - log_pb at absolute column t of `row`
template <typename scalar_t, typename acc_t>
__device__ __forceinline__ acc_t step_log_ratio(const FlowInputs& p, int64_t row, int64_t t) {
  acc_t value = to_acc<acc_t>(static_cast<const scalar_t*>(p.log_pf)[row * p.stride_pf_b + t * p.stride_pf_t]);
  if (p.log_pb) value -= to_acc<acc_t>(static_cast<const scalar_t*>(p.log_pb)[row * p.stride_pb_b + t * p.stride_pb_t]);
  return value;
}

// g = dLoss/dL_b, L_b = beta_b * max(log R_b, clip)
template <typename acc_t>
__device__ __forceinline__ void store_terminal_grads(const FlowInputs& p, const FlowGrads& out, int64_t b, acc_t g) {
  if (!out.grad_log_reward && !out.grad_beta) return;
  const acc_t reward = static_cast<const acc_t*>(p.log_reward)[b];
  const acc_t clip = acc_t(p.clip_min);
  const acc_t beta = p.beta ? static_cast<const acc_t*>(p.beta)[b * p.stride_beta] : acc_t(1);
  if (out.grad_log_reward) static_cast<acc_t*>(out.grad_log_reward)[b] = reward >= clip ? g * beta : acc_t(0) * g;
  if (out.grad_beta) static_cast<acc_t*>(out.grad_beta)[b] = g * clip_below(reward, clip);
}

template <typename scalar_t, typename acc_t>
__device__ __forceinline__ void zero_padding(const FlowGrads& out, int64_t out_row, int64_t count, int64_t steps) {
  const scalar_t zero = from_acc<scalar_t>(acc_t(0));
  for (int64_t t = count; t < steps; ++t) {
    static_cast<scalar_t*>(out.grad_pf)[out_row + t] = zero;
    static_cast<scalar_t*>(out.grad_flow)[out_row + t] = zero;
    if (out.grad_pb) static_cast<scalar_t*>(out.grad_pb)[out_row + t] = zero;
  }
}

// ------------------------------------------------------------------ detailed balance

template <typename scalar_t, typename acc_t>
__global__ void detailed_balance_forward_kernel(DetailedBalanceArgs a) {
  const FlowInputs& p = a.in;
  const int64_t b = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (b >= p.batch) return;
  int64_t row, start, count;
  trajectory_extent(p.lengths, b, p.steps, p.packed, row, start, count);
  const acc_t terminal = terminal_flow<acc_t>(p, b);
  const acc_t param = acc_t(p.loss_param);
  acc_t* steps_out = static_cast<acc_t*>(a.steps_out);
  const int64_t out_row = p.packed ? start : b * p.steps;
  acc_t here = count > 0 ? state_flow<scalar_t, acc_t>(p, row, start) : terminal;
  acc_t total = 0;
  for (int64_t t = 0; t < count; ++t) {
    const acc_t next = t + 1 < count ? state_flow<scalar_t, acc_t>(p, row, start + t + 1) : terminal;
    const acc_t d = here + step_log_ratio<scalar_t, acc_t>(p, row, start + t) - next;
    const acc_t value = rho(d, p.loss, param);
    total += value;
    if (steps_out) steps_out[out_row + t] = value;
    here = next;
  }
  if (steps_out && !p.packed)
    for (int64_t t = count; t < p.steps; ++t) steps_out[out_row + t] = acc_t(0);
  static_cast<acc_t*>(a.rows_out)[b] = total;
}

template <typename scalar_t, typename acc_t>
__global__ void detailed_balance_backward_kernel(DetailedBalanceGradArgs a) {
  const FlowInputs& p = a.in;
  const FlowGrads& out = a.out;
  const int64_t b = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (b >= p.batch) return;
  int64_t row, start, count;
  trajectory_extent(p.lengths, b, p.steps, p.packed, row, start, count);
  const acc_t terminal = terminal_flow<acc_t>(p, b);
  const acc_t param = acc_t(p.loss_param);
  const acc_t* grad = static_cast<const acc_t*>(a.grad);
  const int64_t out_row = p.packed ? start : b * p.steps;
  scalar_t* grad_pf = static_cast<scalar_t*>(out.grad_pf) + out_row;
  scalar_t* grad_pb = out.grad_pb ? static_cast<scalar_t*>(out.grad_pb) + out_row : nullptr;
  scalar_t* grad_flow = static_cast<scalar_t*>(out.grad_flow) + out_row;
  acc_t here = count > 0 ? state_flow<scalar_t, acc_t>(p, row, start) : terminal;
  acc_t g_prev = 0;
  for (int64_t t = 0; t < count; ++t) {
    const acc_t next = t + 1 < count ? state_flow<scalar_t, acc_t>(p, row, start + t + 1) : terminal;
    const acc_t d = here + step_log_ratio<scalar_t, acc_t>(p, row, start + t) - next;
    const acc_t g = grad[row * a.stride_g_b + (start + t) * a.stride_g_t] * rho_grad(d, p.loss, param);
    grad_pf[t] = from_acc<scalar_t>(g);
    if (grad_pb) grad_pb[t] = from_acc<scalar_t>(-g);
    grad_flow[t] = from_acc<scalar_t>(g - g_prev);  // F(t) enters d_t with +, d_{t-1} with -
    g_prev = g;
    here = next;
  }
  if (!p.packed) zero_padding<scalar_t, acc_t>(out, out_row, count, p.steps);
  store_terminal_grads<acc_t>(p, out, b, -g_prev);
}

// ------------------------------------------------------------------ sub-trajectory balance

template <typename scalar_t, typename acc_t>
__global__ void subtb_forward_kernel(SubTBArgs a) {
  const FlowInputs& p = a.in;
  const int64_t b = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (b >= p.batch) return;
  int64_t row, start, count;
  trajectory_extent(p.lengths, b, p.steps, p.packed, row, start, count);
  acc_t* pot = static_cast<acc_t*>(a.potentials) + (p.packed ? start + b : b * (p.steps + 1));
  acc_t* rows_out = static_cast<acc_t*>(a.rows_out);
  pot[0] = acc_t(0);
  if (count == 0) {
    rows_out[b] = acc_t(0);
    return;
  }
  const acc_t lam = acc_t(a.lamda);
  const acc_t param = acc_t(p.loss_param);
  const acc_t* table = static_cast<const acc_t*>(a.table);
  const acc_t terminal = terminal_flow<acc_t>(p, b);
  const acc_t flow0 = state_flow<scalar_t, acc_t>(p, row, start);
  acc_t prefix = 0, s0 = 0, m1 = 0, m2 = 0, total = 0, a_prev = 0;
  for (int64_t k = 1; k <= count; ++k) {
    prefix += step_log_ratio<scalar_t, acc_t>(p, row, start + k - 1);
    const acc_t flow_k = k < count ? state_flow<scalar_t, acc_t>(p, row, start + k) : terminal;
    const acc_t a_k = (flow_k - flow0) - prefix;
    pot[k] = a_k;
    if (a.running) {
      const acc_t delta = a_prev - a_k;
      // factored so that an infinite delta gives +inf, not inf - inf (gfn_fast/cpu/subtb.py)
      m2 = lam * (m2 + delta * (acc_t(2) * m1 + delta * (s0 + acc_t(1))));
      m1 = lam * (m1 + delta * (s0 + acc_t(1)));
      s0 = lam * (s0 + acc_t(1));
      total += m2;
    }
    a_prev = a_k;
  }
  if (a.running) {
    if (p.loss == kHalfSquared) total *= acc_t(0.5);
  } else {
    for (int64_t i = 0; i < count; ++i) {
      const acc_t a_i = pot[i];
      acc_t weight = 1;
      for (int64_t j = i + 1; j <= count; ++j) {
        weight = table ? table[j - i - 1] : weight * lam;
        total += weight * rho(a_i - pot[j], p.loss, param);
      }
    }
  }
  rows_out[b] = static_cast<const acc_t*>(a.row_weight)[b * a.stride_row_weight] * total;
}

template <typename scalar_t, typename acc_t>
__global__ void subtb_backward_kernel(SubTBGradArgs a) {
  const FlowInputs& p = a.in;
  const FlowGrads& out = a.out;
  const int64_t b = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (b >= p.batch) return;
  int64_t row, start, count;
  trajectory_extent(p.lengths, b, p.steps, p.packed, row, start, count);
  const int64_t base = p.packed ? start + b : b * (p.steps + 1);
  const acc_t* pot = static_cast<const acc_t*>(a.potentials) + base;
  acc_t* g = static_cast<acc_t*>(a.scratch) + base;
  const acc_t lam = acc_t(a.lamda);
  const acc_t param = acc_t(p.loss_param);
  const acc_t* table = static_cast<const acc_t*>(a.table);
  const acc_t coef = *static_cast<const acc_t*>(a.grad_loss) *
                     static_cast<const acc_t*>(a.row_weight)[b * a.stride_row_weight];
  // phase 1: g[m] = dLoss/da(m)
  if (a.running) {
    const acc_t scale = p.loss == kSquared ? acc_t(-2) * coef : -coef;
    acc_t s0 = 0, m1 = 0;
    g[0] = acc_t(0);
    for (int64_t j = 1; j <= count; ++j) {
      const acc_t delta = pot[j - 1] - pot[j];
      m1 = lam * (m1 + delta * (s0 + acc_t(1)));
      s0 = lam * (s0 + acc_t(1));
      g[j] = m1;  // prefix moment M1_j, consumed below
    }
    acc_t r0 = 0, n1 = 0;
    for (int64_t m = count; m >= 0; --m) {
      if (m < count) {
        const acc_t delta = pot[m + 1] - pot[m];
        n1 = lam * (n1 + delta * (r0 + acc_t(1)));
        r0 = lam * (r0 + acc_t(1));
      }
      g[m] = scale * (g[m] + n1);
    }
  } else {
    for (int64_t m = 0; m <= count; ++m) {
      const acc_t a_m = pot[m];
      acc_t total = 0, weight = 1;
      for (int64_t k = m + 1; k <= count; ++k) {
        weight = table ? table[k - m - 1] : weight * lam;
        total += weight * rho_grad(a_m - pot[k], p.loss, param);
      }
      weight = 1;
      for (int64_t k = m - 1; k >= 0; --k) {
        weight = table ? table[m - k - 1] : weight * lam;
        total -= weight * rho_grad(pot[k] - a_m, p.loss, param);
      }
      g[m] = coef * total;
    }
  }
  // phase 2: a(m) = F(m) - P(m): dF(m) = g(m); dlog_pf[t] = -sum_{m>t} g(m) = -dlog_pb[t]
  const int64_t out_row = p.packed ? start : b * p.steps;
  scalar_t* grad_pf = static_cast<scalar_t*>(out.grad_pf) + out_row;
  scalar_t* grad_pb = out.grad_pb ? static_cast<scalar_t*>(out.grad_pb) + out_row : nullptr;
  scalar_t* grad_flow = static_cast<scalar_t*>(out.grad_flow) + out_row;
  acc_t suffix = 0;
  for (int64_t m = count; m >= 1; --m) {
    const acc_t g_m = g[m];
    if (m < count) grad_flow[m] = from_acc<scalar_t>(g_m);
    suffix += g_m;
    grad_pf[m - 1] = from_acc<scalar_t>(-suffix);
    if (grad_pb) grad_pb[m - 1] = from_acc<scalar_t>(suffix);
  }
  if (count > 0) {
    grad_flow[0] = from_acc<scalar_t>(g[0]);
    store_terminal_grads<acc_t>(p, out, b, g[count]);
  } else {
    store_terminal_grads<acc_t>(p, out, b, acc_t(0) * coef);
  }
  if (!p.packed) zero_padding<scalar_t, acc_t>(out, out_row, count, p.steps);
}

}  // namespace gfn_fast
