// Parameters of the action-sampling kernels, shared by the launchers and the bindings.
// Plain C++ (no CUDA, no PyTorch): pointers, sizes and strides in elements.
#pragma once

#include <cstdint>

namespace gfn_fast {

// Inputs shared by sampling, log-prob and its backward. Per-row tensors (scale, inv_temperature,
// epsilon) are acc_t (float64 when the logits are float64, else float32) with stride 0 for a
// scalar; nullptr means "not given" (scale 1, temperature 1, epsilon 0).
struct SamplingRows {
  const void* logits;           // [rows, width], element type `dtype`, strides (stride_r, stride_a)
  const uint8_t* mask;          // nullptr, bool-as-uint8 [rows, width] or packed [rows, ceil(width/8)]
  const void* scale;
  const void* inv_temperature;
  const void* epsilon;
  int64_t rows, width;
  int64_t stride_r, stride_a, stride_mr, stride_ma, stride_scale, stride_inv_t, stride_eps;
  double clip_lo, clip_hi;      // +-inf when there is no clip
  bool packed;
  int64_t chunk;                // columns (log-prob) or column pairs (sampling) per program
  int64_t splits;               // programs per row; > 1 writes partials
};

struct SamplingOut {
  uint64_t seed, offset;
  int64_t* actions;             // [rows]
  void* log_pi;                 // acc_t [rows]
  void* log_mu;                 // nullptr or acc_t [rows]
  void* entropy;                // nullptr or acc_t [rows]
  void* lse;                    // acc_t [rows]
  void* part_f;                 // acc_t [6, rows, splits] when splits > 1
  int64_t* part_i;              // int64 [5, rows, splits] when splits > 1
};

struct LogProbOut {
  const int64_t* actions;       // [rows]
  void* log_pi;                 // acc_t [rows]
  void* lse;                    // acc_t [rows]
  void* part;                   // acc_t [3, rows, splits] when splits > 1
};

struct LogProbGrad {
  const void* grad;             // acc_t [rows] (contiguous)
  const int64_t* actions;       // [rows]
  const void* lse;              // acc_t [rows]
  void* grad_logits;            // nullptr or element type `dtype`, strides (stride_gr, stride_ga)
  void* grad_scale;             // nullptr or acc_t [rows, splits]
  int64_t stride_gr, stride_ga;
};

// Launchers (csrc/sampling.cu). Throw std::runtime_error on a launch failure.
void sample_actions_forward(const SamplingRows& p, const SamplingOut& out, int dtype, std::uintptr_t stream);
void action_log_prob_forward(const SamplingRows& p, const LogProbOut& out, int dtype, std::uintptr_t stream);
void action_log_prob_backward(const SamplingRows& p, const LogProbGrad& g, int dtype, std::uintptr_t stream);

}  // namespace gfn_fast
