// Launchers of the trajectory-balance kernels: mapping choice, grid, error checks.
#include "gfn_fast/balance.cuh"
#include "gfn_fast/launch.cuh"

namespace gfn_fast {

namespace {
constexpr int kThreads = 256;
constexpr int kRowsPerWarpBlock = kThreads / 32;

// Thread per trajectory when the batch stride is the smaller one (time-major [T, B] storage).
bool time_major(bool packed, int64_t stride_b, int64_t stride_t) { return !packed && stride_b < stride_t; }
}  // namespace

void balance_rows_forward(const BalanceRows& p, int dtype, void* d_out, void* loss_out, std::uintptr_t stream) {
  if (p.batch <= 0) return;
  cudaStream_t s = reinterpret_cast<cudaStream_t>(stream);
  const bool per_thread = time_major(p.packed, p.stride_pf_b, p.stride_pf_t);
  dispatch_float(dtype, [&]<typename scalar_t, typename acc_t>() {
    acc_t* d = static_cast<acc_t*>(d_out);
    acc_t* loss = static_cast<acc_t*>(loss_out);
    if (per_thread) {
      balance_rows_forward_thread<scalar_t, acc_t><<<blocks_for(p.batch, kThreads), kThreads, 0, s>>>(p, d, loss);
    } else {
      balance_rows_forward_warp<scalar_t, acc_t><<<blocks_for(p.batch, kRowsPerWarpBlock), kThreads, 0, s>>>(p, d, loss);
    }
  });
  check_launch("balance_rows_forward");
}

void balance_rows_backward(const BalanceRowsGrad& p, int dtype, std::uintptr_t stream) {
  if (p.batch <= 0) return;
  cudaStream_t s = reinterpret_cast<cudaStream_t>(stream);
  const bool per_thread = time_major(p.packed, p.stride_gpf_b, p.stride_gpf_t);
  dispatch_float(dtype, [&]<typename scalar_t, typename acc_t>() {
    if (per_thread) {
      balance_rows_backward_thread<scalar_t, acc_t><<<blocks_for(p.batch, kThreads), kThreads, 0, s>>>(p);
    } else {
      balance_rows_backward_warp<scalar_t, acc_t><<<blocks_for(p.batch, kRowsPerWarpBlock), kThreads, 0, s>>>(p);
    }
  });
  check_launch("balance_rows_backward");
}

}  // namespace gfn_fast
