// Trajectory-balance family kernels (TB, VarGrad row sums and their backward).
//
// A trajectory b is a run of `count` steps starting at column `start` of row `row` of a
// [rows, steps] tensor addressed by (stride_b, stride_t): padded inputs use row = b, start = 0,
// count = lengths[b]; packed inputs use row = 0 and start/end from cu_seqlens. Every length and
// offset is clamped to [0, steps], so bad values cannot index out of bounds.
//
// Two mappings of threads to data keep reads coalesced for both layouts:
//  - warp per trajectory when the time stride is the small one (batch-major [B, T]);
//  - thread per trajectory when the batch stride is the small one (time-major, passed as .T).
#pragma once

#include "gfn_fast/balance.h"
#include "gfn_fast/common.cuh"

namespace gfn_fast {

__device__ __forceinline__ void trajectory_extent(const int64_t* lengths, int64_t b, int64_t steps, bool packed,
                                                  int64_t& row, int64_t& start, int64_t& count) {
  if (packed) {
    int64_t s = min(max(lengths[b], int64_t(0)), steps);
    int64_t e = min(max(lengths[b + 1], s), steps);
    row = 0;
    start = s;
    count = e - s;
  } else {
    row = b;
    start = 0;
    count = min(max(lengths[b], int64_t(0)), steps);
  }
}

template <typename acc_t>
__device__ __forceinline__ acc_t finish_residual(const BalanceRows& p, int64_t b, acc_t sum) {
  const acc_t* log_reward = static_cast<const acc_t*>(p.log_reward);
  acc_t terminal = clip_below(log_reward[b], acc_t(p.clip_min));
  if (p.beta) terminal *= static_cast<const acc_t*>(p.beta)[b * p.stride_beta];
  acc_t d = sum - terminal;
  if (p.log_z) d += static_cast<const acc_t*>(p.log_z)[b * p.stride_log_z];
  return d;
}

// One warp per trajectory; lanes stride over its steps.
template <typename scalar_t, typename acc_t>
__global__ void balance_rows_forward_warp(BalanceRows p, acc_t* d_out, acc_t* loss_out) {
  const int lane = threadIdx.x & 31;
  const int64_t b = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) >> 5;
  if (b >= p.batch) return;
  int64_t row, start, count;
  trajectory_extent(p.lengths, b, p.steps, p.packed, row, start, count);
  const scalar_t* pf = static_cast<const scalar_t*>(p.log_pf) + row * p.stride_pf_b + start * p.stride_pf_t;
  const scalar_t* pb = p.log_pb ? static_cast<const scalar_t*>(p.log_pb) + row * p.stride_pb_b + start * p.stride_pb_t
                                : nullptr;
  acc_t sum = 0;
#pragma unroll 4
  for (int64_t t = lane; t < count; t += 32) sum += to_acc<acc_t>(pf[t * p.stride_pf_t]);
  if (pb) {
#pragma unroll 4
    for (int64_t t = lane; t < count; t += 32) sum -= to_acc<acc_t>(pb[t * p.stride_pb_t]);
  }
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, offset);
  if (lane == 0) {
    acc_t d = finish_residual(p, b, sum);
    d_out[b] = d;
    if (loss_out) loss_out[b] = rho(d, p.loss, acc_t(p.loss_param));
  }
}

// One thread per trajectory (time-major layouts: neighbouring threads read neighbouring rows).
template <typename scalar_t, typename acc_t>
__global__ void balance_rows_forward_thread(BalanceRows p, acc_t* d_out, acc_t* loss_out) {
  const int64_t b = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (b >= p.batch) return;
  int64_t row, start, count;
  trajectory_extent(p.lengths, b, p.steps, p.packed, row, start, count);
  const scalar_t* pf = static_cast<const scalar_t*>(p.log_pf) + row * p.stride_pf_b + start * p.stride_pf_t;
  acc_t sum = 0;
  if (p.log_pb) {
    const scalar_t* pb = static_cast<const scalar_t*>(p.log_pb) + row * p.stride_pb_b + start * p.stride_pb_t;
#pragma unroll 4
    for (int64_t t = 0; t < count; ++t)
      sum += to_acc<acc_t>(pf[t * p.stride_pf_t]) - to_acc<acc_t>(pb[t * p.stride_pb_t]);
  } else {
#pragma unroll 4
    for (int64_t t = 0; t < count; ++t) sum += to_acc<acc_t>(pf[t * p.stride_pf_t]);
  }
  acc_t d = finish_residual(p, b, sum);
  d_out[b] = d;
  if (loss_out) loss_out[b] = rho(d, p.loss, acc_t(p.loss_param));
}

