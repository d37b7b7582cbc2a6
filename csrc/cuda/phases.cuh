// The persistent kernels' CTA programs, written once over a runtime R that the GPU (device.cuh,
// DeviceCta: one thread) and the host emulator (emulator/host_emulator.cu: a whole CTA, thread by thread,
// warp by warp) both implement:
//   r.each(f)            every thread tid runs f(tid)        r.sync()        CTA barrier
//   r.copy16(dst, src, bytes), r.commit(), r.wait_copies(n)  cp.async staging (zero fill past `bytes`)
//   r.gemm_chunk(L, buf, klen, kt0), r.gemm_flush(L)         tile GEMM of a staged chunk / partial sums to C
//   r.arrive()                                               split grid barrier, first half
// The grid-wide wait sits between the segments below, in the kernel's loop (device) or the emulator's
// schedule of CTAs.
//
// Dimensions: T time, B batch, H hidden, G gates, U units per CTA; CTA `cta` owns units [u0, u0 + nu).
#pragma once

#include <cstring>

#include "gemm.cuh"

namespace rnnfast {

struct Own {
  int U, u0, nu;
};
RNNFAST_HD Own own_units(int H, int U, int cta) { return Own{U, cta * U, min_i(U, H - cta * U)}; }

RNNFAST_HD int row_blocks(int B) { return (B + kRows - 1) / kRows; }

// Arrivals the grid wait before segment s needs: every CTA arrives once per phase (the forward's prologue
// and each step; the backward's pre of each step), and phase s is complete after (s + 1)·ctas of them.
RNNFAST_HD unsigned phase_target(int s, unsigned ctas) { return (static_cast<unsigned>(s) + 1) * ctas; }

// TF32 rounding of the weights as the kernel stores them (cvt.rna: to nearest, ties away from zero).
RNNFAST_HD float tf32_round(float v) {
#ifdef __CUDA_ARCH__
  uint32_t r;
  asm("cvt.rna.tf32.f32 %0, %1;" : "=r"(r) : "f"(v));
  return __uint_as_float(r);
#else
  uint32_t u;
  memcpy(&u, &v, 4);
  if ((u & 0x7f800000u) != 0x7f800000u) u = (u + 0x1000u) & 0xffffe000u;
  memcpy(&v, &u, 4);
  return v;
#endif
}

template <typename E, int MODE>
RNNFAST_HD E weight_value(E v) {
  if constexpr (MODE == RNNFAST_TF32) return tf32_round(v);
  return v;
}

// Units per CTA: the fewest that cover H with one CTA per SM (most parallelism per step).
RNNFAST_HD int units_per_cta(int H, int sms) { return (H + sms - 1) / sms; }

// Geometry of a persistent CTA owning U units: forward slice G·U rows x H, backward U rows x G·H. The
// tile does not fit when its bytes exceed optin.
template <typename E, int CELL, int MODE>
RNNFAST_HD Tile persistent_tile(bool backward, int B, int H, int U, int optin) {
  constexpr int G = Cell<CELL>::G;
  const int esz = static_cast<int>(sizeof(E));
  return backward ? make_tile(MODE, esz, U, G * H, row_blocks(B), B * U, sizeof(BwdIn<CELL>), optin)
                  : make_tile(MODE, esz, G * U, H, row_blocks(B), B * U, sizeof(FwdIn<CELL>), optin);
}

// The K-chunked GEMM of one step over the shared operand `src` (B rows of src_ld elements, kvalid valid
// columns), row block by row block; after each block's partial sums are in C, epilogue(b0) runs. Tiles
// (block, chunk) are double-buffered: tile i + 1 is in flight while tile i is multiplied.
template <class R, typename E, class Epilogue>
RNNFAST_HD void step_gemm(R& r, const Tile& L, int B, const E* src, int src_ld, int kvalid, Epilogue&& epilogue) {
  const int total = row_blocks(B) * L.nkc;
  const int64_t ld_bytes = static_cast<int64_t>(src_ld) * sizeof(E);
  auto issue = [&](int i) {
    const int mb = i / L.nkc, kc = i - mb * L.nkc;
    const int b0 = mb * kRows, rows = min_i(kRows, B - b0), dst = L.a_off + (i & (L.nbuf - 1)) * kRows * L.lda;
    const unsigned char* from = reinterpret_cast<const unsigned char*>(src) + b0 * ld_bytes;
    r.each([&](int tid) {
      stage_chunk(L, tid, dst, from, ld_bytes, rows, kc * L.kc, kvalid,
                  [&](int d, const unsigned char* s, int n) { r.copy16(d, s, n); });
    });
    r.commit();
  };
  issue(0);
  for (int i = 0; i < total; ++i) {
    const int mb = i / L.nkc, kc = i - mb * L.nkc;
    if (i + 1 < total) {
      issue(i + 1);
      r.wait_copies(1);
    } else {
      r.wait_copies(0);
    }
    r.sync();
    r.gemm_chunk(L, L.a_off + (i & (L.nbuf - 1)) * kRows * L.lda, min_i(L.kc, L.kp - kc * L.kc),
                 kc * L.kc / k_step(L.mode));
    r.sync();  // buffer i free for tile i + 2
    if (kc == L.nkc - 1) {
      r.gemm_flush(L);
      r.sync();
      epilogue(mb * kRows);
    }
  }
}

// Forward. Prologue (weights, state, h0 published, step 0's inputs), then per step s (t = s, or T-1-s with
// reverse), entered once all of h_s is published (grid wait for phase s):
//   GEMM of h_s (published slot s % 2) with the slice, cells of the CTA's units writing y[t], ws[t], the
//   state and h_{s+1} into slot (s + 1) % 2 | arrive | fetch step s+1's gi
// Step s reads slot s % 2 and writes the other, so the one barrier per step separates every read of a slot
// from the next write to it.
template <typename E, int CELL, int MODE>
struct Fwd {
  static constexpr int G = Cell<CELL>::G;
  using In = FwdIn<CELL>;

