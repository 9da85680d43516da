// Launchers of the Bayesian Flow Network kernels: grid choice and error checks.
#include "gfn_fast/bfn.cuh"
#include "gfn_fast/launch.cuh"

namespace gfn_fast {

namespace {
using bfn::kThreads;

// Grid-stride kernels: enough blocks to fill the GPU, capped so huge inputs loop.
unsigned int elementwise_blocks(int64_t n) {
  const unsigned int blocks = blocks_for(n, kThreads);
  return blocks < 65535u * 8u ? blocks : 65535u * 8u;
}

cudaStream_t as_stream(std::uintptr_t stream) { return reinterpret_cast<cudaStream_t>(stream); }
}  // namespace

#define GFN_FAST_BFN_LAUNCH(NAME, KERNEL, GRID)                                    \
  void NAME(const BfnArgs& p, int dtype, std::uintptr_t stream) {                   \
    if (p.batch <= 0) return;                                                       \
    dispatch_float(dtype, [&]<typename scalar_t, typename acc_t>() {                \
      bfn::KERNEL<scalar_t, acc_t><<<(GRID), kThreads, 0, as_stream(stream)>>>(p); \
    });                                                                             \
    check_launch(#NAME);                                                            \
  }

GFN_FAST_BFN_LAUNCH(bfn_continuous_output, continuous_output_kernel, elementwise_blocks(p.batch * p.dims))
GFN_FAST_BFN_LAUNCH(bfn_continuous_loss_forward, continuous_loss_forward_kernel, static_cast<unsigned int>(p.batch))
GFN_FAST_BFN_LAUNCH(bfn_continuous_update, continuous_update_kernel, elementwise_blocks(p.batch * p.dims))
GFN_FAST_BFN_LAUNCH(bfn_discretised_loss_forward, discretised_loss_forward_kernel, static_cast<unsigned int>(p.batch))
GFN_FAST_BFN_LAUNCH(bfn_discretised_loss_backward, discretised_loss_backward_kernel, elementwise_blocks(p.batch * p.dims))
GFN_FAST_BFN_LAUNCH(bfn_discretised_probs, discretised_probs_kernel, elementwise_blocks(p.batch * p.bins))
GFN_FAST_BFN_LAUNCH(bfn_discrete_loss_forward, discrete_loss_forward_kernel, static_cast<unsigned int>(p.batch))
GFN_FAST_BFN_LAUNCH(bfn_discrete_loss_backward, discrete_loss_backward_kernel, elementwise_blocks(p.batch * p.dims))
GFN_FAST_BFN_LAUNCH(bfn_discrete_update, discrete_update_kernel, elementwise_blocks(p.batch * p.dims))
GFN_FAST_BFN_LAUNCH(bfn_continuous_flow, continuous_flow_kernel, elementwise_blocks(p.batch * p.dims))
GFN_FAST_BFN_LAUNCH(bfn_discrete_flow, discrete_flow_kernel, elementwise_blocks(p.batch * p.dims))
GFN_FAST_BFN_LAUNCH(bfn_discrete_nstep_loss_forward, discrete_nstep_loss_forward_kernel, static_cast<unsigned int>(p.batch))
GFN_FAST_BFN_LAUNCH(bfn_discrete_nstep_loss_backward, discrete_nstep_loss_backward_kernel, elementwise_blocks(p.batch * p.dims))
GFN_FAST_BFN_LAUNCH(bfn_continuous_step, continuous_step_kernel, elementwise_blocks(p.batch * p.dims))
GFN_FAST_BFN_LAUNCH(bfn_discretised_step, discretised_step_kernel, elementwise_blocks(p.batch * p.dims))
GFN_FAST_BFN_LAUNCH(bfn_discrete_step, discrete_step_kernel, elementwise_blocks(p.batch * p.dims))

#undef GFN_FAST_BFN_LAUNCH

}  // namespace gfn_fast
