// Tree-LSTM composition (the SPINN reduce's cell), forward and backward fused into one pass each.
//
// Dimensions: R rows, H hidden. lstm_in (R, 5H) holds the chunks a, i, f1, f2, o;
//   c = tanh(a)·σ(i) + σ(f1)·c_l + σ(f2)·c_r,  h = σ(o)·tanh(c).
// Reference: rnnfast/ops/tree_lstm/reference.py.
#include <torch/library.h>

#include <ATen/Parallel.h>

#include "common.h"

namespace rnnfast {
namespace {

using at::Tensor;

// Rows [r0, r1): h, c (R, H).
template <typename scalar_t>
RNNFAST_CLONES void tree_lstm_fwd_rows(int64_t r0, int64_t r1, int64_t H, const scalar_t* x, const scalar_t* cl,
                                       const scalar_t* cr, scalar_t* h, scalar_t* c) {
  for (int64_t r = r0; r < r1; ++r) {
    const scalar_t* xr = x + r * 5 * H;
    RNNFAST_IVDEP
    for (int64_t j = 0; j < H; ++j) {
      scalar_t cv = tanh_fast(xr[j]) * sigmoid_fast(xr[H + j]) + sigmoid_fast(xr[2 * H + j]) * cl[r * H + j] +
                    sigmoid_fast(xr[3 * H + j]) * cr[r * H + j];
      c[r * H + j] = cv;
      h[r * H + j] = sigmoid_fast(xr[4 * H + j]) * tanh_fast(cv);
    }
  }
}

// Rows [r0, r1): d (R, 5H) gradient w.r.t. lstm_in, dcl, dcr (R, H).
template <typename scalar_t>
RNNFAST_CLONES void tree_lstm_bwd_rows(int64_t r0, int64_t r1, int64_t H, const scalar_t* gh, const scalar_t* gc,
                                       const scalar_t* x, const scalar_t* cl, const scalar_t* cr, const scalar_t* c,
                                       scalar_t* d, scalar_t* dcl, scalar_t* dcr) {
  for (int64_t r = r0; r < r1; ++r) {
    const scalar_t* xr = x + r * 5 * H;
    scalar_t* dr = d + r * 5 * H;
    RNNFAST_IVDEP
    for (int64_t j = 0; j < H; ++j) {
      const int64_t k = r * H + j;
      scalar_t ta = tanh_fast(xr[j]), si = sigmoid_fast(xr[H + j]), sf1 = sigmoid_fast(xr[2 * H + j]),
               sf2 = sigmoid_fast(xr[3 * H + j]), so = sigmoid_fast(xr[4 * H + j]);
      scalar_t tc = tanh_fast(c[k]);
      scalar_t dc = gc[k] + gh[k] * so * (1 - tc * tc);
      dr[j] = dc * si * (1 - ta * ta);
      dr[H + j] = dc * ta * si * (1 - si);
      dr[2 * H + j] = dc * cl[k] * sf1 * (1 - sf1);
      dr[3 * H + j] = dc * cr[k] * sf2 * (1 - sf2);
      dr[4 * H + j] = gh[k] * tc * so * (1 - so);
      dcl[k] = dc * sf1;
      dcr[k] = dc * sf2;
    }
  }
}

void check(const char* name, const Tensor& t, const Tensor& ref, at::IntArrayRef shape) {
  TORCH_CHECK(t.device().is_cpu(), "rnnfast_C: ", name, ": expected a CPU tensor, got ", t.device());
  TORCH_CHECK(t.scalar_type() == ref.scalar_type(), "rnnfast_C: ", name, ": expected dtype ", ref.scalar_type(),
              ", got ", t.scalar_type());
  TORCH_CHECK(t.sizes() == shape, "rnnfast_C: ", name, ": expected shape ", shape, ", got ", t.sizes());
}

int64_t hidden(const Tensor& lstm_in) {
  TORCH_CHECK(lstm_in.dim() == 2 && lstm_in.size(1) % 5 == 0, "rnnfast_C: lstm_in: expected (R, 5·H), got ",
              lstm_in.sizes());
  TORCH_CHECK(lstm_in.scalar_type() == at::kFloat || lstm_in.scalar_type() == at::kDouble,
              "rnnfast_C: lstm_in: expected float32 or float64, got ", lstm_in.scalar_type());
  return lstm_in.size(1) / 5;
}

// Rows per task: enough elements (~16K) that a thread's share outweighs waking it.
int64_t grain(int64_t H) { return std::max<int64_t>(1, 16384 / std::max<int64_t>(H, 1)); }

std::tuple<Tensor, Tensor> tree_lstm_fwd(const Tensor& lstm_in, const Tensor& c_l, const Tensor& c_r) {
  const int64_t H = hidden(lstm_in), R = lstm_in.size(0);
  check("c_l", c_l, lstm_in, {R, H});
  check("c_r", c_r, lstm_in, {R, H});
  Tensor x = lstm_in.contiguous(), cl = c_l.contiguous(), cr = c_r.contiguous();
  Tensor h = new_output({R, H}, x.options()), c = new_output({R, H}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "tree_lstm_fwd", [&] {
    at::parallel_for(0, R, grain(H), [&](int64_t r0, int64_t r1) {
      tree_lstm_fwd_rows<scalar_t>(r0, r1, H, x.data_ptr<scalar_t>(), cl.data_ptr<scalar_t>(),
                                   cr.data_ptr<scalar_t>(), h.data_ptr<scalar_t>(), c.data_ptr<scalar_t>());
    });
  });
  return {h, c};
}

std::tuple<Tensor, Tensor, Tensor> tree_lstm_bwd(const Tensor& grad_h, const Tensor& grad_c, const Tensor& lstm_in,
                                                 const Tensor& c_l, const Tensor& c_r, const Tensor& c) {
  const int64_t H = hidden(lstm_in), R = lstm_in.size(0);
  for (auto& [name, t] : {std::pair<const char*, const Tensor&>{"grad_h", grad_h}, {"grad_c", grad_c},
                          {"c_l", c_l}, {"c_r", c_r}, {"c", c}}) {
    check(name, t, lstm_in, {R, H});
  }
  Tensor gh = grad_h.contiguous(), gc = grad_c.contiguous(), x = lstm_in.contiguous(), cl = c_l.contiguous(),
         cr = c_r.contiguous(), cc = c.contiguous();
  Tensor d = new_output({R, 5 * H}, x.options());
  Tensor dcl = new_output({R, H}, x.options()), dcr = new_output({R, H}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "tree_lstm_bwd", [&] {
    at::parallel_for(0, R, grain(H), [&](int64_t r0, int64_t r1) {
      tree_lstm_bwd_rows<scalar_t>(r0, r1, H, gh.data_ptr<scalar_t>(), gc.data_ptr<scalar_t>(),
                                   x.data_ptr<scalar_t>(), cl.data_ptr<scalar_t>(), cr.data_ptr<scalar_t>(),
                                   cc.data_ptr<scalar_t>(), d.data_ptr<scalar_t>(), dcl.data_ptr<scalar_t>(),
                                   dcr.data_ptr<scalar_t>());
    });
  });
  return {d, dcl, dcr};
}

}  // namespace

TORCH_LIBRARY_IMPL(rnnfast_C, CPU, m) {
  m.impl("tree_lstm_fwd", &tree_lstm_fwd);
  m.impl("tree_lstm_bwd", &tree_lstm_bwd);
}

}  // namespace rnnfast
