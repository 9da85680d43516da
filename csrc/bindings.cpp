// The pybind11 module gfn_fast._C: turns Python dicts of integers (pointers, sizes, strides,
// stream handles) into kernel parameter structs and calls the launchers. Nothing else.
#include <pybind11/pybind11.h>

#include <cstdint>
#include <string>

#include "gfn_fast/balance.h"
#include "gfn_fast/bfn.h"

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


// ---- action sampling (csrc/sampling.cu) ----
#include "gfn_fast/sampling.h"

namespace {

gfn_fast::SamplingRows sampling_rows(const py::dict& a) {
  gfn_fast::SamplingRows p{};
  p.logits = ptr<const void>(a, "logits");
  p.mask = ptr<const uint8_t>(a, "mask");
  p.scale = ptr<const void>(a, "scale");
  p.inv_temperature = ptr<const void>(a, "inv_temperature");
  p.epsilon = ptr<const void>(a, "epsilon");
  p.rows = get<int64_t>(a, "rows");
  p.width = get<int64_t>(a, "width");
  p.stride_r = get<int64_t>(a, "stride_r");
  p.stride_a = get<int64_t>(a, "stride_a");
  p.stride_mr = get<int64_t>(a, "stride_mr");
  p.stride_ma = get<int64_t>(a, "stride_ma");
  p.stride_scale = get<int64_t>(a, "stride_scale");
  p.stride_inv_t = get<int64_t>(a, "stride_inv_t");
  p.stride_eps = get<int64_t>(a, "stride_eps");
  p.clip_lo = get<double>(a, "clip_lo");
  p.clip_hi = get<double>(a, "clip_hi");
  p.packed = get<bool>(a, "packed");
  p.chunk = get<int64_t>(a, "chunk");
  p.splits = get<int64_t>(a, "splits");
  return p;
}

void sample_forward(const py::dict& a) {
  const gfn_fast::SamplingRows p = sampling_rows(a);
  gfn_fast::SamplingOut o{};
  o.seed = get<uint64_t>(a, "seed");
  o.offset = get<uint64_t>(a, "offset");
  o.actions = ptr<int64_t>(a, "actions");
  o.log_pi = ptr<void>(a, "log_pi");
  o.log_mu = ptr<void>(a, "log_mu");
  o.entropy = ptr<void>(a, "entropy");
  o.lse = ptr<void>(a, "lse");
  o.part_f = ptr<void>(a, "part_f");
  o.part_i = ptr<int64_t>(a, "part_i");
  const int dtype = get<int>(a, "dtype");
  const auto stream = get<std::uintptr_t>(a, "stream");
  py::gil_scoped_release release;
  gfn_fast::sample_actions_forward(p, o, dtype, stream);
}

void log_prob_forward(const py::dict& a) {
  const gfn_fast::SamplingRows p = sampling_rows(a);
  gfn_fast::LogProbOut o{};
  o.actions = ptr<const int64_t>(a, "actions");
  o.log_pi = ptr<void>(a, "log_pi");
  o.lse = ptr<void>(a, "lse");
  o.part = ptr<void>(a, "part");
  const int dtype = get<int>(a, "dtype");
  const auto stream = get<std::uintptr_t>(a, "stream");
  py::gil_scoped_release release;
  gfn_fast::action_log_prob_forward(p, o, dtype, stream);
}

void log_prob_backward(const py::dict& a) {
  const gfn_fast::SamplingRows p = sampling_rows(a);
  gfn_fast::LogProbGrad g{};
  g.grad = ptr<const void>(a, "grad");
  g.actions = ptr<const int64_t>(a, "actions");
  g.lse = ptr<const void>(a, "lse");
  g.grad_logits = ptr<void>(a, "grad_logits");
  g.grad_scale = ptr<void>(a, "grad_scale");
  g.stride_gr = get<int64_t>(a, "stride_gr");
  g.stride_ga = get<int64_t>(a, "stride_ga");
  const int dtype = get<int>(a, "dtype");
  const auto stream = get<std::uintptr_t>(a, "stream");
  py::gil_scoped_release release;
  gfn_fast::action_log_prob_backward(p, g, dtype, stream);
}

void register_sampling(py::module_& m) {
  m.def("sample_actions_forward", &sample_forward, "masked logit-scaled epsilon sampling, one pass");
  m.def("action_log_prob_forward", &log_prob_forward, "log-probability of given actions");
  m.def("action_log_prob_backward", &log_prob_backward, "gradient of action_log_prob");
}

}  // namespace
// ---- end action sampling ----
// ---- Bayesian Flow Networks: one argument struct for every op; keys absent from the dict keep
// the struct's defaults (nullptr / 0 / false).
namespace {

template <typename T>
void maybe(const py::dict& args, const char* key, T& field) {
  if (args.contains(key)) field = args[key].cast<T>();
}

template <typename T>
void maybe_ptr(const py::dict& args, const char* key, T*& field) {
  if (args.contains(key)) field = reinterpret_cast<T*>(args[key].cast<std::uintptr_t>());
}

template <void (*Launch)(const gfn_fast::BfnArgs&, int, std::uintptr_t)>
void bfn_call(const py::dict& a) {
  gfn_fast::BfnArgs p{};
  maybe_ptr(a, "x", p.x);
  maybe_ptr(a, "mu", p.mu);
  maybe_ptr(a, "eps", p.eps);
  maybe_ptr(a, "rho", p.rho);
  maybe_ptr(a, "t", p.t);
  maybe_ptr(a, "alpha", p.alpha);
  maybe_ptr(a, "grad", p.grad);
  maybe_ptr(a, "index", p.index);
  maybe_ptr(a, "logits", p.logits);
  maybe_ptr(a, "out", p.out);
  maybe_ptr(a, "out2", p.out2);
  maybe(a, "batch", p.batch);
  maybe(a, "dims", p.dims);
  maybe(a, "classes", p.classes);
  maybe(a, "bins", p.bins);
  maybe(a, "stride_rho_b", p.stride_rho_b);
  maybe(a, "stride_rho_d", p.stride_rho_d);
  maybe(a, "log_sigma_1", p.log_sigma_1);
  maybe(a, "weight_scale", p.weight_scale);
  maybe(a, "t_min", p.t_min);
  maybe(a, "x_min", p.x_min);
  maybe(a, "x_max", p.x_max);
  maybe(a, "beta_1", p.beta_1);
  maybe(a, "clamp", p.clamp);
  maybe(a, "seed", p.seed);
  maybe(a, "offset", p.offset);
  maybe(a, "n_steps", p.n_steps);
  maybe(a, "coef_a", p.coef_a);
  maybe(a, "coef_c", p.coef_c);
  maybe(a, "alpha_value", p.alpha_value);
  maybe(a, "inv_sqrt_alpha", p.inv_sqrt_alpha);
  maybe_ptr(a, "state", p.state);
  maybe_ptr(a, "draw", p.draw);
  maybe(a, "update", p.update);
  maybe(a, "log_output", p.log_output);
  const int dtype = get<int>(a, "dtype");
  const auto stream = get<std::uintptr_t>(a, "stream");
  py::gil_scoped_release release;
  Launch(p, dtype, stream);
}

void register_bfn(py::module_& m) {
  m.def("bfn_continuous_output", &bfn_call<gfn_fast::bfn_continuous_output>);
  m.def("bfn_continuous_loss_forward", &bfn_call<gfn_fast::bfn_continuous_loss_forward>);
  m.def("bfn_continuous_update", &bfn_call<gfn_fast::bfn_continuous_update>);
  m.def("bfn_discretised_loss_forward", &bfn_call<gfn_fast::bfn_discretised_loss_forward>);
  m.def("bfn_discretised_loss_backward", &bfn_call<gfn_fast::bfn_discretised_loss_backward>);
  m.def("bfn_discretised_probs", &bfn_call<gfn_fast::bfn_discretised_probs>);
  m.def("bfn_discrete_loss_forward", &bfn_call<gfn_fast::bfn_discrete_loss_forward>);
  m.def("bfn_discrete_loss_backward", &bfn_call<gfn_fast::bfn_discrete_loss_backward>);
  m.def("bfn_discrete_update", &bfn_call<gfn_fast::bfn_discrete_update>);
  m.def("bfn_continuous_flow", &bfn_call<gfn_fast::bfn_continuous_flow>);
  m.def("bfn_discrete_flow", &bfn_call<gfn_fast::bfn_discrete_flow>);
  m.def("bfn_discrete_nstep_loss_forward", &bfn_call<gfn_fast::bfn_discrete_nstep_loss_forward>);
  m.def("bfn_discrete_nstep_loss_backward", &bfn_call<gfn_fast::bfn_discrete_nstep_loss_backward>);
  m.def("bfn_continuous_step", &bfn_call<gfn_fast::bfn_continuous_step>);
  m.def("bfn_discretised_step", &bfn_call<gfn_fast::bfn_discretised_step>);
  m.def("bfn_discrete_step", &bfn_call<gfn_fast::bfn_discrete_step>);
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
  register_sampling(m);  // action sampling
  register_bfn(m);  // Bayesian Flow Networks
  register_subtb(m);  // detailed and sub-trajectory balance
}
