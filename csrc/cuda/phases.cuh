// The per-thread work of the persistent kernels, phase by phase, as __host__ __device__ functions: the
// kernels (persistent_fwd.cu, persistent_bwd.cu) run them with barriers in between, and the host
// emulator (emulator/host_emulator.cu) runs the same functions thread by thread, CTA by CTA, to check
// the indexing without a GPU. Every function is "thread tid of CTA cta does its share".
//
// Dimensions: T time, B batch, H hidden, G gates, U units per CTA; CTA cta owns units [cta·U, cta·U + nu).
#pragma once

#include "persistent.cuh"

namespace rnnfast {

RNNFAST_HD int owned_units(int H, int U, int cta) { return H - cta * U < U ? H - cta * U : U; }

// Forward. Per step s (t = s, or T-1-s with reverse) and chunk b0 of batch rows:
//   stage (A <- h_{t-1} rows) | barrier | gemm (C = A·Wsᵀ) | barrier | cells | barrier
// and a grid barrier after every step. h is a float32 ping-pong buffer (2, B, H): step s reads half s % 2
// and writes the other, so one grid barrier per step separates every read of a half from the next write.
template <typename E, int CELL>
struct FwdPhases {
  static constexpr int G = Cell<CELL>::G;

  RNNFAST_HD static const float* h_in(const FwdArgs<E>& a, int s) {
    return a.h + ((s & 1) ? static_cast<int64_t>(a.B) * a.H : 0);
  }
  RNNFAST_HD static float* h_out(const FwdArgs<E>& a, int s) {
    return a.h + ((s & 1) ? 0 : static_cast<int64_t>(a.B) * a.H);
  }

  // Ws row r = g·U + u holds W_hh row g·H + u0 + u; rows and columns beyond the slice are zero.
  RNNFAST_HD static void load_weights(const FwdArgs<E>& a, const Tile& L, int U, int cta, int tid, E* Ws) {
    const int H = a.H, u0 = cta * U, nu = owned_units(H, U, cta);
    for (int idx = tid; idx < L.np * L.kp; idx += kThreads) {
      const int r = idx / L.kp, k = idx % L.kp, g = r / U, u = r % U;
      E v = from_f<E>(0.0f);
      if (g < G && u < nu && k < H) v = a.w[static_cast<int64_t>(g * H + u0 + u) * H + k];
      Ws[idx] = v;
    }
  }

  RNNFAST_HD static void init_state(const FwdArgs<E>& a, int U, int cta, int tid) {
    const int nu = owned_units(a.H, U, cta);
    for (int idx = tid; idx < a.B * nu; idx += kThreads) {
      const int64_t bj = static_cast<int64_t>(idx / nu) * a.H + cta * U + idx % nu;
      a.h[bj] = to_f(a.h0[bj]);  // half 0 is read at step 0
      if (CELL == RNNFAST_LSTM) a.c[bj] = to_f(a.c0[bj]);
    }
  }

  RNNFAST_HD static void stage(const FwdArgs<E>& a, const Tile& L, int s, int b0, int tid, E* As) {
    const int rows = a.B - b0 < L.bc ? a.B - b0 : L.bc;
    stage_rows<E>(L, tid, As, h_in(a, s) + static_cast<int64_t>(b0) * a.H, rows, a.H);
  }

  // The cell for the CTA's units of batch rows [b0, b0 + rows): C holds their h_{t-1}·W_hhᵀ.
  RNNFAST_HD static void cells(const FwdArgs<E>& a, const Tile& L, int U, int cta, int s, int b0, int tid,
                               const float* Cs) {
    const int t = a.reverse ? a.T - 1 - s : s;
    const int rows = a.B - b0 < L.bc ? a.B - b0 : L.bc;
    const int nu = owned_units(a.H, U, cta);
    const float* hin = h_in(a, s);
    float* hout = h_out(a, s);
    for (int idx = tid; idx < rows * nu; idx += kThreads) {
      const int m = idx / nu, u = idx % nu;
      float pre_h[G];
#pragma unroll
      for (int g = 0; g < G; ++g) pre_h[g] = chunk_sum(L, Cs, m, g * U + u);
      const int64_t bj = static_cast<int64_t>(b0 + m) * a.H + cta * U + u;
      hout[bj] = fwd_unit<E, CELL>(a, t, b0 + m, cta * U + u, pre_h, load_cg(hin + bj));
    }
  }

  RNNFAST_HD static void finish(const FwdArgs<E>& a, int U, int cta, int tid) {
    const int nu = owned_units(a.H, U, cta);
    const float* h_last = h_in(a, a.T);  // what step T would read: the state after step T-1
    for (int idx = tid; idx < a.B * nu; idx += kThreads) {
      const int64_t bj = static_cast<int64_t>(idx / nu) * a.H + cta * U + idx % nu;
      a.hn[bj] = from_f<E>(load_cg(h_last + bj));
      if (CELL == RNNFAST_LSTM) a.cn[bj] = from_f<E>(a.c[bj]);
    }
  }
};

// Backward. Per step s (t = T-1-s, or s with reverse):
//   cells (phase A: dgi[t], dgh[t], carry for own units, all rows) | grid barrier |
//   per chunk b0: stage (A <- dgh[t] rows) | barrier | gemm (C = A·Wsᵀ) | barrier | accumulate | barrier
// Ws row u holds column u0 + u of W_hh, so "accumulate" writes dh_{t-1} = carry + dgh[t]·W_hh for the
// CTA's own units, which only the same CTA reads in the next phase A: one grid barrier per step. Phase A
// of step s+1 writes dgh[t'] for another t, which no CTA still reads.
template <typename E, int CELL>
struct BwdPhases {
  static constexpr int G = Cell<CELL>::G;

