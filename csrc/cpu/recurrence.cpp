// CPU recurrence: one forward and one backward time loop, templated on the cell (cells.h).
//
// Op contract, saved-activation layout and lengths/reverse semantics: rnnfast/ops/recurrence/common.py.
// Dimensions: T time, B batch, H hidden, G gates, S saved per unit, N = P (projection) or H, the width
// of the state h and of the outputs y.
//
// Per step, forward: gh = h·W_hhᵀ (StepMatmul), then the cell's pointwise code per valid row, then the
// projection h = u·W_hrᵀ for an LSTM with proj_size. Backward walks the steps in the opposite order:
// pointwise gate gradients per row, dh_{t-1} = dgh·W_hh; dW_hh, db_hh and dW_hr are GEMMs after the loop.
#include <torch/library.h>

#include <vector>

#include "cells.h"
#include "common.h"
#include "gemm.h"
#include "matmul.h"

namespace rnnfast {
namespace {

using at::Tensor;

// ---------------------------------------------------------------------------------------------
// Pointwise over the B rows of one step (ISA-cloned; the cell code is inlined into each clone).

template <typename Cell, typename scalar_t, bool Save>
RNNFAST_CLONES void forward_rows(int64_t b0, int64_t b1, int64_t H, const uint8_t* valid, const scalar_t* gi, const scalar_t* gh,
                                 const scalar_t* bh, const scalar_t* hp, int64_t ldh, scalar_t* c, scalar_t* hout,
                                 scalar_t* ws) {
  constexpr int64_t G = Cell::G, S = Cell::S;
  for (int64_t b = b0; b < b1; ++b) {
    scalar_t* wsb = Save ? ws + b * S * H : nullptr;
    if (valid != nullptr && !valid[b]) {
      // Not computed: the state stays frozen. Saved values are zeroed so that nothing downstream
      // can read uninitialised memory.
      if (Save) std::fill(wsb, wsb + S * H, scalar_t(0));
      continue;
    }
    FwdRow<scalar_t> row{gi + b * G * H, gh + b * G * H, bh, hp + b * ldh, c ? c + b * H : nullptr,
                         hout + b * H, wsb};
    Cell::template forward<scalar_t, Save>(row, H);
  }
}

template <typename Cell, typename scalar_t>
RNNFAST_CLONES void backward_rows(int64_t b0, int64_t b1, int64_t H, const uint8_t* valid, const scalar_t* dh,
                                  const scalar_t* ws, const scalar_t* y, int64_t ldy, const scalar_t* const* hp,
                                  const scalar_t* const* cp, scalar_t* dc, scalar_t* dgi, scalar_t* dgh,
                                  scalar_t* direct, scalar_t* u) {
  constexpr int64_t G = Cell::G, S = Cell::S;
  for (int64_t b = b0; b < b1; ++b) {
    scalar_t* dgib = dgi + b * G * H;
    scalar_t* dghb = dgh + b * G * H;
    scalar_t* ub = u ? u + b * H : nullptr;
    if (valid != nullptr && !valid[b]) {
      std::fill(dgib, dgib + G * H, scalar_t(0));
      if (dgh != dgi) std::fill(dghb, dghb + G * H, scalar_t(0));
      if (ub) std::fill(ub, ub + H, scalar_t(0));
      continue;
    }
    BwdRow<scalar_t> row{dh + b * H, ws + b * S * H, y + b * ldy, hp ? hp[b] : nullptr, cp ? cp[b] : nullptr,
                         dc ? dc + b * H : nullptr, dgib, dghb, direct ? direct + b * H : nullptr, ub};
    Cell::template backward<scalar_t>(row, H);
  }
}

// Runs fn(b0, b1) over the B rows of a step, on all threads when the step has enough elements: from
// B·G·H = 16K (e.g. B=64, H=256 GRU: ~40 µs of pointwise per step, 20% of the step's GEMM on one thread).
template <typename F>
void for_rows(int64_t B, int64_t GH, const F& fn) {
  constexpr int64_t kParallelElems = 16384;
  if (B * GH >= kParallelElems && B > 1 && at::get_num_threads() > 1) {
    at::parallel_for(0, B, std::max<int64_t>(1, 4096 / GH), fn);
  } else {
    fn(0, B);
  }
}

// ---------------------------------------------------------------------------------------------
// Time loops.

struct Steps {
  int64_t T, B;
  bool reverse;
  std::vector<int64_t> len;  // empty: every step valid

