// The cells: pointwise forward and backward of one batch row, plugged into the time loops of
// recurrence.cpp. Each loop over j runs over n units of the row and vectorises: all H, or one
// thread's slice of them in the persistent loops (the row pointers then start at the slice; the
// gates of a unit stay H apart).
//
// Dimensions: H hidden, G gates, S saved activations per unit (see rnnfast/ops/recurrence/common.py).
// Gate pre-activations: gi (G·H) input part incl. b_ih, gh (G·H) = W_hh·h without bias, bh (G·H) = b_hh
// (zeros when absent). Saved activations per row, ws (S·H):
//   rnn: none (the output y is enough) · gru: r, z, n, hn = W_hn·h + b_hn · lstm: i, f, g, o, c.
#pragma once

#include "common.h"

namespace rnnfast {

template <typename scalar_t>
struct FwdRow {
  const scalar_t* gi;  // (G·H)
  const scalar_t* gh;  // (G·H)
  const scalar_t* bh;  // (G·H)
  const scalar_t* hp;  // (H) previous state (rnn, gru)
  scalar_t* c;         // (H) lstm cell state, updated in place
  scalar_t* h;         // (H) new output before projection
  scalar_t* ws;        // (S·H) or unused when not saving
};

template <typename scalar_t>
struct BwdRow {
  const scalar_t* dh;  // (H) gradient w.r.t. the step's output (after the projection's backward)
  const scalar_t* ws;  // (S·H)
  const scalar_t* y;   // (H) the step's output (rnn)
  const scalar_t* hp;  // (H) previous state (gru)
  const scalar_t* cp;  // (H) previous cell state (lstm)
  scalar_t* dc;        // (H) lstm: in: dL/dc_t from later steps, out: dL/dc_{t-1}
  scalar_t* dgi;       // (G·H) gradient w.r.t. gi
  scalar_t* dgh;       // (G·H) gradient w.r.t. W_hh·h + b_hh (gru only; equal to dgi otherwise)
  scalar_t* direct;    // (H) gru: the part of dL/dh_{t-1} not through W_hh (dh·z)
  scalar_t* u;         // (H) lstm with projection: o·tanh(c), the projection's input
};

template <bool Relu>
struct RNNCell {
  static constexpr int G = 1;
  static constexpr int S = 0;

  template <typename scalar_t, bool Save>
  static RNNFAST_INLINE void forward(const FwdRow<scalar_t>& a, int64_t n, int64_t H) {
    RNNFAST_IVDEP
    for (int64_t j = 0; j < n; ++j) {
      scalar_t v = a.gi[j] + a.gh[j] + a.bh[j];
      a.h[j] = Relu ? (v > 0 ? v : scalar_t(0)) : tanh_fast(v);
    }
  }

  template <typename scalar_t>
  static RNNFAST_INLINE void backward(const BwdRow<scalar_t>& a, int64_t n, int64_t H) {
    RNNFAST_IVDEP
    for (int64_t j = 0; j < n; ++j) {
      scalar_t y = a.y[j];
      a.dgi[j] = Relu ? (y > 0 ? a.dh[j] : scalar_t(0)) : a.dh[j] * (1 - y * y);
    }
  }
};

struct GRUCell {
  static constexpr int G = 3;
  static constexpr int S = 4;

  template <typename scalar_t, bool Save>
  static RNNFAST_INLINE void forward(const FwdRow<scalar_t>& a, int64_t n, int64_t H) {
    const scalar_t *gi = a.gi, *gh = a.gh, *bh = a.bh;
    RNNFAST_IVDEP
    for (int64_t j = 0; j < n; ++j) {
      scalar_t r = sigmoid_fast(gi[j] + gh[j] + bh[j]);
      scalar_t z = sigmoid_fast(gi[H + j] + gh[H + j] + bh[H + j]);
      scalar_t hn = gh[2 * H + j] + bh[2 * H + j];
      scalar_t n = tanh_fast(gi[2 * H + j] + r * hn);
      a.h[j] = (1 - z) * n + z * a.hp[j];
      if (Save) {
        a.ws[j] = r;
        a.ws[H + j] = z;
        a.ws[2 * H + j] = n;
        a.ws[3 * H + j] = hn;
      }
    }
  }

  template <typename scalar_t>
  static RNNFAST_INLINE void backward(const BwdRow<scalar_t>& a, int64_t n, int64_t H) {
    const scalar_t* ws = a.ws;
    RNNFAST_IVDEP
    for (int64_t j = 0; j < n; ++j) {
      scalar_t r = ws[j], z = ws[H + j], n = ws[2 * H + j], hn = ws[3 * H + j];
      scalar_t dh = a.dh[j];
      scalar_t dn = dh * (1 - z) * (1 - n * n);
      scalar_t dz = dh * (a.hp[j] - n) * z * (1 - z);
      scalar_t dr = dn * hn * r * (1 - r);
      a.dgi[j] = dr;
      a.dgi[H + j] = dz;
      a.dgi[2 * H + j] = dn;
      a.dgh[j] = dr;
      a.dgh[H + j] = dz;
      a.dgh[2 * H + j] = dn * r;
      a.direct[j] = dh * z;
    }
  }
};

struct LSTMCell {
  static constexpr int G = 4;
  static constexpr int S = 5;

  template <typename scalar_t, bool Save>
  static RNNFAST_INLINE void forward(const FwdRow<scalar_t>& a, int64_t n, int64_t H) {
    const scalar_t *gi = a.gi, *gh = a.gh, *bh = a.bh;
    RNNFAST_IVDEP
    for (int64_t j = 0; j < n; ++j) {
      scalar_t i = sigmoid_fast(gi[j] + gh[j] + bh[j]);
      scalar_t f = sigmoid_fast(gi[H + j] + gh[H + j] + bh[H + j]);
      scalar_t g = tanh_fast(gi[2 * H + j] + gh[2 * H + j] + bh[2 * H + j]);
      scalar_t o = sigmoid_fast(gi[3 * H + j] + gh[3 * H + j] + bh[3 * H + j]);
      scalar_t c = f * a.c[j] + i * g;
      a.c[j] = c;
      a.h[j] = o * tanh_fast(c);
      if (Save) {
        a.ws[j] = i;
        a.ws[H + j] = f;
        a.ws[2 * H + j] = g;
        a.ws[3 * H + j] = o;
        a.ws[4 * H + j] = c;
      }
    }
  }

  template <typename scalar_t>
  static RNNFAST_INLINE void backward(const BwdRow<scalar_t>& a, int64_t n, int64_t H) {
    const scalar_t* ws = a.ws;
    RNNFAST_IVDEP
    for (int64_t j = 0; j < n; ++j) {
      scalar_t i = ws[j], f = ws[H + j], g = ws[2 * H + j], o = ws[3 * H + j], c = ws[4 * H + j];
      scalar_t tc = tanh_fast(c);
      scalar_t dh = a.dh[j];
      scalar_t dc = a.dc[j] + dh * o * (1 - tc * tc);
      a.dgi[j] = dc * g * i * (1 - i);
      a.dgi[H + j] = dc * a.cp[j] * f * (1 - f);
      a.dgi[2 * H + j] = dc * i * (1 - g * g);
      a.dgi[3 * H + j] = dh * tc * o * (1 - o);
      a.dc[j] = dc * f;
      if (a.u != nullptr) a.u[j] = o * tc;
    }
  }
};

}  // namespace rnnfast
