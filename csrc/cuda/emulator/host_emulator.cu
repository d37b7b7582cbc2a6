// Host emulator of the CUDA recurrence kernels, for machines without a GPU (tests/test_cuda_compile.py).
//
// It runs the kernels' own per-thread phase functions (phases.cuh) sequentially: thread by thread, CTA by
// CTA, with the kernels' barriers as the boundaries between loops, on a modelled GPU of `sms` SMs with
// `optin` bytes of shared memory per CTA (small values give several units per CTA, ragged last CTAs and
// several batch chunks). Shared memory and workspaces start as NaN, so a read before a write shows.
// Races show as a dependence on the schedule: `rev` runs CTAs and threads in descending order, and the
// backward lets each CTA run ahead into the next step's phase A before the next CTA does its phase B (the
// skew its single grid barrier per step allows). Tensor cores are replaced by chunk_mma_model, so the
// half/bfloat16 path checks the tile layout but not the WMMA calls themselves.
//
// It also implements the C ABI of rnnfast_cuda.h on the host (a modelled GPU of kModelSms SMs and
// kModelOptin bytes of shared memory), so that bindings.cpp built with -DRNNFAST_HOST_EMULATION and linked
// against this file runs the whole binding (checks, allocation, the stepwise loop's ATen GEMMs) on CPU
// tensors. Not part of the extension (the build globs csrc/cuda/*.cu only).
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "../phases.cuh"

