// Launchers of the action-sampling kernels: grid choice and error checks (one warp per row and
// chunk; eight rows per 256-thread block; gridDim.y = chunks per row).
#include "gfn_fast/launch.cuh"
#include "gfn_fast/sampling.cuh"

namespace gfn_fast {

namespace {
constexpr int kThreads = 256;
constexpr int kRowsPerBlock = kThreads / 32;

dim3 grid_for(const SamplingRows& p) {
  return dim3(blocks_for(p.rows, kRowsPerBlock), static_cast<unsigned int>(p.splits > 0 ? p.splits : 1));
}
}  // namespace

void sample_actions_forward(const SamplingRows& p, const SamplingOut& out, int dtype, std::uintptr_t stream) {
  if (p.rows <= 0) return;
  cudaStream_t s = reinterpret_cast<cudaStream_t>(stream);
  dispatch_float(dtype, [&]<typename scalar_t, typename acc_t>() {
    sample_actions_kernel<scalar_t, acc_t><<<grid_for(p), kThreads, 0, s>>>(p, out);
  });
  check_launch("sample_actions_forward");
}

void action_log_prob_forward(const SamplingRows& p, const LogProbOut& out, int dtype, std::uintptr_t stream) {
  if (p.rows <= 0) return;
  cudaStream_t s = reinterpret_cast<cudaStream_t>(stream);
  dispatch_float(dtype, [&]<typename scalar_t, typename acc_t>() {
    action_log_prob_kernel<scalar_t, acc_t><<<grid_for(p), kThreads, 0, s>>>(p, out);
  });
  check_launch("action_log_prob_forward");
}

void action_log_prob_backward(const SamplingRows& p, const LogProbGrad& g, int dtype, std::uintptr_t stream) {
  if (p.rows <= 0) return;
  cudaStream_t s = reinterpret_cast<cudaStream_t>(stream);
  dispatch_float(dtype, [&]<typename scalar_t, typename acc_t>() {
    action_log_prob_backward_kernel<scalar_t, acc_t><<<grid_for(p), kThreads, 0, s>>>(p, g);
  });
  check_launch("action_log_prob_backward");
}

}  // namespace gfn_fast
