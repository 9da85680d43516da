// Launchers of the detailed-balance and sub-trajectory-balance kernels: grid, dispatch, checks.
#include "gfn_fast/launch.cuh"
#include "gfn_fast/subtb.cuh"

namespace gfn_fast {

namespace {
// One thread per trajectory; small blocks keep many blocks in flight for modest batches.
constexpr int kSubTBThreads = 128;
}  // namespace

void detailed_balance_forward(const DetailedBalanceArgs& p, int dtype, std::uintptr_t stream) {
  if (p.in.batch <= 0) return;
  cudaStream_t s = reinterpret_cast<cudaStream_t>(stream);
  dispatch_float(dtype, [&]<typename scalar_t, typename acc_t>() {
    detailed_balance_forward_kernel<scalar_t, acc_t><<<blocks_for(p.in.batch, kSubTBThreads), kSubTBThreads, 0, s>>>(p);
  });
  check_launch("detailed_balance_forward");
}

void detailed_balance_backward(const DetailedBalanceGradArgs& p, int dtype, std::uintptr_t stream) {
  if (p.in.batch <= 0) return;
  cudaStream_t s = reinterpret_cast<cudaStream_t>(stream);
  dispatch_float(dtype, [&]<typename scalar_t, typename acc_t>() {
    detailed_balance_backward_kernel<scalar_t, acc_t><<<blocks_for(p.in.batch, kSubTBThreads), kSubTBThreads, 0, s>>>(p);
  });
  check_launch("detailed_balance_backward");
}

void subtb_forward(const SubTBArgs& p, int dtype, std::uintptr_t stream) {
  if (p.in.batch <= 0) return;
  cudaStream_t s = reinterpret_cast<cudaStream_t>(stream);
  dispatch_float(dtype, [&]<typename scalar_t, typename acc_t>() {
    subtb_forward_kernel<scalar_t, acc_t><<<blocks_for(p.in.batch, kSubTBThreads), kSubTBThreads, 0, s>>>(p);
  });
  check_launch("subtb_forward");
}

void subtb_backward(const SubTBGradArgs& p, int dtype, std::uintptr_t stream) {
  if (p.in.batch <= 0) return;
  cudaStream_t s = reinterpret_cast<cudaStream_t>(stream);
  dispatch_float(dtype, [&]<typename scalar_t, typename acc_t>() {
    subtb_backward_kernel<scalar_t, acc_t><<<blocks_for(p.in.batch, kSubTBThreads), kSubTBThreads, 0, s>>>(p);
  });
  check_launch("subtb_backward");
}

}  // namespace gfn_fast