namespace rnnfast {
namespace {

constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();

struct Schedule {
  int ctas;
  bool rev;
  int cta(int i) const { return rev ? ctas - 1 - i : i; }
  static int thread(int j, bool rev) { return rev ? kThreads - 1 - j : j; }
};

// Per-CTA shared memory, filled with 0xFF bytes (NaN in every dtype).
struct Smem {
  std::vector<std::vector<unsigned char>> bytes;
  Smem(int ctas, const Tile& L) : bytes(ctas, std::vector<unsigned char>(L.bytes, 0xFF)) {}
  template <typename T>
  T* at(int cta, int off) {
    return reinterpret_cast<T*>(bytes[cta].data() + off);
  }
};

template <typename F>
void threads(bool rev, F&& f) {
  for (int j = 0; j < kThreads; ++j) f(Schedule::thread(j, rev));
}

// work: rnnfast_fwd_workspace(B, H) floats, or null for an internal NaN-filled one.
template <typename E, int CELL>
int fwd_persistent(FwdArgs<E> a, int sms, int optin, bool rev, float* work = nullptr) {
  using P = FwdPhases<E, CELL>;
  int U = 0, ctas = 0;
  Tile L{};
  if (!choose_tile<E>(Cell<CELL>::G, a.H, false, a.B, a.H, sms, optin, &U, &ctas, &L)) return 1;
  std::vector<float> own(work ? 0 : rnnfast_fwd_workspace(a.B, a.H), kNaN);
  if (!work) work = own.data();
  a.h = work, a.c = work + 2 * static_cast<size_t>(a.B) * a.H;
  Smem sm(ctas, L);
  const Schedule S{ctas, rev};
  for (int i = 0; i < ctas; ++i) {
    const int cta = S.cta(i);
    threads(rev, [&](int tid) { P::load_weights(a, L, U, cta, tid, sm.at<E>(cta, L.w_off)); });
    threads(rev, [&](int tid) { P::init_state(a, U, cta, tid); });
  }
  for (int s = 0; s < a.T; ++s) {  // grid barrier between steps
    for (int i = 0; i < ctas; ++i) {
      const int cta = S.cta(i);
      E* As = sm.at<E>(cta, L.a_off);
      E* Ws = sm.at<E>(cta, L.w_off);
      float* Cs = sm.at<float>(cta, L.c_off);
      for (int b0 = 0; b0 < a.B; b0 += L.bc) {
        const int rows = a.B - b0 < L.bc ? a.B - b0 : L.bc;
        threads(rev, [&](int tid) { P::stage(a, L, s, b0, tid, As); });
        threads(rev, [&](int tid) { chunk_gemm<E>(L, tid, rows, As, Ws, Cs); });
        threads(rev, [&](int tid) { P::cells(a, L, U, cta, s, b0, tid, Cs); });
      }
    }
  }
  for (int i = 0; i < ctas; ++i) threads(rev, [&](int tid) { P::finish(a, U, S.cta(i), tid); });
  return 0;
}

// work: rnnfast_bwd_workspace(B, H) floats, or null for an internal NaN-filled one.
template <typename E, int CELL>
int bwd_persistent(BwdArgs<E> a, int sms, int optin, bool rev, float* work = nullptr) {
  using P = BwdPhases<E, CELL>;
  int U = 0, ctas = 0;
  Tile L{};
  if (!choose_tile<E>(1, Cell<CELL>::G * a.H, true, a.B, a.H, sms, optin, &U, &ctas, &L)) return 1;
  const size_t BH = static_cast<size_t>(a.B) * a.H;
  std::vector<float> own(work ? 0 : rnnfast_bwd_workspace(a.B, a.H), kNaN);
  if (!work) work = own.data();
  a.dh = work, a.carry = work + BH, a.dc = work + 2 * BH;
  Smem sm(ctas, L);
  const Schedule S{ctas, rev};
  for (int i = 0; i < ctas; ++i) {
    const int cta = S.cta(i);
    threads(rev, [&](int tid) { P::load_weights(a, L, U, cta, tid, sm.at<E>(cta, L.w_off)); });
    threads(rev, [&](int tid) { P::init_state(a, U, cta, tid); });
    threads(rev, [&](int tid) { P::cells(a, U, cta, 0, tid); });
  }
  for (int s = 0; s < a.T; ++s) {  // grid barrier: phase A of step s is complete everywhere
    for (int i = 0; i < ctas; ++i) {
      const int cta = S.cta(i);
      E* As = sm.at<E>(cta, L.a_off);
      E* Ws = sm.at<E>(cta, L.w_off);
      float* Cs = sm.at<float>(cta, L.c_off);
      for (int b0 = 0; b0 < a.B; b0 += L.bc) {
        const int rows = a.B - b0 < L.bc ? a.B - b0 : L.bc;
        threads(rev, [&](int tid) { P::stage(a, L, s, b0, tid, As); });
        threads(rev, [&](int tid) { chunk_gemm<E>(L, tid, rows, As, Ws, Cs); });
        threads(rev, [&](int tid) { P::accumulate(a, L, U, cta, b0, tid, Cs); });
      }
      // This CTA runs ahead into the next step's phase A while later CTAs still read dgh[t].
      if (s + 1 < a.T) threads(rev, [&](int tid) { P::cells(a, U, cta, s + 1, tid); });
    }
  }
  for (int i = 0; i < ctas; ++i) threads(rev, [&](int tid) { P::finish(a, U, S.cta(i), tid); });
  return 0;
}

// Stepwise: the GEMMs the binding runs through ATen, as float32 loops, and the pointwise kernels.
template <typename E, int CELL>
int fwd_stepwise(FwdArgs<E> a, bool rev) {
  constexpr int G = Cell<CELL>::G;
  const int B = a.B, H = a.H, GH = G * H;
  std::vector<float> h(static_cast<size_t>(B) * H), c(static_cast<size_t>(B) * H, kNaN), gh(static_cast<size_t>(B) * GH);
  for (size_t i = 0; i < h.size(); ++i) {
    h[i] = to_f(a.h0[i]);
    if (CELL == RNNFAST_LSTM) c[i] = to_f(a.c0[i]);
  }
  a.h = h.data(), a.c = c.data(), a.gh = gh.data();
  const int64_t n = static_cast<int64_t>(B) * H;
  for (int s = 0; s < a.T; ++s) {
    const int t = a.reverse ? a.T - 1 - s : s;
    for (int b = 0; b < B; ++b)
      for (int r = 0; r < GH; ++r) {
        float acc = 0.0f;
        for (int k = 0; k < H; ++k) acc += h[static_cast<size_t>(b) * H + k] * to_f(a.w[static_cast<size_t>(r) * H + k]);
        gh[static_cast<size_t>(b) * GH + r] = acc;
      }
    for (int64_t i = 0; i < n; ++i) fwd_step_thread<E, CELL>(a, t, rev ? n - 1 - i : i);
  }
  for (int64_t i = 0; i < n; ++i) {
    a.hn[i] = from_f<E>(h[i]);
    if (CELL == RNNFAST_LSTM) a.cn[i] = from_f<E>(c[i]);
  }
  return 0;
}

template <typename E, int CELL>
int bwd_stepwise(BwdArgs<E> a, bool rev) {
  constexpr int G = Cell<CELL>::G;
  const int B = a.B, H = a.H, GH = G * H;
  const size_t BH = static_cast<size_t>(B) * H;
  std::vector<float> dh(BH), dc(BH, kNaN), carry(BH, kNaN);
  for (size_t i = 0; i < BH; ++i) {
    dh[i] = to_f(a.grad_hn[i]);
    if (CELL == RNNFAST_LSTM) dc[i] = to_f(a.grad_cn[i]);
  }
  a.dh = dh.data(), a.dc = dc.data(), a.carry = carry.data();
  const int64_t n = static_cast<int64_t>(BH);
  for (int s = 0; s < a.T; ++s) {
    const int t = a.reverse ? s : a.T - 1 - s;
    for (int64_t i = 0; i < n; ++i) bwd_step_thread<E, CELL>(a, t, rev ? n - 1 - i : i);
    const float* dgh_t = a.dgh + static_cast<size_t>(t) * B * GH;
    for (int b = 0; b < B; ++b)
      for (int k = 0; k < H; ++k) {
        float acc = carry[static_cast<size_t>(b) * H + k];
        for (int r = 0; r < GH; ++r) acc += dgh_t[static_cast<size_t>(b) * GH + r] * to_f(a.w[static_cast<size_t>(r) * H + k]);
        dh[static_cast<size_t>(b) * H + k] = acc;
      }
  }
  for (size_t i = 0; i < BH; ++i) {
    a.dh0[i] = from_f<E>(dh[i]);
    if (CELL == RNNFAST_LSTM) a.dc0[i] = from_f<E>(dc[i]);
  }
  return 0;
}

}  // namespace
}  // namespace rnnfast