  Steps(int64_t T_, int64_t B_, bool rev, const c10::optional<Tensor>& lengths) : T(T_), B(B_), reverse(rev) {
    if (lengths.has_value() && lengths->defined()) {
      Tensor l = lengths->to(at::kLong).contiguous();
      const int64_t* p = l.data_ptr<int64_t>();
      len.resize(B);
      for (int64_t b = 0; b < B; ++b) len[b] = std::min<int64_t>(std::max<int64_t>(p[b], 0), T);
    }
  }
  // The rows a step's products must cover: up to the last row still running at step t. Rows past it
  // are finished and their products would be discarded; with PackedSequence input (rows sorted by
  // length) this is the packed batch size of step t, so no time goes into the padding.
  int64_t rows(int64_t t) const {
    if (len.empty()) return B;
    int64_t r = B;
    while (r > 0 && len[r - 1] <= t) --r;
    return r;
  }
  bool ragged() const { return !len.empty(); }
  int64_t length(int64_t b) const { return len.empty() ? T : len[b]; }
  // Fills valid[b] for step t; returns nullptr when every row is valid.
  const uint8_t* mask(int64_t t, std::vector<uint8_t>& valid) const {
    if (len.empty()) return nullptr;
    bool all = true;
    for (int64_t b = 0; b < B; ++b) {
      valid[b] = t < len[b];
      all = all && valid[b];
    }
    return all ? nullptr : valid.data();
  }
};

template <typename Cell, typename scalar_t>
std::tuple<Tensor, Tensor, Tensor, Tensor> forward_impl(const Tensor& gi, const Tensor& h0,
                                                        const c10::optional<Tensor>& c0, const Tensor& w_hh,
                                                        const c10::optional<Tensor>& b_hh,
                                                        const c10::optional<Tensor>& w_hr, const Steps& st,
                                                        bool need_ws) {
  constexpr int64_t G = Cell::G, S = Cell::S;
  constexpr bool kLSTM = std::is_same<Cell, LSTMCell>::value;
  const int64_t T = st.T, B = st.B, GH = gi.size(2), H = GH / G, N = h0.size(1);
  const bool proj = w_hr.has_value() && w_hr->defined();
  auto opts = gi.options();

  Tensor y = new_output({T, B, N}, opts);
  Tensor h_n = new_output({B, N}, opts);
  Tensor c_n = kLSTM ? new_output({B, H}, opts) : new_output({0}, opts);
  Tensor ws = need_ws ? new_output({T, B, S * H}, opts) : new_output({0}, opts);

  StepMatmul<scalar_t> mm_hh(w_hh.t(), B, T);
  c10::optional<StepMatmul<scalar_t>> mm_hr;
  if (proj) mm_hr.emplace(w_hr->t(), B, T);

  Tensor bias = (b_hh.has_value() && b_hh->defined()) ? b_hh->contiguous() : at::zeros({GH}, opts);
  Tensor h = h0.contiguous().clone();                            // (B, N) state
  Tensor c = kLSTM ? c0->contiguous().clone() : Tensor();        // (B, H) cell state
  Tensor gh = at::zeros({B, GH}, opts);                          // (B, G·H)
  Tensor hnew = at::zeros({B, H}, opts);                         // (B, H) before the projection
  Tensor hproj = proj ? at::zeros({B, N}, opts) : Tensor();      // (B, P)

  const scalar_t* gi_p = gi.data_ptr<scalar_t>();
  const scalar_t* bias_p = bias.data_ptr<scalar_t>();
  scalar_t* h_p = h.data_ptr<scalar_t>();
  scalar_t* c_p = kLSTM ? c.data_ptr<scalar_t>() : nullptr;
  scalar_t* gh_p = gh.data_ptr<scalar_t>();
  scalar_t* hnew_p = hnew.data_ptr<scalar_t>();
  scalar_t* hfin_p = proj ? hproj.data_ptr<scalar_t>() : hnew_p;
  scalar_t* y_p = y.data_ptr<scalar_t>();
  scalar_t* ws_p = need_ws ? ws.data_ptr<scalar_t>() : nullptr;

  std::vector<uint8_t> valid(B);
  at::Tensor keep;  // the step product's buffer when it is not gh (StepMatmul::apply)
  for (int64_t s = 0; s < T; ++s) {
    const int64_t t = st.reverse ? T - 1 - s : s;
    const uint8_t* m = st.mask(t, valid);
    const int64_t rows = st.rows(t);
    const scalar_t* ghr = mm_hh.apply(h_p, N, gh_p, GH, rows, &keep);
    for_rows(B, GH, [&](int64_t b0, int64_t b1) {
      if (need_ws && S > 0) {
        forward_rows<Cell, scalar_t, true>(b0, b1, H, m, gi_p + t * B * GH, ghr, bias_p, h_p, N, c_p, hnew_p,
                                           ws_p + t * B * S * H);
      } else {
        forward_rows<Cell, scalar_t, false>(b0, b1, H, m, gi_p + t * B * GH, ghr, bias_p, h_p, N, c_p, hnew_p,
                                            nullptr);
      }
    });
    if (proj) mm_hr->apply(hnew_p, H, hproj.data_ptr<scalar_t>(), N, rows);
    scalar_t* yt = y_p + t * B * N;
    for (int64_t b = 0; b < B; ++b) {
      if (m == nullptr || m[b]) {
        std::copy(hfin_p + b * N, hfin_p + (b + 1) * N, yt + b * N);
        std::copy(hfin_p + b * N, hfin_p + (b + 1) * N, h_p + b * N);
      } else {
        std::fill(yt + b * N, yt + (b + 1) * N, scalar_t(0));
      }
    }
  }
  h_n.copy_(h);
  if (kLSTM) c_n.copy_(c);
  return {y, h_n, c_n, ws};
}

template <typename Cell, typename scalar_t>
std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> backward_impl(
    const Tensor& grad_y, const Tensor& grad_hn, const c10::optional<Tensor>& grad_cn, const Tensor& h0,
    const c10::optional<Tensor>& c0, const Tensor& w_hh, const c10::optional<Tensor>& b_hh,
    const c10::optional<Tensor>& w_hr, const Tensor& y, const Tensor& ws, const Steps& st) {
  constexpr int64_t G = Cell::G, S = Cell::S;
  constexpr bool kLSTM = std::is_same<Cell, LSTMCell>::value;
  constexpr bool kGRU = std::is_same<Cell, GRUCell>::value;
  const int64_t T = st.T, B = st.B, GH = w_hh.size(0), H = GH / G, N = h0.size(1);
  const bool proj = w_hr.has_value() && w_hr->defined();
  const bool has_bias = b_hh.has_value() && b_hh->defined();
  auto opts = y.options();

  Tensor dgi = new_output({T, B, GH}, opts);
  Tensor dh0 = new_output({B, N}, opts);
  Tensor dc0 = kLSTM ? new_output({B, H}, opts) : new_output({0}, opts);
  Tensor dw_hh = new_output({GH, N}, opts);
  Tensor db_hh = has_bias ? new_output({GH}, opts) : new_output({0}, opts);
  Tensor dw_hr = proj ? new_output({N, H}, opts) : new_output({0}, opts);

  // Gradients w.r.t. W_hh·h + b_hh: the same as dgi except for the GRU's n gate (r·dn).
  Tensor dgh = kGRU ? at::empty({T, B, GH}, opts) : dgi;
  StepMatmul<scalar_t> mm_hh(w_hh, B, T);  // dh_{t-1} = dgh·W_hh
  c10::optional<StepMatmul<scalar_t>> mm_hr;
  if (proj) mm_hr.emplace(*w_hr, B, T);    // d(o·tanh c) = dh·W_hr

  Tensor dh = grad_hn.contiguous().clone();                                         // (B, N)
  Tensor dc = kLSTM ? (grad_cn.has_value() && grad_cn->defined() ? grad_cn->contiguous().clone()
                                                                  : at::zeros({B, H}, opts))
                    : Tensor();                                                      // (B, H)
  Tensor dht = at::zeros({B, N}, opts);                                             // dh incl. grad_y[t]
  Tensor du = proj ? at::zeros({B, H}, opts) : dht;                                 // (B, H) after W_hr
  Tensor direct = kGRU ? at::zeros({B, H}, opts) : Tensor();
  Tensor dhp = at::zeros({B, N}, opts);                                             // dgh·W_hh
  Tensor d_hr = proj ? at::zeros({T, B, N}, opts) : Tensor();                       // dL/dh_t per step
  Tensor u = proj ? at::zeros({T, B, H}, opts) : Tensor();                          // o·tanh(c) per step

  const scalar_t* gy_p = grad_y.data_ptr<scalar_t>();
  const scalar_t* y_p = y.data_ptr<scalar_t>();
  const scalar_t* ws_p = ws.numel() ? ws.data_ptr<scalar_t>() : nullptr;
  const scalar_t* h0_p = h0.data_ptr<scalar_t>();
  const scalar_t* c0_p = kLSTM ? c0->data_ptr<scalar_t>() : nullptr;
  scalar_t* dh_p = dh.data_ptr<scalar_t>();
  scalar_t* dc_p = kLSTM ? dc.data_ptr<scalar_t>() : nullptr;
  scalar_t* dht_p = dht.data_ptr<scalar_t>();
  scalar_t* du_p = du.data_ptr<scalar_t>();
  scalar_t* direct_p = kGRU ? direct.data_ptr<scalar_t>() : nullptr;
  scalar_t* dhp_p = dhp.data_ptr<scalar_t>();
  scalar_t* dgi_p = dgi.data_ptr<scalar_t>();
  scalar_t* dgh_p = dgh.data_ptr<scalar_t>();

  std::vector<uint8_t> valid(B);
  std::vector<const scalar_t*> hp(B), cp(B);
  at::Tensor keep;  // the step product's buffer when it is not dhp (StepMatmul::apply)
  for (int64_t s = T - 1; s >= 0; --s) {
    const int64_t t = st.reverse ? T - 1 - s : s;
    const uint8_t* m = st.mask(t, valid);
    // The state this step started from: the previous valid step's output, or h0 for the first step.
    for (int64_t b = 0; b < B; ++b) {
      const bool first = st.reverse ? t + 1 >= st.length(b) : t == 0;
      const int64_t tp = st.reverse ? t + 1 : t - 1;
      hp[b] = first ? h0_p + b * N : y_p + (tp * B + b) * N;
      if (kLSTM) cp[b] = first ? c0_p + b * H : ws_p + (tp * B + b) * S * H + 4 * H;
    }
    const scalar_t* gyt = gy_p + t * B * N;
    for (int64_t b = 0; b < B; ++b) {
      if (m != nullptr && !m[b]) continue;
      for (int64_t j = 0; j < N; ++j) dht_p[b * N + j] = dh_p[b * N + j] + gyt[b * N + j];
    }
    if (proj) {
      scalar_t* dhr_t = d_hr.data_ptr<scalar_t>() + t * B * N;
      for (int64_t b = 0; b < B; ++b) {
        if (m == nullptr || m[b]) {
          std::copy(dht_p + b * N, dht_p + (b + 1) * N, dhr_t + b * N);
        } else {
          std::fill(dhr_t + b * N, dhr_t + (b + 1) * N, scalar_t(0));
        }
      }
      mm_hr->apply(dht_p, N, du_p, H, st.rows(t));
    }
    scalar_t* u_t = proj ? u.data_ptr<scalar_t>() + t * B * H : nullptr;
    for_rows(B, GH, [&](int64_t b0, int64_t b1) {
      backward_rows<Cell, scalar_t>(b0, b1, H, m, du_p, ws_p ? ws_p + t * B * S * H : nullptr, y_p + t * B * N,
                                    N, hp.data(), kLSTM ? cp.data() : nullptr, dc_p, dgi_p + t * B * GH,
                                    dgh_p + t * B * GH, direct_p, u_t);
    });
    const scalar_t* dhpr = mm_hh.apply(dgh_p + t * B * GH, GH, dhp_p, N, st.rows(t), &keep);
    for (int64_t b = 0; b < B; ++b) {
      if (m != nullptr && !m[b]) continue;
      scalar_t* d = dh_p + b * N;
      const scalar_t* p = dhpr + b * N;
      if (kGRU) {
        const scalar_t* q = direct_p + b * H;
        for (int64_t j = 0; j < N; ++j) d[j] = p[j] + q[j];
      } else {
        std::copy(p, p + N, d);
      }
    }
  }
  dh0.copy_(dh);
  if (kLSTM) dc0.copy_(dc);

  // dW_hh = Σ_t dgh[t]ᵀ·h_prev[t]. h_prev[t] is y at the neighbouring step (zero where that step is
  // invalid, and there dgh is zero too), except at each row's first step where it is h0: one GEMM over
  // the shifted outputs plus one over the first-step rows.
  Tensor first = at::zeros({B, GH}, opts);  // dgh at each row's first step
  {
    scalar_t* f = first.data_ptr<scalar_t>();
    for (int64_t b = 0; b < B; ++b) {
      const int64_t L = st.length(b);
      if (L == 0) continue;
      const int64_t tf = st.reverse ? L - 1 : 0;
      std::copy(dgh_p + (tf * B + b) * GH, dgh_p + (tf * B + b + 1) * GH, f + b * GH);
    }
  }
  at::mm_out(dw_hh, first.t(), h0);
  if (T > 1) {
    Tensor g = st.reverse ? dgh.narrow(0, 0, T - 1) : dgh.narrow(0, 1, T - 1);
    Tensor hprev = st.reverse ? y.narrow(0, 1, T - 1) : y.narrow(0, 0, T - 1);
    mm_tn(dw_hh, g.reshape({-1, GH}), hprev.reshape({-1, N}), /*accumulate=*/true);
  }
  if (has_bias) at::sum_out(db_hh, dgh.reshape({-1, GH}), {0});
  if (proj) mm_tn(dw_hr, d_hr.reshape({-1, N}), u.reshape({-1, H}));
  return {dgi, dh0, dc0, dw_hh, db_hh, dw_hr};
}

// ---------------------------------------------------------------------------------------------
// Op entry points: checks, dtype and cell dispatch.

enum CellCode : int64_t { kRnnTanh = 0, kRnnRelu = 1, kGru = 2, kLstm = 3 };

int64_t gates(int64_t cell) {
  TORCH_CHECK(cell >= kRnnTanh && cell <= kLstm,
              "rnnfast_C: cell: expected a code 0..3 (rnn_tanh, rnn_relu, gru, lstm), got ", cell);
  return cell == kGru ? 3 : cell == kLstm ? 4 : 1;
}

template <typename F>
auto dispatch_cell(int64_t cell, F&& f) {
  switch (cell) {
    case kRnnTanh: return f(RNNCell<false>{});
    case kRnnRelu: return f(RNNCell<true>{});
    case kGru: return f(GRUCell{});
    default: return f(LSTMCell{});  // codes were validated by gates()
  }
}

void check_like(const char* name, const Tensor& t, const Tensor& ref, at::IntArrayRef shape) {
  TORCH_CHECK(t.device().is_cpu(), "rnnfast_C: ", name, ": expected a CPU tensor, got ", t.device());
  TORCH_CHECK(t.scalar_type() == ref.scalar_type(), "rnnfast_C: ", name, ": expected dtype ", ref.scalar_type(),
              ", got ", t.scalar_type());
  TORCH_CHECK(t.sizes() == shape, "rnnfast_C: ", name, ": expected shape ", shape, ", got ", t.sizes());
}

void check_opt(const char* name, const c10::optional<Tensor>& t, const Tensor& ref, at::IntArrayRef shape) {
  if (t.has_value() && t->defined()) check_like(name, *t, ref, shape);
}

std::tuple<Tensor, Tensor, Tensor, Tensor> recurrence_fwd(const Tensor& gi, const Tensor& h0,
                                                          const c10::optional<Tensor>& c0, const Tensor& w_hh,
                                                          const c10::optional<Tensor>& b_hh,
                                                          const c10::optional<Tensor>& w_hr,
                                                          const c10::optional<Tensor>& lengths, int64_t cell,
                                                          bool reverse, bool need_ws) {
  TORCH_CHECK(gi.dim() == 3, "rnnfast_C: gi: expected (T, B, G·H), got ", gi.sizes());
  TORCH_CHECK(gi.scalar_type() == at::kFloat || gi.scalar_type() == at::kDouble,
              "rnnfast_C: gi: expected float32 or float64, got ", gi.scalar_type());
  const int64_t G = gates(cell), T = gi.size(0), B = gi.size(1), GH = gi.size(2), H = GH / G;
  TORCH_CHECK(GH % G == 0, "rnnfast_C: gi: last dimension ", GH, " is not a multiple of ", G);
  const bool proj = w_hr.has_value() && w_hr->defined();
  TORCH_CHECK(!proj || cell == kLstm, "rnnfast_C: w_hr: a projection exists only for the lstm cell");
  const int64_t N = proj ? w_hr->size(0) : H;
  check_like("h0", h0, gi, {B, N});
  check_like("w_hh", w_hh, gi, {GH, N});
  check_opt("b_hh", b_hh, gi, {GH});
  if (cell == kLstm) {
    TORCH_CHECK(c0.has_value() && c0->defined(), "rnnfast_C: c0: required for the lstm cell");
    check_like("c0", *c0, gi, {B, H});
  }
  if (proj) check_like("w_hr", *w_hr, gi, {N, H});
  Steps st(T, B, reverse, lengths);
  Tensor g = gi.contiguous();
  return AT_DISPATCH_FLOATING_TYPES(gi.scalar_type(), "recurrence_fwd", [&] {
    return dispatch_cell(cell, [&](auto c) {
      using Cell = decltype(c);
      return forward_impl<Cell, scalar_t>(g, h0, c0, w_hh.contiguous(), b_hh, w_hr, st, need_ws);
    });
  });
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> recurrence_bwd(
    const Tensor& grad_y, const Tensor& grad_hn, const c10::optional<Tensor>& grad_cn, const Tensor& h0,
    const c10::optional<Tensor>& c0, const Tensor& w_hh, const c10::optional<Tensor>& b_hh,
    const c10::optional<Tensor>& w_hr, const c10::optional<Tensor>& lengths, const Tensor& y, const Tensor& ws,
    int64_t cell, bool reverse) {
  TORCH_CHECK(y.dim() == 3, "rnnfast_C: y: expected (T, B, N), got ", y.sizes());
  TORCH_CHECK(y.scalar_type() == at::kFloat || y.scalar_type() == at::kDouble,
              "rnnfast_C: y: expected float32 or float64, got ", y.scalar_type());
  const int64_t G = gates(cell), T = y.size(0), B = y.size(1), N = y.size(2), GH = w_hh.size(0), H = GH / G;
  const bool proj = w_hr.has_value() && w_hr->defined();
  TORCH_CHECK(!proj || cell == kLstm, "rnnfast_C: w_hr: a projection exists only for the lstm cell");
  const int64_t S = cell == kGru ? 4 : cell == kLstm ? 5 : 0;
  check_like("grad_y", grad_y, y, {T, B, N});
  check_like("grad_hn", grad_hn, y, {B, N});
  check_like("h0", h0, y, {B, N});
  check_like("w_hh", w_hh, y, {GH, N});
  check_opt("b_hh", b_hh, y, {GH});
  if (S > 0) check_like("ws", ws, y, {T, B, S * H});
  if (cell == kLstm) {
    TORCH_CHECK(c0.has_value() && c0->defined(), "rnnfast_C: c0: required for the lstm cell");
    check_like("c0", *c0, y, {B, H});
    check_opt("grad_cn", grad_cn, y, {B, H});
  }
  if (proj) check_like("w_hr", *w_hr, y, {N, H});
  Steps st(T, B, reverse, lengths);
  c10::optional<Tensor> c0c = c0.has_value() && c0->defined() ? c10::optional<Tensor>(c0->contiguous()) : c0;
  c10::optional<Tensor> w_hrc = proj ? c10::optional<Tensor>(w_hr->contiguous()) : w_hr;
  return AT_DISPATCH_FLOATING_TYPES(y.scalar_type(), "recurrence_bwd", [&] {
    return dispatch_cell(cell, [&](auto c) {
      using Cell = decltype(c);
      return backward_impl<Cell, scalar_t>(grad_y.contiguous(), grad_hn, grad_cn, h0.contiguous(), c0c,
                                           w_hh.contiguous(), b_hh, w_hrc, y.contiguous(), ws.contiguous(), st);
    });
  });
}

// Which path a float32 per-step product x (m, k) · W (k, n) of the time loops takes: "onednn", "aten"
// (MKL), "blocked" (small_mm), "packed" (packed_mm) or "matvec". For `rnnfast info` and the tests.
std::string gemm_path(int64_t m, int64_t k, int64_t n) {
  // As the forward loop builds it: W_hhᵀ, a transposed view, over a sequence of many steps.
  StepMatmul<float> mm(at::empty({n, k}, at::kFloat).t(), m, 100);
  return mm.path();
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(rnnfast_C, m) { m.impl("gemm_path", &gemm_path); }

TORCH_LIBRARY_IMPL(rnnfast_C, CPU, m) {
  m.impl("recurrence_fwd", &recurrence_fwd);
  m.impl("recurrence_bwd", &recurrence_bwd);
}

}  // namespace rnnfast