  RNNFAST_HD static int time(const FwdArgs<E>& a, int s) { return a.reverse ? a.T - 1 - s : s; }
  RNNFAST_HD static E* slot(const FwdArgs<E>& a, int s) { return a.hp + (s & 1) * static_cast<int64_t>(a.B) * a.hp_ld; }

  // Ws row r = g·U + u holds W_hh row g·H + u0 + u; rows and columns beyond the slice are zero.
  template <class R>
  RNNFAST_HD static void load_weights(R& r, const FwdArgs<E>& a, const Tile& L, const Own& o, unsigned char* smem) {
    const int ldw = L.ldw / L.esz;
    E* Ws = reinterpret_cast<E*>(smem + L.w_off);
    r.each([&](int tid) {
      for (int idx = tid; idx < L.np * ldw; idx += kThreads) {
        const int row = idx / ldw, k = idx - row * ldw, g = row / o.U, u = row - g * o.U;
        E v = from_f<E>(0.0f);
        if (g < G && u < o.nu && k < a.H) v = a.w[static_cast<int64_t>(g * a.H + o.u0 + u) * a.H + k];
        Ws[idx] = weight_value<E, MODE>(v);
      }
    });
  }

  template <class R>
  RNNFAST_HD static void fetch(R& r, const FwdArgs<E>& a, const Tile& L, const Own& o, unsigned char* smem, int t) {
    In* pf = reinterpret_cast<In*>(smem + L.pf_off);
    r.each([&](int tid) {
      for (int idx = tid; idx < a.B * o.nu; idx += kThreads) {
        const int b = idx / o.nu, u = idx - b * o.nu;
        pf[b * o.U + u] = load_fwd_in<E, CELL>(a, t, b, o.u0 + u);
      }
    });
  }

  template <class R>
  RNNFAST_HD static void prologue(R& r, const FwdArgs<E>& a, const Tile& L, const Own& o, unsigned char* smem) {
    load_weights(r, a, L, o, smem);
    E* hp = slot(a, 0);
    r.each([&](int tid) {
      for (int idx = tid; idx < a.B * o.nu; idx += kThreads) {
        const int b = idx / o.nu, j = o.u0 + idx - b * o.nu;
        const int64_t bj = static_cast<int64_t>(b) * a.H + j;
        a.h[bj] = to_f(a.h0[bj]);
        hp[static_cast<int64_t>(b) * a.hp_ld + j] = a.h0[bj];
        if (CELL == RNNFAST_LSTM) a.c[bj] = to_f(a.c0[bj]);
      }
    });
    if (L.pf) fetch(r, a, L, o, smem, time(a, 0));
    r.arrive();
  }