template <typename acc_t>
__device__ __forceinline__ acc_t row_gradient(const BalanceRowsGrad& p, int64_t b) {
  acc_t g = static_cast<const acc_t*>(p.grad_rows)[b * p.stride_grad_rows];
  if (p.from_residual) {
    acc_t d = static_cast<const acc_t*>(p.d)[b];
    g = g * acc_t(p.weight) * rho_grad(d, p.loss, acc_t(p.loss_param));
  }
  return g;
}

template <typename acc_t>
__device__ __forceinline__ void write_row_grads(const BalanceRowsGrad& p, int64_t b, acc_t g) {
  static_cast<acc_t*>(p.grad_row)[b] = g;
  if (p.grad_log_reward || p.grad_beta) {
    acc_t reward = static_cast<const acc_t*>(p.log_reward)[b];
    acc_t clip = acc_t(p.clip_min);
    acc_t beta = p.beta ? static_cast<const acc_t*>(p.beta)[b * p.stride_beta] : acc_t(1);
    if (p.grad_log_reward) static_cast<acc_t*>(p.grad_log_reward)[b] = reward >= clip ? -g * beta : acc_t(0) * g;
    if (p.grad_beta) static_cast<acc_t*>(p.grad_beta)[b] = -g * clip_below(reward, clip);
  }
}

template <typename scalar_t, typename acc_t>
__global__ void balance_rows_backward_warp(BalanceRowsGrad p) {
  const int lane = threadIdx.x & 31;
  const int64_t b = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) >> 5;
  if (b >= p.batch) return;
  int64_t row, start, count;
  trajectory_extent(p.lengths, b, p.steps, p.packed, row, start, count);
  const acc_t g = row_gradient<acc_t>(p, b);
  if (lane == 0) write_row_grads(p, b, g);
  const int64_t limit = p.packed ? count : p.steps;  // padded rows get zeros on the padding
  const scalar_t pos = from_acc<scalar_t>(g), neg = from_acc<scalar_t>(-g), zero = from_acc<scalar_t>(acc_t(0));
  scalar_t* gpf = static_cast<scalar_t*>(p.grad_pf) + row * p.stride_gpf_b + start * p.stride_gpf_t;
#pragma unroll 4
  for (int64_t t = lane; t < limit; t += 32) gpf[t * p.stride_gpf_t] = t < count ? pos : zero;
  if (p.grad_pb) {
    scalar_t* gpb = static_cast<scalar_t*>(p.grad_pb) + row * p.stride_gpb_b + start * p.stride_gpb_t;
#pragma unroll 4
    for (int64_t t = lane; t < limit; t += 32) gpb[t * p.stride_gpb_t] = t < count ? neg : zero;
  }
}

template <typename scalar_t, typename acc_t>
__global__ void balance_rows_backward_thread(BalanceRowsGrad p) {
  const int64_t b = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (b >= p.batch) return;
  int64_t row, start, count;
  trajectory_extent(p.lengths, b, p.steps, p.packed, row, start, count);
  const acc_t g = row_gradient<acc_t>(p, b);
  write_row_grads(p, b, g);
  const int64_t limit = p.packed ? count : p.steps;
  const scalar_t pos = from_acc<scalar_t>(g), neg = from_acc<scalar_t>(-g), zero = from_acc<scalar_t>(acc_t(0));
  scalar_t* gpf = static_cast<scalar_t*>(p.grad_pf) + row * p.stride_gpf_b + start * p.stride_gpf_t;
  scalar_t* gpb = p.grad_pb ? static_cast<scalar_t*>(p.grad_pb) + row * p.stride_gpb_b + start * p.stride_gpb_t
                            : nullptr;
#pragma unroll 4
  for (int64_t t = 0; t < limit; ++t) {
    gpf[t * p.stride_gpf_t] = t < count ? pos : zero;
    if (gpb) gpb[t * p.stride_gpb_t] = t < count ? neg : zero;
  }
}

}  // namespace gfn_fast