using namespace rnnfast;

// algo: 1 persistent, 2 stepwise. Returns 0, 1 when the persistent tile does not fit the modelled GPU,
// or cudaErrorInvalidValue for an unknown cell/dtype. Arguments as rnnfast_fwd_persistent.
extern "C" int rnnfast_emulate_fwd(int algo, int cell, int dtype, int T, int B, int H, int reverse, int sms,
                                   int optin, int rev, const void* gi, const void* h0, const void* c0,
                                   const void* w_hh, const void* b_hh, const int64_t* lengths, void* y, void* h_n,
                                   void* c_n, float* ws) {
  RNNFAST_DISPATCH_DTYPE(dtype, E, {
    FwdArgs<E> a{};
    a.T = T, a.B = B, a.H = H, a.reverse = reverse;
    a.gi = static_cast<const E*>(gi), a.h0 = static_cast<const E*>(h0), a.c0 = static_cast<const E*>(c0);
    a.w = static_cast<const E*>(w_hh), a.bias = static_cast<const E*>(b_hh), a.lengths = lengths;
    a.y = static_cast<E*>(y), a.hn = static_cast<E*>(h_n), a.cn = static_cast<E*>(c_n), a.ws = ws;
    RNNFAST_DISPATCH_CELL(cell, CELL, {
      return algo == 1 ? fwd_persistent<E, CELL>(a, sms, optin, rev != 0) : fwd_stepwise<E, CELL>(a, rev != 0);
    })
  })
}

