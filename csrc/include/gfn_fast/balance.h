// Parameters of the trajectory-balance kernels, shared by the launchers and the bindings.
// Plain C++ (no CUDA, no PyTorch): pointers, sizes and strides in elements.
#pragma once

#include <cstdint>

namespace gfn_fast {

struct BalanceRows {
  const void* log_pf;
  const void* log_pb;          // nullptr: tree DAG
  const int64_t* lengths;      // [B] or cu_seqlens [B+1]
  const void* log_reward;      // [B], acc_t
  const void* log_z;           // nullptr or scalar / [B] (stride_log_z), acc_t
  const void* beta;            // nullptr or scalar / [B] (stride_beta), acc_t
  int64_t batch, steps;
  int64_t stride_pf_b, stride_pf_t, stride_pb_b, stride_pb_t, stride_log_z, stride_beta;
  double clip_min, loss_param;
  int loss;
  bool packed;
};

struct BalanceRowsGrad {
  const void* grad_rows;       // acc_t, stride stride_grad_rows (0 for a reduced loss)
  const void* d;               // acc_t [B]
  const int64_t* lengths;
  const void* log_reward;      // acc_t [B]
  const void* beta;            // nullptr or acc_t scalar / [B]
  void* grad_pf;               // scalar_t, strides (stride_gpf_b, stride_gpf_t)
  void* grad_pb;               // nullptr when there is no log_pb
  void* grad_row;              // acc_t [B]
  void* grad_log_reward;       // nullptr or acc_t [B]
  void* grad_beta;             // nullptr or acc_t [B]
  int64_t batch, steps;
  int64_t stride_grad_rows, stride_gpf_b, stride_gpf_t, stride_gpb_b, stride_gpb_t, stride_beta;
  double weight, clip_min, loss_param;
  int loss;
  bool packed, from_residual;
};

// Launchers (csrc/balance.cu). `dtype` is the element type of the log-probs (gfn_fast::DType);
// per-row tensors are float64 when dtype is float64, else float32. Throw std::runtime_error on a
// launch failure.
void balance_rows_forward(const BalanceRows& p, int dtype, void* d_out, void* loss_out, std::uintptr_t stream);
void balance_rows_backward(const BalanceRowsGrad& p, int dtype, std::uintptr_t stream);

}  // namespace gfn_fast