  template <class R>
  RNNFAST_HD static void step(R& r, const FwdArgs<E>& a, const Tile& L, const Own& o, unsigned char* smem, int s) {
    const int t = time(a, s);
    const float* Cs = reinterpret_cast<const float*>(smem + L.c_off);
    const In* pf = reinterpret_cast<const In*>(smem + L.pf_off);
    E* hp_next = slot(a, s + 1);
    step_gemm(r, L, a.B, slot(a, s), a.hp_ld, a.H, [&](int b0) {
      const int rows = min_i(kRows, a.B - b0);
      r.each([&](int tid) {
        for (int idx = tid; idx < rows * o.nu; idx += kThreads) {
          const int m = idx / o.nu, u = idx - m * o.nu, b = b0 + m, j = o.u0 + u;
          float pre_h[G];
#pragma unroll
          for (int g = 0; g < G; ++g) pre_h[g] = c_sum(L, Cs, m, g * o.U + u);
          const In in = L.pf ? pf[b * o.U + u] : load_fwd_in<E, CELL>(a, t, b, j);
          const int64_t bj = static_cast<int64_t>(b) * a.H + j;
          const float h = fwd_unit<E, CELL>(a, t, b, j, in, pre_h, a.h[bj]);
          a.h[bj] = h;
          hp_next[static_cast<int64_t>(b) * a.hp_ld + j] = from_f<E>(h);
        }
      });
    });
    r.arrive();
    if (L.pf && s + 1 < a.T) fetch(r, a, L, o, smem, time(a, s + 1));
  }

  template <class R>
  RNNFAST_HD static void finish(R& r, const FwdArgs<E>& a, const Own& o) {
    r.each([&](int tid) {
      for (int idx = tid; idx < a.B * o.nu; idx += kThreads) {
        const int b = idx / o.nu;
        const int64_t bj = static_cast<int64_t>(b) * a.H + o.u0 + idx - b * o.nu;
        a.hn[bj] = from_f<E>(a.h[bj]);
        if (CELL == RNNFAST_LSTM) a.cn[bj] = from_f<E>(a.c[bj]);
      }
    });
  }
};

// Backward. Per step s (t = T-1-s, or s with reverse), two segments around the grid wait for phase s:
//   pre:  cells of the CTA's units, every row (dh_t = dh + grad_y[t]): dgi[t], dgh[t] (published in the
//         data dtype) and the carry | arrive | fetch step s+1's cell inputs
//   post: GEMM of dgh[t] (all G·H columns, K-chunked) with the CTA's columns of W_hh;
//         dh_{t-1}[:, own] = carry + dgh[t]·W_hh[:, own]
// post writes only the CTA's own units, which only the same CTA reads in the next pre, so one grid barrier
// per step suffices; the next pre writes dgh[t'] for another t, which no CTA still reads.
template <typename E, int CELL, int MODE>
struct Bwd {
  static constexpr int G = Cell<CELL>::G;
  using In = BwdIn<CELL>;

  RNNFAST_HD static int time(const BwdArgs<E>& a, int s) { return a.reverse ? s : a.T - 1 - s; }

  // Ws[u][n] = W_hh[n][u0 + u]; zero beyond the slice.
  template <class R>
  RNNFAST_HD static void load_weights(R& r, const BwdArgs<E>& a, const Tile& L, const Own& o, unsigned char* smem) {
    const int ldw = L.ldw / L.esz;
    E* Ws = reinterpret_cast<E*>(smem + L.w_off);
    r.each([&](int tid) {
      for (int idx = tid; idx < L.np * ldw; idx += kThreads) {
        const int u = idx / ldw, n = idx - u * ldw;
        E v = from_f<E>(0.0f);
        if (u < o.nu && n < G * a.H) v = a.w[static_cast<int64_t>(n) * a.H + o.u0 + u];
        Ws[idx] = weight_value<E, MODE>(v);
      }
    });
  }