extern "C" int rnnfast_emulate_bwd(int algo, int cell, int dtype, int T, int B, int H, int reverse, int sms,
                                   int optin, int rev, const void* grad_y, const void* grad_hn, const void* grad_cn,
                                   const void* h0, const void* c0, const void* w_hh, const int64_t* lengths,
                                   const void* y, const float* ws, void* dgi, float* dgh, void* dh0, void* dc0) {
  RNNFAST_DISPATCH_DTYPE(dtype, E, {
    BwdArgs<E> a{};
    a.T = T, a.B = B, a.H = H, a.reverse = reverse;
    a.grad_y = static_cast<const E*>(grad_y), a.grad_hn = static_cast<const E*>(grad_hn);
    a.grad_cn = static_cast<const E*>(grad_cn), a.h0 = static_cast<const E*>(h0);
    a.c0 = static_cast<const E*>(c0), a.w = static_cast<const E*>(w_hh), a.lengths = lengths;
    a.y = static_cast<const E*>(y), a.ws = ws, a.dgi = static_cast<E*>(dgi), a.dgh = dgh;
    a.dh0 = static_cast<E*>(dh0), a.dc0 = static_cast<E*>(dc0);
    RNNFAST_DISPATCH_CELL(cell, CELL, {
      return algo == 1 ? bwd_persistent<E, CELL>(a, sms, optin, rev != 0) : bwd_stepwise<E, CELL>(a, rev != 0);
    })
  })
}

// ---------------------------------------------------------------------------------------------------
// The C ABI of rnnfast_cuda.h, emulated. Streams are ignored; errors are cudaError_t codes.

namespace {
constexpr int kModelSms = 4;
constexpr int kModelOptin = 232448;  // an H100's opt-in shared memory per block (227 KiB)
constexpr int kInvalid = static_cast<int>(cudaErrorInvalidValue);
}  // namespace

extern "C" const char* rnnfast_cuda_error_string(int err) {
  return err == 0 ? "no error" : (err == kInvalid ? "invalid argument" : "emulated launch failed");
}

extern "C" int rnnfast_persistent_plan(int cell, int dtype, int B, int H, int backward, int, rnnfast_plan* p) {
  *p = rnnfast_plan{};
  RNNFAST_DISPATCH_DTYPE(dtype, E, {
    RNNFAST_DISPATCH_CELL(cell, CELL, {
      const int G = Cell<CELL>::G;
      int U = 0, ctas = 0;
      Tile L{};
      const bool ok = backward ? choose_tile<E>(1, G * H, true, B, H, kModelSms, kModelOptin, &U, &ctas, &L)
                               : choose_tile<E>(G, H, false, B, H, kModelSms, kModelOptin, &U, &ctas, &L);
      if (ok) p->ok = 1, p->ctas = ctas, p->units = U, p->batch_chunk = L.bc, p->split_k = L.ks, p->smem_bytes = L.bytes;
      return 0;
    })
  })
}

extern "C" int rnnfast_fwd_persistent(int cell, int dtype, int T, int B, int H, int reverse, const void* gi,
                                      const void* h0, const void* c0, const void* w_hh, const void* b_hh,
                                      const int64_t* lengths, void* y, void* h_n, void* c_n, float* ws,
                                      float* work, const rnnfast_plan* plan, rnnfast_stream) {
  if (plan == nullptr || !plan->ok) return kInvalid;
  RNNFAST_DISPATCH_DTYPE(dtype, E, {
    FwdArgs<E> a{};
    a.T = T, a.B = B, a.H = H, a.reverse = reverse;
    a.gi = static_cast<const E*>(gi), a.h0 = static_cast<const E*>(h0), a.c0 = static_cast<const E*>(c0);
    a.w = static_cast<const E*>(w_hh), a.bias = static_cast<const E*>(b_hh), a.lengths = lengths;
    a.y = static_cast<E*>(y), a.hn = static_cast<E*>(h_n), a.cn = static_cast<E*>(c_n), a.ws = ws;
    RNNFAST_DISPATCH_CELL(cell, CELL, {
      return fwd_persistent<E, CELL>(a, kModelSms, kModelOptin, false, work) ? kInvalid : 0;
    })
  })
}

