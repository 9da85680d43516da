// The pybind11 module gfn_fast._C: turns Python dicts of integers (pointers, sizes, strides,
// stream handles) into kernel parameter structs and calls the launchers. Nothing else.
#include <pybind11/pybind11.h>

#include <cstdint>
#include <string>

#include "gfn_fast/balance.h"

namespace py = pybind11;

namespace {

template <typename T>
T get(const py::dict& args, const char* key) {
  if (!args.contains(key)) throw py::key_error(std::string("gfn_fast._C: missing argument ") + key);
  return args[key].cast<T>();
}

template <typename T>
T* ptr(const py::dict& args, const char* key) {
  return reinterpret_cast<T*>(get<std::uintptr_t>(args, key));
}

void rows_forward(const py::dict& a) {
  gfn_fast::BalanceRows p{};
  p.log_pf = ptr<const void>(a, "log_pf");
  p.log_pb = ptr<const void>(a, "log_pb");
  p.lengths = ptr<const int64_t>(a, "lengths");
  p.log_reward = ptr<const void>(a, "log_reward");
  p.log_z = ptr<const void>(a, "log_z");
  p.beta = ptr<const void>(a, "beta");
  p.batch = get<int64_t>(a, "batch");
  p.steps = get<int64_t>(a, "steps");
  p.stride_pf_b = get<int64_t>(a, "stride_pf_b");
  p.stride_pf_t = get<int64_t>(a, "stride_pf_t");
  p.stride_pb_b = get<int64_t>(a, "stride_pb_b");
  p.stride_pb_t = get<int64_t>(a, "stride_pb_t");
  p.stride_log_z = get<int64_t>(a, "stride_log_z");
  p.stride_beta = get<int64_t>(a, "stride_beta");
  p.clip_min = get<double>(a, "clip_min");
  p.loss_param = get<double>(a, "loss_param");
  p.loss = get<int>(a, "loss");
  p.packed = get<bool>(a, "packed");
  const int dtype = get<int>(a, "dtype");
  void* d = ptr<void>(a, "d");
  void* loss_rows = ptr<void>(a, "loss_rows");
  const auto stream = get<std::uintptr_t>(a, "stream");
  py::gil_scoped_release release;
  gfn_fast::balance_rows_forward(p, dtype, d, loss_rows, stream);
}

void rows_backward(const py::dict& a) {
  gfn_fast::BalanceRowsGrad p{};
  p.grad_rows = ptr<const void>(a, "grad_rows");
  p.d = ptr<const void>(a, "d");
  p.lengths = ptr<const int64_t>(a, "lengths");
  p.log_reward = ptr<const void>(a, "log_reward");
  p.beta = ptr<const void>(a, "beta");
  p.grad_pf = ptr<void>(a, "grad_pf");
  p.grad_pb = ptr<void>(a, "grad_pb");
  p.grad_row = ptr<void>(a, "grad_row");
  p.grad_log_reward = ptr<void>(a, "grad_log_reward");
  p.grad_beta = ptr<void>(a, "grad_beta");
  p.batch = get<int64_t>(a, "batch");
  p.steps = get<int64_t>(a, "steps");
  p.stride_grad_rows = get<int64_t>(a, "stride_grad_rows");
  p.stride_gpf_b = get<int64_t>(a, "stride_gpf_b");
  p.stride_gpf_t = get<int64_t>(a, "stride_gpf_t");
  p.stride_gpb_b = get<int64_t>(a, "stride_gpb_b");
  p.stride_gpb_t = get<int64_t>(a, "stride_gpb_t");
  p.stride_beta = get<int64_t>(a, "stride_beta");
  p.weight = get<double>(a, "weight");
  p.clip_min = get<double>(a, "clip_min");
  p.loss_param = get<double>(a, "loss_param");
  p.loss = get<int>(a, "loss");
  p.packed = get<bool>(a, "packed");
  p.from_residual = get<bool>(a, "from_residual");
  const int dtype = get<int>(a, "dtype");
  const auto stream = get<std::uintptr_t>(a, "stream");
  py::gil_scoped_release release;
  gfn_fast::balance_rows_backward(p, dtype, stream);
}

}  // namespace

// ---- Detailed balance / sub-trajectory balance (csrc/subtb.cu) ----
#include "gfn_fast/subtb.h"

