// Schemas of the compiled ops, declared once; each device registers its kernels with TORCH_LIBRARY_IMPL
// (CPU: recurrence.cpp, tree_lstm.cpp, spinn.cpp). Argument conventions: rnnfast/ops/recurrence/common.py, cell codes
// 0 rnn_tanh, 1 rnn_relu, 2 gru, 3 lstm.
#include <Python.h>
#include <torch/library.h>

#include "blocks.h"

TORCH_LIBRARY(rnnfast_C, m) {
  m.def(
      "recurrence_fwd(Tensor gi, Tensor h0, Tensor? c0, Tensor w_hh, Tensor? b_hh, Tensor? w_hr, "
      "Tensor? lengths, int cell, bool reverse, bool need_ws) -> (Tensor, Tensor, Tensor, Tensor)");
  m.def(
      "recurrence_bwd(Tensor grad_y, Tensor grad_hn, Tensor? grad_cn, Tensor h0, Tensor? c0, Tensor w_hh, "
      "Tensor? b_hh, Tensor? w_hr, Tensor? lengths, Tensor y, Tensor ws, int cell, bool reverse) "
      "-> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)");
  // A module's whole layer stack in one call, forward and backward (recurrence.cpp, module_fwd()); autograd
  // and the fake kernels are registered from Python (rnnfast/_ext.py).
  m.def(
      "module_fwd(Tensor x, Tensor? h0, Tensor? c0, Tensor[] weights, Tensor[] masks, Tensor? batch_sizes, "
      "int cell, int num_layers, bool bidirectional, bool has_bias, bool has_proj, int lib, bool need_ws) "
      "-> (Tensor, Tensor, Tensor, Tensor[])");
  m.def(
      "module_bwd(Tensor grad_y, Tensor grad_hn, Tensor? grad_cn, Tensor x, Tensor? h0, Tensor? c0, "
      "Tensor[] weights, Tensor[] masks, Tensor? batch_sizes, Tensor[] saved, Tensor y, int cell, int num_layers, "
      "bool bidirectional, bool has_bias, bool has_proj, int lib, bool need_dx) -> (Tensor, Tensor, Tensor, Tensor[])");
  m.def("gemm_path(int m, int k, int n, int steps=100) -> str");
  // op(a)·b (+ bias) in the blocked kernel: op(a) = a (M, R), or aᵀ with a_t (a (R, M)); b (R, N) -> (M, N).
  m.def("gemm(Tensor a, Tensor b, Tensor? bias=None, bool a_t=False) -> Tensor");
  // The vector code the CPU kernels run: 4 AVX-512, 3 AVX2 + FMA, 1 SSE2, 0 one generic build.
  m.def("isa_level() -> int");
  m.def("team_parts(int T, int B, int cell, int H, bool proj, ScalarType dtype, bool forward=False) -> int");
  m.def("row_parts(int B, int cell, int H, int P, ScalarType dtype, int T=100, bool backward=False) -> int");
  m.def("tree_lstm_fwd(Tensor lstm_in, Tensor c_l, Tensor c_r) -> (Tensor, Tensor)");
  m.def(
      "tree_lstm_bwd(Tensor grad_h, Tensor grad_c, Tensor lstm_in, Tensor c_l, Tensor c_r, Tensor c) "
      "-> (Tensor, Tensor, Tensor)");
  m.def(
      "spinn_fwd(Tensor buffers, Tensor null, Tensor transitions, Tensor w_l, Tensor? b_l, Tensor w_r, "
      "Tensor? w_t, Tensor? w_ih, Tensor? w_hh, Tensor? b_ih, Tensor? b_hh) "
      "-> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)");
  m.def(
      "spinn_bwd(Tensor grad_h, Tensor grad_c, Tensor? grad_hs, Tensor transitions, Tensor ph, Tensor pc, "
      "Tensor gates, Tensor acts, Tensor cs, Tensor hs, Tensor w_l, bool has_b_l, Tensor w_r, "
      "Tensor? w_t, Tensor? w_ih, Tensor? w_hh, bool has_b_ih) "
      "-> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)");
}

// The block cache of large outputs and scratch (blocks.h).
TORCH_LIBRARY_FRAGMENT(rnnfast_C, m) {
  m.def("cache_clear() -> ()", [] { rnnfast::BlockCache::get().clear(); });
  m.def("cache_info() -> (int, int, int)", [] { return rnnfast::BlockCache::get().info(); });
  m.def("cache_limit() -> int", [] { return rnnfast::BlockCache::get().limit(); });
  m.def("empty_cached(int[] size, ScalarType dtype) -> Tensor", [](c10::IntArrayRef size, c10::ScalarType dtype) {
    return rnnfast::BlockCache::get().empty(size, at::TensorOptions().dtype(dtype));
  });
}

// `import rnnfast._C` loads the library (and so runs the registrations above); the module itself is
// empty: the ops are reached through torch.ops.rnnfast_C.
extern "C" PyMODINIT_FUNC PyInit__C(void) {
  static struct PyModuleDef def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&def);
}
