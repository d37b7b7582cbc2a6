// Device code shared by every recurrence kernel: dtype conversion, the four cells (forward and backward
// pointwise math of one hidden unit), and the per-(t, b, j) work both algorithms run.
//
// Dimensions: T time, B batch, H hidden, G gates, S saved activations per unit (see rnnfast_cuda.h).
// The math follows rnnfast/ops/recurrence/reference.py line by line, in float32.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <stdint.h>

#include "rnnfast_cuda.h"

// Everything here is __host__ __device__ so that the kernels' per-thread work can also run, thread by thread,
// in the host emulator (csrc/cuda/emulator), which checks the indexing on a machine without a GPU.
#define RNNFAST_HD __host__ __device__ __forceinline__

namespace rnnfast {

RNNFAST_HD float to_f(float v) { return v; }
RNNFAST_HD float to_f(__half v) { return __half2float(v); }
RNNFAST_HD float to_f(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T>
RNNFAST_HD T from_f(float v);
template <>
RNNFAST_HD float from_f<float>(float v) { return v; }
template <>
RNNFAST_HD __half from_f<__half>(float v) { return __float2half_rn(v); }
template <>
RNNFAST_HD __nv_bfloat16 from_f<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }

// Accurate (not __expf-based) so that float32 results stay within a few ulp of the reference.
RNNFAST_HD float sigmoidf(float x) { return 1.0f / (1.0f + expf(-x)); }

template <int CELL>
struct Cell;

template <>
struct Cell<RNNFAST_RNN_TANH> {
  static constexpr int G = 1, S = 0;
  // pre_i, pre_h: the G pre-activations from gi and from h·W_hhᵀ + b_hh. Returns h_t; c, saved unused.
  RNNFAST_HD static float fwd(const float* pre_i, const float* pre_h, float, float&, float*) {
    return tanhf(pre_i[0] + pre_h[0]);
  }
  // dh: total gradient w.r.t. h_t; h_out: h_t as stored in y. Writes d_gi, d_gh (w.r.t. gi and gh);
  // returns the gradient w.r.t. h_{t-1} that bypasses W_hh (none for an Elman RNN).
  RNNFAST_HD static float bwd(float dh, float&, const float*, float, float, float h_out, float* d_gi, float* d_gh) {
    d_gi[0] = d_gh[0] = dh * (1.0f - h_out * h_out);
    return 0.0f;
  }
};

template <>
struct Cell<RNNFAST_RNN_RELU> {
  static constexpr int G = 1, S = 0;
  RNNFAST_HD static float fwd(const float* pre_i, const float* pre_h, float, float&, float*) {
    return fmaxf(pre_i[0] + pre_h[0], 0.0f);
  }
  RNNFAST_HD static float bwd(float dh, float&, const float*, float, float, float h_out, float* d_gi, float* d_gh) {
    d_gi[0] = d_gh[0] = h_out > 0.0f ? dh : 0.0f;
    return 0.0f;
  }
};

template <>
struct Cell<RNNFAST_GRU> {
  static constexpr int G = 3, S = 4;  // saved: r, z, n, hn = W_hn·h + b_hn
  RNNFAST_HD static float fwd(const float* pre_i, const float* pre_h, float h_prev, float&, float* saved) {
    const float r = sigmoidf(pre_i[0] + pre_h[0]);
    const float z = sigmoidf(pre_i[1] + pre_h[1]);
    const float n = tanhf(pre_i[2] + r * pre_h[2]);
    saved[0] = r, saved[1] = z, saved[2] = n, saved[3] = pre_h[2];
    return (1.0f - z) * n + z * h_prev;
  }
  RNNFAST_HD static float bwd(float dh, float&, const float* s, float h_prev, float, float, float* d_gi,
                              float* d_gh) {
    const float r = s[0], z = s[1], n = s[2], hn = s[3];
    const float dn = dh * (1.0f - z) * (1.0f - n * n);
    const float dz = dh * (h_prev - n) * z * (1.0f - z);
    const float dr = dn * hn * r * (1.0f - r);
    d_gi[0] = d_gh[0] = dr;
    d_gi[1] = d_gh[1] = dz;
    d_gi[2] = dn;
    d_gh[2] = dn * r;
    return dh * z;
  }
};

template <>
struct Cell<RNNFAST_LSTM> {
  static constexpr int G = 4, S = 5;  // saved: i, f, g, o (activated), c_t
  RNNFAST_HD static float fwd(const float* pre_i, const float* pre_h, float, float& c, float* saved) {
    const float i = sigmoidf(pre_i[0] + pre_h[0]);
    const float f = sigmoidf(pre_i[1] + pre_h[1]);
    const float g = tanhf(pre_i[2] + pre_h[2]);
    const float o = sigmoidf(pre_i[3] + pre_h[3]);
    c = f * c + i * g;
    saved[0] = i, saved[1] = f, saved[2] = g, saved[3] = o, saved[4] = c;
    return o * tanhf(c);
  }
  // dc: gradient w.r.t. c_t flowing from later steps on entry, w.r.t. c_{t-1} on exit.
  RNNFAST_HD static float bwd(float dh, float& dc, const float* s, float, float c_prev, float, float* d_gi,
                              float* d_gh) {
    const float i = s[0], f = s[1], g = s[2], o = s[3], c = s[4];
    const float tc = tanhf(c);
    dc += dh * o * (1.0f - tc * tc);
    d_gi[0] = d_gh[0] = dc * g * i * (1.0f - i);
    d_gi[1] = d_gh[1] = dc * c_prev * f * (1.0f - f);
    d_gi[2] = d_gh[2] = dc * i * (1.0f - g * g);
    d_gi[3] = d_gh[3] = dh * tc * o * (1.0f - o);
    dc *= f;
    return 0.0f;
  }
};

template <typename E>
struct FwdArgs {
  int T, B, H, reverse;
  const E* gi;             // (T, B, G·H)
  const E* h0;             // (B, H)
  const E* c0;             // (B, H) or null
  const E* w;              // (G·H, H)
  const E* bias;           // (G·H) or null
  const int64_t* lengths;  // (B) or null
  E* y;                    // (T, B, H)
  E* hn;                   // (B, H)
  E* cn;                   // (B, H) or null
  float* ws;               // (T, B, S·H) or null
  float* h;                // float32 state (B, H), read and written by the owner of each unit only
  float* c;                // float32 cell state (B, H), likewise
  E* hp;                   // h published in the data dtype: persistent (2, B, hp_ld) ping-pong, stepwise (B, H)
  int hp_ld;               // row stride of hp
  const float* gh;         // stepwise: (B, G·H) = h·W_hhᵀ without bias
};

template <typename E>
struct BwdArgs {
  int T, B, H, reverse;
  const E* grad_y;         // (T, B, H)
  const E* grad_hn;        // (B, H)
  const E* grad_cn;        // (B, H) or null
  const E* h0;             // (B, H)
  const E* c0;             // (B, H) or null
  const E* w;              // (G·H, H)
  const int64_t* lengths;  // (B) or null
  const E* y;              // (T, B, H)
  const float* ws;         // (T, B, S·H)
  E* dgi;                  // (T, B, G·H)
  E* dgh;                  // (T, B, dgh_ld), columns < G·H used
  int dgh_ld;              // rnnfast_row(G·H, dtype)
  E* dh0;                  // (B, H)
  E* dc0;                  // (B, H) or null
  float* dh;               // (B, H) gradient w.r.t. h_t flowing from later steps
  float* carry;            // (B, H) gradient w.r.t. h_{t-1} that bypasses W_hh
  float* dc;               // (B, H) gradient w.r.t. c_t (LSTM)
};

// Number of valid steps of row b: lengths[b] clamped to [0, T], or T.
RNNFAST_HD int row_length(const int64_t* lengths, int b, int T) {
  if (lengths == nullptr) return T;
  const int64_t l = lengths[b];
  return l < 0 ? 0 : (l > T ? T : static_cast<int>(l));
}

// What the forward of unit (b, j) at step t reads besides the state: its G input pre-activations. The
// persistent kernels fetch it for the next step before waiting at the grid barrier.
template <int CELL>
struct FwdIn {
  float gi[Cell<CELL>::G];
};

template <typename E, int CELL>
RNNFAST_HD FwdIn<CELL> load_fwd_in(const FwdArgs<E>& a, int t, int b, int j) {
  constexpr int G = Cell<CELL>::G;
  FwdIn<CELL> in;
  const bool valid = t < row_length(a.lengths, b, a.T);
  const E* gi = a.gi + (static_cast<int64_t>(t) * a.B + b) * G * a.H + j;
#pragma unroll
  for (int g = 0; g < G; ++g) in.gi[g] = valid ? to_f(gi[g * a.H]) : 0.0f;
  return in;
}

// Forward of unit (b, j) at time t. pre_h: the G values of (h_{t-1}·W_hhᵀ)[b, g·H + j] without bias.
// Writes y[t, b, j] (0 when t is past the row's length), ws and the cell state; returns h after the step
// (h_prev when the step is invalid: the state is frozen).
template <typename E, int CELL>
RNNFAST_HD float fwd_unit(const FwdArgs<E>& a, int t, int b, int j, const FwdIn<CELL>& in, float* pre_h,
                          float h_prev) {
  using C = Cell<CELL>;
  const int64_t tb = static_cast<int64_t>(t) * a.B + b;
  if (t >= row_length(a.lengths, b, a.T)) {
    a.y[tb * a.H + j] = from_f<E>(0.0f);
    return h_prev;
  }
  if (a.bias != nullptr) {
#pragma unroll
    for (int g = 0; g < C::G; ++g) pre_h[g] += to_f(a.bias[g * a.H + j]);
  }
  float c = 0.0f;
  if (CELL == RNNFAST_LSTM) c = a.c[static_cast<int64_t>(b) * a.H + j];
  float saved[C::S > 0 ? C::S : 1];
  const float h = C::fwd(in.gi, pre_h, h_prev, c, saved);
  if (CELL == RNNFAST_LSTM) a.c[static_cast<int64_t>(b) * a.H + j] = c;
  a.y[tb * a.H + j] = from_f<E>(h);
  if (C::S > 0 && a.ws != nullptr) {
    float* ws = a.ws + tb * C::S * a.H + j;
#pragma unroll
    for (int s = 0; s < C::S; ++s) ws[s * a.H] = saved[s];
  }
  return h;
}

// What the backward of unit (b, j) at step t reads besides dh and dc: grad_y[t], the saved activations,
// the previous state where the cell needs it (GRU h_{t-1}, LSTM c_{t-1}) and, for an Elman RNN, h_t.
// Nothing is read at an invalid step (the saved activations there may be NaN).
template <int CELL>
struct BwdIn {
  float gy, h_prev, c_prev, h_out;
  float saved[Cell<CELL>::S > 0 ? Cell<CELL>::S : 1];
};

template <typename E, int CELL>
RNNFAST_HD BwdIn<CELL> load_bwd_in(const BwdArgs<E>& a, int t, int b, int j) {
  using C = Cell<CELL>;
  BwdIn<CELL> in{};
  const int len = row_length(a.lengths, b, a.T);
  if (t >= len) return in;
  const int64_t tb = static_cast<int64_t>(t) * a.B + b;
  in.gy = to_f(a.grad_y[tb * a.H + j]);
  // The step before t in processing order, and whether t was the row's first step (state from h0/c0).
  const int t_prev = a.reverse ? t + 1 : t - 1;
  const bool first = a.reverse ? (t + 1 >= len) : (t == 0);
  const int64_t bj = static_cast<int64_t>(b) * a.H + j;
  const int64_t prev_tb = static_cast<int64_t>(t_prev) * a.B + b;
  if (CELL == RNNFAST_GRU) in.h_prev = first ? to_f(a.h0[bj]) : to_f(a.y[prev_tb * a.H + j]);
  if (CELL == RNNFAST_LSTM) in.c_prev = first ? to_f(a.c0[bj]) : a.ws[prev_tb * C::S * a.H + 4 * a.H + j];
#pragma unroll
  for (int s = 0; s < C::S; ++s) in.saved[s] = a.ws[tb * C::S * a.H + s * a.H + j];
  if (C::S == 0) in.h_out = to_f(a.y[tb * a.H + j]);
  return in;
}

// Backward of unit (b, j) at time t. dh_next: gradient w.r.t. h_t from later steps (not yet including
// grad_y[t]). Writes dgi[t], dgh[t] (zero at invalid steps), updates dc; returns the carry: the part of
// the gradient w.r.t. h_{t-1} that does not go through W_hh (all of dh at an invalid step, where the
// state was frozen).
template <typename E, int CELL>
RNNFAST_HD float bwd_unit(const BwdArgs<E>& a, int t, int b, int j, const BwdIn<CELL>& in, float dh_next) {
  using C = Cell<CELL>;
  const int64_t tb = static_cast<int64_t>(t) * a.B + b;
  E* dgi = a.dgi + tb * C::G * a.H + j;
  E* dgh = a.dgh + tb * a.dgh_ld + j;
  if (t >= row_length(a.lengths, b, a.T)) {
#pragma unroll
    for (int g = 0; g < C::G; ++g) dgi[g * a.H] = dgh[g * a.H] = from_f<E>(0.0f);
    return dh_next;
  }
  const int64_t bj = static_cast<int64_t>(b) * a.H + j;
  float dc = CELL == RNNFAST_LSTM ? a.dc[bj] : 0.0f;
  float d_gi[C::G], d_gh[C::G];
  const float carry = C::bwd(dh_next + in.gy, dc, in.saved, in.h_prev, in.c_prev, in.h_out, d_gi, d_gh);
  if (CELL == RNNFAST_LSTM) a.dc[bj] = dc;
#pragma unroll
  for (int g = 0; g < C::G; ++g) {
    dgi[g * a.H] = from_f<E>(d_gi[g]);
    dgh[g * a.H] = from_f<E>(d_gh[g]);
  }
  return carry;
}

// Run __VA_ARGS__ (a return statement) with CELL_NAME / TYPE_NAME bound to the compile-time cell / element
// type of a runtime code; an unknown code returns cudaErrorInvalidValue.
#define RNNFAST_DISPATCH_CELL(cell, CELL_NAME, ...)                      \
  switch (cell) {                                                        \
    case RNNFAST_RNN_TANH: {                                             \
      constexpr int CELL_NAME = RNNFAST_RNN_TANH;                        \
      __VA_ARGS__;                                                       \
    }                                                                    \
    case RNNFAST_RNN_RELU: {                                             \
      constexpr int CELL_NAME = RNNFAST_RNN_RELU;                        \
      __VA_ARGS__;                                                       \
    }                                                                    \
    case RNNFAST_GRU: {                                                  \
      constexpr int CELL_NAME = RNNFAST_GRU;                             \
      __VA_ARGS__;                                                       \
    }                                                                    \
    case RNNFAST_LSTM: {                                                 \
      constexpr int CELL_NAME = RNNFAST_LSTM;                            \
      __VA_ARGS__;                                                       \
    }                                                                    \
    default:                                                             \
      return static_cast<int>(cudaErrorInvalidValue);                    \
  }

#define RNNFAST_DISPATCH_DTYPE(dtype, TYPE_NAME, ...) \
  switch (dtype) {                                    \
    case RNNFAST_F32: {                               \
      using TYPE_NAME = float;                        \
      __VA_ARGS__;                                    \
    }                                                 \
    case RNNFAST_F16: {                               \
      using TYPE_NAME = __half;                       \
      __VA_ARGS__;                                    \
    }                                                 \
    case RNNFAST_BF16: {                              \
      using TYPE_NAME = __nv_bfloat16;                \
      __VA_ARGS__;                                    \
    }                                                 \
    default:                                          \
      return static_cast<int>(cudaErrorInvalidValue); \
  }

}  // namespace rnnfast