namespace {

gfn_fast::FlowInputs flow_inputs(const py::dict& a) {
  gfn_fast::FlowInputs p{};
  p.log_pf = ptr<const void>(a, "log_pf");
  p.log_pb = ptr<const void>(a, "log_pb");
  p.log_flow = ptr<const void>(a, "log_flow");
  p.log_state_reward = ptr<const void>(a, "log_state_reward");
  p.lengths = ptr<const int64_t>(a, "lengths");
  p.log_reward = ptr<const void>(a, "log_reward");
  p.beta = ptr<const void>(a, "beta");
  p.batch = get<int64_t>(a, "batch");
  p.steps = get<int64_t>(a, "steps");
  p.stride_pf_b = get<int64_t>(a, "stride_pf_b");
  p.stride_pf_t = get<int64_t>(a, "stride_pf_t");
  p.stride_pb_b = get<int64_t>(a, "stride_pb_b");
  p.stride_pb_t = get<int64_t>(a, "stride_pb_t");
  p.stride_fl_b = get<int64_t>(a, "stride_fl_b");
  p.stride_fl_t = get<int64_t>(a, "stride_fl_t");
  p.stride_sr_b = get<int64_t>(a, "stride_sr_b");
  p.stride_sr_t = get<int64_t>(a, "stride_sr_t");
  p.stride_beta = get<int64_t>(a, "stride_beta");
  p.clip_min = get<double>(a, "clip_min");
  p.loss_param = get<double>(a, "loss_param");
  p.loss = get<int>(a, "loss");
  p.packed = get<bool>(a, "packed");
  return p;
}

gfn_fast::FlowGrads flow_grads(const py::dict& a) {
  gfn_fast::FlowGrads g{};
  g.grad_pf = ptr<void>(a, "grad_pf");
  g.grad_pb = ptr<void>(a, "grad_pb");
  g.grad_flow = ptr<void>(a, "grad_flow");
  g.grad_log_reward = ptr<void>(a, "grad_log_reward");
  g.grad_beta = ptr<void>(a, "grad_beta");
  return g;
}

void db_forward(const py::dict& a) {
  gfn_fast::DetailedBalanceArgs p{};
  p.in = flow_inputs(a);
  p.rows_out = ptr<void>(a, "rows_out");
  p.steps_out = ptr<void>(a, "steps_out");
  const int dtype = get<int>(a, "dtype");
  const auto stream = get<std::uintptr_t>(a, "stream");
  py::gil_scoped_release release;
  gfn_fast::detailed_balance_forward(p, dtype, stream);
}

void db_backward(const py::dict& a) {
  gfn_fast::DetailedBalanceGradArgs p{};
  p.in = flow_inputs(a);
  p.out = flow_grads(a);
  p.grad = ptr<const void>(a, "grad");
  p.stride_g_b = get<int64_t>(a, "stride_g_b");
  p.stride_g_t = get<int64_t>(a, "stride_g_t");
  const int dtype = get<int>(a, "dtype");
  const auto stream = get<std::uintptr_t>(a, "stream");
  py::gil_scoped_release release;
  gfn_fast::detailed_balance_backward(p, dtype, stream);
}

void subtb_forward(const py::dict& a) {
  gfn_fast::SubTBArgs p{};
  p.in = flow_inputs(a);
  p.row_weight = ptr<const void>(a, "row_weight");
  p.table = ptr<const void>(a, "table");
  p.stride_row_weight = get<int64_t>(a, "stride_row_weight");
  p.lamda = get<double>(a, "lamda");
  p.running = get<bool>(a, "running");
  p.potentials = ptr<void>(a, "potentials");
  p.rows_out = ptr<void>(a, "rows_out");
  const int dtype = get<int>(a, "dtype");
  const auto stream = get<std::uintptr_t>(a, "stream");
  py::gil_scoped_release release;
  gfn_fast::subtb_forward(p, dtype, stream);
}

void subtb_backward(const py::dict& a) {
  gfn_fast::SubTBGradArgs p{};
  p.in = flow_inputs(a);
  p.out = flow_grads(a);
  p.grad_loss = ptr<const void>(a, "grad_loss");
  p.potentials = ptr<const void>(a, "potentials");
  p.scratch = ptr<void>(a, "scratch");
  p.row_weight = ptr<const void>(a, "row_weight");
  p.table = ptr<const void>(a, "table");
  p.stride_row_weight = get<int64_t>(a, "stride_row_weight");
  p.lamda = get<double>(a, "lamda");
  p.running = get<bool>(a, "running");
  const int dtype = get<int>(a, "dtype");
  const auto stream = get<std::uintptr_t>(a, "stream");
  py::gil_scoped_release release;
  gfn_fast::subtb_backward(p, dtype, stream);
}

void register_subtb(py::module_& m) {
  m.def("detailed_balance_forward", &db_forward, "DB per-trajectory sums and per-step losses");
  m.def("detailed_balance_backward", &db_backward, "DB gradients");
  m.def("subtb_forward", &subtb_forward, "SubTB per-trajectory weighted sums and potentials");
  m.def("subtb_backward", &subtb_backward, "SubTB gradients from the saved potentials");
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "gfn_fast CUDA kernels (framework-free; called through gfn_fast.cuda)";
  m.def("balance_rows_forward", &rows_forward, "TB/VarGrad per-trajectory residuals and losses");
  m.def("balance_rows_backward", &rows_backward, "TB/VarGrad gradients of the per-trajectory sums");
  register_subtb(m);
}