  RNNFAST_HD static int time(const BwdArgs<E>& a, int s) { return a.reverse ? s : a.T - 1 - s; }

  // Ws[u][n] = W_hh[n][u0 + u]; zero beyond the slice.
  RNNFAST_HD static void load_weights(const BwdArgs<E>& a, const Tile& L, int U, int cta, int tid, E* Ws) {
    const int H = a.H, u0 = cta * U, nu = owned_units(H, U, cta);
    for (int idx = tid; idx < L.np * L.kp; idx += kThreads) {
      const int u = idx / L.kp, n = idx % L.kp;
      E v = from_f<E>(0.0f);
      if (u < nu && n < G * H) v = a.w[static_cast<int64_t>(n) * H + u0 + u];
      Ws[idx] = v;
    }
  }

  RNNFAST_HD static void init_state(const BwdArgs<E>& a, int U, int cta, int tid) {
    const int nu = owned_units(a.H, U, cta);
    for (int idx = tid; idx < a.B * nu; idx += kThreads) {
      const int64_t bj = static_cast<int64_t>(idx / nu) * a.H + cta * U + idx % nu;
      a.dh[bj] = to_f(a.grad_hn[bj]);
      if (CELL == RNNFAST_LSTM) a.dc[bj] = to_f(a.grad_cn[bj]);
    }
  }

  RNNFAST_HD static void cells(const BwdArgs<E>& a, int U, int cta, int s, int tid) {
    const int t = time(a, s), nu = owned_units(a.H, U, cta);
    for (int idx = tid; idx < a.B * nu; idx += kThreads) {
      const int b = idx / nu, j = cta * U + idx % nu;
      const int64_t bj = static_cast<int64_t>(b) * a.H + j;
      a.carry[bj] = bwd_unit<E, CELL>(a, t, b, j, a.dh[bj]);
    }
  }

  RNNFAST_HD static void stage(const BwdArgs<E>& a, const Tile& L, int s, int b0, int tid, E* As) {
    const int rows = a.B - b0 < L.bc ? a.B - b0 : L.bc;
    const int64_t GH = static_cast<int64_t>(G) * a.H;
    const float* dgh_t = a.dgh + static_cast<int64_t>(time(a, s)) * a.B * GH;
    stage_rows<E>(L, tid, As, dgh_t + b0 * GH, rows, static_cast<int>(GH));
  }

  RNNFAST_HD static void accumulate(const BwdArgs<E>& a, const Tile& L, int U, int cta, int b0, int tid,
                                    const float* Cs) {
    const int rows = a.B - b0 < L.bc ? a.B - b0 : L.bc;
    const int nu = owned_units(a.H, U, cta);
    for (int idx = tid; idx < rows * nu; idx += kThreads) {
      const int m = idx / nu, u = idx % nu;
      const int64_t bj = static_cast<int64_t>(b0 + m) * a.H + cta * U + u;
      a.dh[bj] = a.carry[bj] + chunk_sum(L, Cs, m, u);
    }
  }

  RNNFAST_HD static void finish(const BwdArgs<E>& a, int U, int cta, int tid) {
    const int nu = owned_units(a.H, U, cta);
    for (int idx = tid; idx < a.B * nu; idx += kThreads) {
      const int64_t bj = static_cast<int64_t>(idx / nu) * a.H + cta * U + idx % nu;
      a.dh0[bj] = from_f<E>(a.dh[bj]);
      if (CELL == RNNFAST_LSTM) a.dc0[bj] = from_f<E>(a.dc[bj]);
    }
  }
};

// Stepwise algorithm: thread idx of the B·H pointwise threads of step t.
template <typename E, int CELL>
RNNFAST_HD void fwd_step_thread(const FwdArgs<E>& a, int t, int64_t idx) {
  constexpr int G = Cell<CELL>::G;
  const int b = static_cast<int>(idx / a.H), j = static_cast<int>(idx % a.H);
  float pre_h[G];
  const float* gh = a.gh + static_cast<int64_t>(b) * G * a.H + j;
#pragma unroll
  for (int g = 0; g < G; ++g) pre_h[g] = gh[g * a.H];
  // Each thread owns its (b, j) of the state, so the update in place is race-free.
  a.h[idx] = fwd_unit<E, CELL>(a, t, b, j, pre_h, a.h[idx]);
}

template <typename E, int CELL>
RNNFAST_HD void bwd_step_thread(const BwdArgs<E>& a, int t, int64_t idx) {
  const int b = static_cast<int>(idx / a.H), j = static_cast<int>(idx % a.H);
  a.carry[idx] = bwd_unit<E, CELL>(a, t, b, j, a.dh[idx]);
}

}  // namespace rnnfast
