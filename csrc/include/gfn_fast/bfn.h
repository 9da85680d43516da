// Parameters of the Bayesian Flow Network kernels, shared by the launchers and the bindings.
// Plain C++ (no CUDA, no PyTorch): pointers, sizes and strides in elements. One struct serves
// every BFN op; each launcher documents which fields it reads (unused pointers stay nullptr).
#pragma once

#include <cstdint>

namespace gfn_fast {

struct BfnArgs {
  // Data in scalar_t (the `dtype` code of the launcher); per-sample vectors and losses in acc_t.
  const void* x = nullptr;          // [B, D] data (continuous / discretised)
  const void* mu = nullptr;         // [B, D] flow mean, or the network's mu_x (discretised)
  const void* eps = nullptr;        // [B, D] network eps_hat, log_sigma_x, or sender y
  const void* rho = nullptr;        // acc_t, element (b, d) at b * stride_rho_b + d * stride_rho_d
  const void* t = nullptr;          // acc_t [B]
  const void* alpha = nullptr;      // acc_t [B]
  const void* grad = nullptr;       // acc_t [B] upstream gradient of a per-sample loss
  const int64_t* index = nullptr;   // [B, D] class indices (discrete)
  const void* logits = nullptr;     // [B, D, K] network logits or log theta (discrete)
  void* out = nullptr;              // result: [B] loss (acc_t) or an array like the data
  void* out2 = nullptr;             // second result (discretised backward: d/d log_sigma_x;
                                    // continuous loss forward: d loss / d eps_hat, optional)
  int64_t batch = 0, dims = 0, classes = 0, bins = 0;
  int64_t stride_rho_b = 0, stride_rho_d = 0;
  double log_sigma_1 = 0, weight_scale = 0, t_min = 0, x_min = 0, x_max = 0, beta_1 = 0;
  bool clamp = false;
  // Noisy ops: Philox (seed, offset) (contract: gfn_fast/reference/bfn.py, "noise").
  uint64_t seed = 0, offset = 0;
  int64_t n_steps = 0;
  double coef_a = 0, coef_c = 0, alpha_value = 0, inv_sqrt_alpha = 0;
  void* state = nullptr;            // generation state updated in place (mu or log theta)
  void* draw = nullptr;             // drawn bin centres (scalar_t) or classes (int64)
  bool update = false, log_output = false;
};

// Launchers (csrc/bfn.cu). `dtype` is the element type of the data arrays (gfn_fast::DType);
// acc_t is float64 for float64 data, else float32. Throw std::runtime_error on a launch failure.
void bfn_continuous_output(const BfnArgs& p, int dtype, std::uintptr_t stream);
void bfn_continuous_loss_forward(const BfnArgs& p, int dtype, std::uintptr_t stream);
void bfn_continuous_update(const BfnArgs& p, int dtype, std::uintptr_t stream);
void bfn_discretised_loss_forward(const BfnArgs& p, int dtype, std::uintptr_t stream);
void bfn_discretised_loss_backward(const BfnArgs& p, int dtype, std::uintptr_t stream);
void bfn_discretised_probs(const BfnArgs& p, int dtype, std::uintptr_t stream);
void bfn_discrete_loss_forward(const BfnArgs& p, int dtype, std::uintptr_t stream);
void bfn_discrete_loss_backward(const BfnArgs& p, int dtype, std::uintptr_t stream);
void bfn_discrete_update(const BfnArgs& p, int dtype, std::uintptr_t stream);
void bfn_continuous_flow(const BfnArgs& p, int dtype, std::uintptr_t stream);
void bfn_discrete_flow(const BfnArgs& p, int dtype, std::uintptr_t stream);
void bfn_discrete_nstep_loss_forward(const BfnArgs& p, int dtype, std::uintptr_t stream);
void bfn_discrete_nstep_loss_backward(const BfnArgs& p, int dtype, std::uintptr_t stream);
void bfn_continuous_step(const BfnArgs& p, int dtype, std::uintptr_t stream);
void bfn_discretised_step(const BfnArgs& p, int dtype, std::uintptr_t stream);
void bfn_discrete_step(const BfnArgs& p, int dtype, std::uintptr_t stream);

}  // namespace gfn_fast
