// Parameters of the detailed-balance and sub-trajectory-balance kernels, shared by the launchers
// and the bindings. Plain C++ (no CUDA, no PyTorch): pointers, sizes and strides in elements.
#pragma once

#include <cstdint>

namespace gfn_fast {

// Per-step inputs of one batch (element type scalar_t) and the per-trajectory terminal values
// (acc_t). Padded: trajectory b is row b of [B, T]; packed: steps cu_seqlens[b] .. [b+1]-1.
struct FlowInputs {
  const void* log_pf;
  const void* log_pb;            // nullptr: tree DAG
  const void* log_flow;
  const void* log_state_reward;  // nullptr: not forward-looking
  const int64_t* lengths;        // [B] or cu_seqlens [B+1]
  const void* log_reward;        // acc_t [B]
  const void* beta;              // nullptr or acc_t scalar / [B] (stride_beta)
  int64_t batch, steps;
  int64_t stride_pf_b, stride_pf_t, stride_pb_b, stride_pb_t, stride_fl_b, stride_fl_t, stride_sr_b, stride_sr_t;
  int64_t stride_beta;
  double clip_min, loss_param;
  int loss;
  bool packed;
};

// Gradient outputs: scalar_t buffers shaped like log_pf and contiguous ([B, T] or [N]); the flow
// gradient serves log_flow and log_state_reward alike. Per-trajectory ones are acc_t [B].
struct FlowGrads {
  void* grad_pf;
  void* grad_pb;            // nullptr when there is no log_pb
  void* grad_flow;
  void* grad_log_reward;    // nullptr when not needed
  void* grad_beta;          // nullptr when not needed
};

struct DetailedBalanceArgs {
  FlowInputs in;
  void* rows_out;            // acc_t [B]: sum over t of rho(d_t)
  void* steps_out;           // nullptr, or acc_t contiguous like log_pf: rho(d_t), 0 on padding
};

struct DetailedBalanceGradArgs {
  FlowInputs in;
  FlowGrads out;
  const void* grad;          // acc_t dLoss/drho(d_t), strides (stride_g_b, stride_g_t)
  int64_t stride_g_b, stride_g_t;
};

// Pair weights: row_weight[b] * lambda^(j-i), or row_weight[b] * table[j-i-1] when table != nullptr.
struct SubTBArgs {
  FlowInputs in;
  const void* row_weight;    // acc_t [B] (stride_row_weight)
  const void* table;         // nullptr or acc_t [steps]
  int64_t stride_row_weight;
  double lamda;
  bool running;              // O(T) recurrences (squared / half-squared, no table)
  void* potentials;          // acc_t: a_b(k) at b*(T+1)+k, or cu_seqlens[b]+b+k when packed
  void* rows_out;            // acc_t [B]
};

struct SubTBGradArgs {
  FlowInputs in;             // only lengths, log_reward, beta, batch, steps, clip, loss, packed are read
  FlowGrads out;
  const void* grad_loss;     // acc_t scalar
  const void* potentials;
  void* scratch;             // acc_t, sized like potentials: dLoss/da(k)
  const void* row_weight;
  const void* table;
  int64_t stride_row_weight;
  double lamda;
  bool running;
};

// Launchers (csrc/subtb.cu). `dtype` is the element type code of the log-probs (gfn_fast::DType).
void detailed_balance_forward(const DetailedBalanceArgs& p, int dtype, std::uintptr_t stream);
void detailed_balance_backward(const DetailedBalanceGradArgs& p, int dtype, std::uintptr_t stream);
void subtb_forward(const SubTBArgs& p, int dtype, std::uintptr_t stream);
void subtb_backward(const SubTBGradArgs& p, int dtype, std::uintptr_t stream);

}  // namespace gfn_fast