  template <class R>
  RNNFAST_HD static void fetch(R& r, const BwdArgs<E>& a, const Tile& L, const Own& o, unsigned char* smem, int t) {
    In* pf = reinterpret_cast<In*>(smem + L.pf_off);
    r.each([&](int tid) {
      for (int idx = tid; idx < a.B * o.nu; idx += kThreads) {
        const int b = idx / o.nu, u = idx - b * o.nu;
        pf[b * o.U + u] = load_bwd_in<E, CELL>(a, t, b, o.u0 + u);
      }
    });
  }

  template <class R>
  RNNFAST_HD static void prologue(R& r, const BwdArgs<E>& a, const Tile& L, const Own& o, unsigned char* smem) {
    load_weights(r, a, L, o, smem);
    r.each([&](int tid) {
      for (int idx = tid; idx < a.B * o.nu; idx += kThreads) {
        const int b = idx / o.nu;
        const int64_t bj = static_cast<int64_t>(b) * a.H + o.u0 + idx - b * o.nu;
        a.dh[bj] = to_f(a.grad_hn[bj]);
        if (CELL == RNNFAST_LSTM) a.dc[bj] = to_f(a.grad_cn[bj]);
      }
    });
    if (L.pf) fetch(r, a, L, o, smem, time(a, 0));
    r.sync();
  }

  template <class R>
  RNNFAST_HD static void pre(R& r, const BwdArgs<E>& a, const Tile& L, const Own& o, unsigned char* smem, int s) {
    const int t = time(a, s);
    const In* pf = reinterpret_cast<const In*>(smem + L.pf_off);
    r.each([&](int tid) {
      for (int idx = tid; idx < a.B * o.nu; idx += kThreads) {
        const int b = idx / o.nu, u = idx - b * o.nu, j = o.u0 + u;
        const int64_t bj = static_cast<int64_t>(b) * a.H + j;
        const In in = L.pf ? pf[b * o.U + u] : load_bwd_in<E, CELL>(a, t, b, j);
        a.carry[bj] = bwd_unit<E, CELL>(a, t, b, j, in, a.dh[bj]);
      }
    });
    r.arrive();
    if (L.pf && s + 1 < a.T) fetch(r, a, L, o, smem, time(a, s + 1));
  }

  template <class R>
  RNNFAST_HD static void post(R& r, const BwdArgs<E>& a, const Tile& L, const Own& o, unsigned char* smem, int s) {
    const float* Cs = reinterpret_cast<const float*>(smem + L.c_off);
    const E* dgh_t = a.dgh + static_cast<int64_t>(time(a, s)) * a.B * a.dgh_ld;
    step_gemm(r, L, a.B, dgh_t, a.dgh_ld, G * a.H, [&](int b0) {
      const int rows = min_i(kRows, a.B - b0);
      r.each([&](int tid) {
        for (int idx = tid; idx < rows * o.nu; idx += kThreads) {
          const int m = idx / o.nu, u = idx - m * o.nu;
          const int64_t bj = static_cast<int64_t>(b0 + m) * a.H + o.u0 + u;
          a.dh[bj] = a.carry[bj] + c_sum(L, Cs, m, u);
        }
      });
    });
    r.sync();  // the next pre (other threads) reads dh
  }

  template <class R>
  RNNFAST_HD static void finish(R& r, const BwdArgs<E>& a, const Own& o) {
    r.each([&](int tid) {
      for (int idx = tid; idx < a.B * o.nu; idx += kThreads) {
        const int b = idx / o.nu;
        const int64_t bj = static_cast<int64_t>(b) * a.H + o.u0 + idx - b * o.nu;
        a.dh0[bj] = from_f<E>(a.dh[bj]);
        if (CELL == RNNFAST_LSTM) a.dc0[bj] = from_f<E>(a.dc[bj]);
      }
    });
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
  const float h = fwd_unit<E, CELL>(a, t, b, j, load_fwd_in<E, CELL>(a, t, b, j), pre_h, a.h[idx]);
  a.h[idx] = h;
  a.hp[idx] = from_f<E>(h);
}

template <typename E, int CELL>
RNNFAST_HD void bwd_step_thread(const BwdArgs<E>& a, int t, int64_t idx) {
  const int b = static_cast<int>(idx / a.H), j = static_cast<int>(idx % a.H);
  a.carry[idx] = bwd_unit<E, CELL>(a, t, b, j, load_bwd_in<E, CELL>(a, t, b, j), a.dh[idx]);
}

}  // namespace rnnfast