extern "C" int rnnfast_bwd_persistent(int cell, int dtype, int T, int B, int H, int reverse, const void* grad_y,
                                      const void* grad_hn, const void* grad_cn, const void* h0, const void* c0,
                                      const void* w_hh, const int64_t* lengths, const void* y, const float* ws,
                                      void* dgi, float* dgh, void* dh0, void* dc0, float* work,
                                      const rnnfast_plan* plan, rnnfast_stream) {
  if (plan == nullptr || !plan->ok) return kInvalid;
  RNNFAST_DISPATCH_DTYPE(dtype, E, {
    BwdArgs<E> a{};
    a.T = T, a.B = B, a.H = H, a.reverse = reverse;
    a.grad_y = static_cast<const E*>(grad_y), a.grad_hn = static_cast<const E*>(grad_hn);
    a.grad_cn = static_cast<const E*>(grad_cn), a.h0 = static_cast<const E*>(h0);
    a.c0 = static_cast<const E*>(c0), a.w = static_cast<const E*>(w_hh), a.lengths = lengths;
    a.y = static_cast<const E*>(y), a.ws = ws, a.dgi = static_cast<E*>(dgi), a.dgh = dgh;
    a.dh0 = static_cast<E*>(dh0), a.dc0 = static_cast<E*>(dc0);
    RNNFAST_DISPATCH_CELL(cell, CELL, {
      return bwd_persistent<E, CELL>(a, kModelSms, kModelOptin, false, work) ? kInvalid : 0;
    })
  })
}

extern "C" int rnnfast_fwd_step(int cell, int dtype, int t, int T, int B, int H, const void* gi, const float* gh,
                                const void* b_hh, const int64_t* lengths, float* h, float* c, void* y, float* ws,
                                rnnfast_stream) {
  RNNFAST_DISPATCH_DTYPE(dtype, E, {
    FwdArgs<E> a{};
    a.T = T, a.B = B, a.H = H;
    a.gi = static_cast<const E*>(gi), a.bias = static_cast<const E*>(b_hh), a.lengths = lengths;
    a.y = static_cast<E*>(y), a.ws = ws, a.h = h, a.c = c, a.gh = gh;
    RNNFAST_DISPATCH_CELL(cell, CELL, {
      for (int64_t i = 0; i < static_cast<int64_t>(B) * H; ++i) fwd_step_thread<E, CELL>(a, t, i);
      return 0;
    })
  })
}

extern "C" int rnnfast_bwd_step(int cell, int dtype, int t, int T, int B, int H, int reverse, const void* grad_y,
                                const void* h0, const void* c0, const int64_t* lengths, const void* y,
                                const float* ws, const float* dh, float* dc, void* dgi, float* dgh, float* carry,
                                rnnfast_stream) {
  RNNFAST_DISPATCH_DTYPE(dtype, E, {
    BwdArgs<E> a{};
    a.T = T, a.B = B, a.H = H, a.reverse = reverse;
    a.grad_y = static_cast<const E*>(grad_y), a.h0 = static_cast<const E*>(h0), a.c0 = static_cast<const E*>(c0);
    a.lengths = lengths, a.y = static_cast<const E*>(y), a.ws = ws;
    a.dgi = static_cast<E*>(dgi), a.dgh = dgh, a.dh = const_cast<float*>(dh), a.carry = carry, a.dc = dc;
    RNNFAST_DISPATCH_CELL(cell, CELL, {
      for (int64_t i = 0; i < static_cast<int64_t>(B) * H; ++i) bwd_step_thread<E, CELL>(a, t, i);
      return 0;
    })
  })
}
