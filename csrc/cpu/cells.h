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

// Units per chunk of the two-pass forward cells (GRU, LSTM): their activations fit a small buffer.
constexpr int64_t kCellChunk = 64;

struct GRUCell {
  static constexpr int G = 3;
  static constexpr int S = 4;

  // In chunks of kCellChunk units, two passes as the LSTM's (LSTMCell::forward): r and z, then n and h.
  template <typename scalar_t, bool Save>
  static RNNFAST_INLINE void forward(const FwdRow<scalar_t>& a, int64_t n, int64_t H) {
    scalar_t buf[2 * kCellChunk];
    for (int64_t j0 = 0; j0 < n; j0 += kCellChunk) {
      const int64_t m = std::min(kCellChunk, n - j0);
      scalar_t* act = Save ? a.ws + j0 : buf;  // r, z, ld apart
      const int64_t ld = Save ? H : kCellChunk;
      for (int q = 0; q < 2; ++q) {
        const scalar_t *gi = a.gi + q * H + j0, *gh = a.gh + q * H + j0, *bh = a.bh + q * H + j0;
        scalar_t* out = act + q * ld;
        RNNFAST_IVDEP
        for (int64_t j = 0; j < m; ++j) out[j] = sigmoid_fast(gi[j] + gh[j] + bh[j]);
      }
      const scalar_t *r = act, *z = act + ld;
      const scalar_t *gi = a.gi + 2 * H + j0, *gh = a.gh + 2 * H + j0, *bh = a.bh + 2 * H + j0;
      const scalar_t* hp = a.hp + j0;
      scalar_t* h = a.h + j0;
      RNNFAST_IVDEP
      for (int64_t j = 0; j < m; ++j) {
        const scalar_t hn = gh[j] + bh[j];
        const scalar_t nj = tanh_fast(gi[j] + r[j] * hn);
        h[j] = (1 - z[j]) * nj + z[j] * hp[j];
        if (Save) {
          a.ws[2 * H + j0 + j] = nj;
          a.ws[3 * H + j0 + j] = hn;
        }
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

  // Units in chunks of kCellChunk, each in two passes: the four gates, one loop per gate with one
  // transcendental per element, into ws (Save) or a buffer; then c and h. One loop with all five
  // transcendentals of a unit is bound by their chained latency (measured, 2-core AVX2 EPYC, float32:
  // 4 rows of 64 units 1.28 µs in one loop, 1.08 µs in two passes; same results to the bit).
  template <typename scalar_t, bool Save>
  static RNNFAST_INLINE void forward(const FwdRow<scalar_t>& a, int64_t n, int64_t H) {
    scalar_t buf[4 * kCellChunk];
    for (int64_t j0 = 0; j0 < n; j0 += kCellChunk) {
      const int64_t m = std::min(kCellChunk, n - j0);
      scalar_t* act = Save ? a.ws + j0 : buf;  // i, f, g, o, ld apart
      const int64_t ld = Save ? H : kCellChunk;
      for (int q = 0; q < 4; ++q) {
        const scalar_t *gi = a.gi + q * H + j0, *gh = a.gh + q * H + j0, *bh = a.bh + q * H + j0;
        scalar_t* out = act + q * ld;
        if (q == 2) {
          RNNFAST_IVDEP
          for (int64_t j = 0; j < m; ++j) out[j] = tanh_fast(gi[j] + gh[j] + bh[j]);
        } else {
          RNNFAST_IVDEP
          for (int64_t j = 0; j < m; ++j) out[j] = sigmoid_fast(gi[j] + gh[j] + bh[j]);
        }
      }
      const scalar_t *i = act, *f = act + ld, *g = act + 2 * ld, *o = act + 3 * ld;
      scalar_t *c = a.c + j0, *h = a.h + j0, *cs = Save ? a.ws + 4 * H + j0 : nullptr;
      RNNFAST_IVDEP
      for (int64_t j = 0; j < m; ++j) {
        const scalar_t cj = f[j] * c[j] + i[j] * g[j];
        c[j] = cj;
        h[j] = o[j] * tanh_fast(cj);
        if (Save) cs[j] = cj;
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
