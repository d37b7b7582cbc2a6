// Host emulator of the CUDA recurrence kernels, for machines without a GPU (tests/test_cuda_compile.py).
//
// It runs the kernels' own CTA programs (phases.cuh: Fwd, Bwd) over an emulated runtime, on a modelled GPU
// of `sms` SMs with `optin` bytes of shared memory per CTA (small values give several units per CTA,
// ragged last CTAs, several K-chunks and batch blocks, no prefetch buffer):
// - each(f) runs f for the 256 threads one after another (ascending, or descending in the reversed
//   schedule), and the warp-level GEMM (gemm.cuh) runs warp by warp with all 32 lanes at once;
// - ldmatrix and mma.sync follow the PTX ISA's definitions, written here independently of the kernel side:
//   which lane receives which word of which row (ldmatrix), and which fragment register holds which
//   element of A, B, C (mma). The kernel side's lane addresses and accumulator positions (tile.cuh) are
//   what is being checked. Each ldmatrix phase (8 row addresses) is also checked for bank conflicts, for
//   alignment and for reading inside the rows it means to read (never the skew padding);
// - a cp.async copy may land anywhere between its issue and the wait that covers its group: in the
//   ascending and rotating schedules it lands at that wait, its destination reading as NaN until then (a
//   missing wait shows); in the descending schedule it lands at issue (a buffer overwritten while still
//   being read shows);
// - shared memory and workspaces start as NaN; the padding of published rows is never written;
// - CTA schedules: the order in which CTAs run each segment between grid barriers (ascending,
//   descending, rotating with the step). The backward also lets each CTA run ahead into the next step's
//   cells before the next CTA multiplies (the skew one barrier per step allows). A race between CTAs then
//   shows as a result that depends on the schedule, i.e. a mismatch against the reference.
//
// It also implements the C ABI of rnnfast_cuda.h on the host (a modelled GPU of kModelSms SMs and
// kModelOptin bytes), so that bindings.cpp built with -DRNNFAST_HOST_EMULATION and linked against this file
// runs the whole binding (checks, allocation, the stepwise loop's ATen GEMMs) on CPU tensors. Not part of
// the extension (the build globs csrc/cuda/*.cu only).
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "../phases.cuh"

namespace rnnfast {
namespace {

constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();

struct Stats {
  long ldsm_phases = 0, bank_conflicts = 0, misplaced = 0, copies = 0, pending_at_exit = 0;
};

// CTA order of schedule `order` at step s: 0 ascending, 1 descending, 2 rotating (starts at CTA s % ctas).
int cta_at(int order, int ctas, int s, int i) {
  if (order == 1) return ctas - 1 - i;
  if (order == 2) return (i + s) % ctas;
  return i;
}

uint32_t word(const unsigned char* p) {
  uint32_t w;
  std::memcpy(&w, p, 4);
  return w;
}

template <typename E>
float half_bits(uint32_t bits16);
template <>
float half_bits<__half>(uint32_t b) {
  __half_raw r;
  r.x = static_cast<unsigned short>(b);
  return __half2float(__half(r));
}
template <>
float half_bits<__nv_bfloat16>(uint32_t b) {
  __nv_bfloat16_raw r;
  r.x = static_cast<unsigned short>(b);
  return __bfloat162float(__nv_bfloat16(r));
}

float float_bits(uint32_t w) {
  float v;
  std::memcpy(&v, &w, 4);
  return v;
}

// The warp-level operations of gemm.cuh for all 32 lanes of one warp.
template <int MODE, typename E>
struct WarpMma {
  struct Reg {
    uint32_t v[32];
  };
  struct Acc {
    float v[32][4];
  };
  const unsigned char* smem;
  const Tile* L;
  Stats* st;

  // ldmatrix .m8n8.b16 .xN: lanes 8i..8i+7 name the rows of matrix i; lane l receives 32-bit word l % 4
  // of row l / 4 of matrix i in its register i.
  void ldsm(Reg* r, int n, const int* off, int region, int ld, int rows, int row_bytes) {
    for (int i = 0; i < n; ++i) {
      bool bank_used[8] = {};
      bool conflict = false;
      for (int q = 0; q < 8; ++q) {
        const int o = off[8 * i + q];
        const int rel = o - region, row = rel / ld, col = rel - row * ld;
        if (o % 16 != 0 || rel < 0 || row >= rows || col + 16 > row_bytes) ++st->misplaced;
        const int bank = (o / 16) % 8;  // each 16-byte piece covers 4 of the 32 four-byte banks
        conflict |= bank_used[bank];
        bank_used[bank] = true;
      }
      ++st->ldsm_phases;
      st->bank_conflicts += conflict;
      for (int l = 0; l < 32; ++l) r[i].v[l] = word(smem + off[8 * i + l / 4] + 4 * (l % 4));
    }
  }
  void ldsm_a(Reg (&r)[4], int base, int lda, int kt) {
    int off[32];
    for (int l = 0; l < 32; ++l) off[l] = base + a_lane_offset(lda, kt, l);
    ldsm(r, 4, off, base, lda, kRows, lda - kSkew);
    if (MODE == RNNFAST_TF32)
      for (auto& reg : r)
        for (auto& w : reg.v) {
          const float v = tf32_round(float_bits(w));
          std::memcpy(&w, &v, 4);
        }
  }
  void ldsm_b(Reg (&r)[4], int n, int base, int ldw, int nt, int kt) {
    int off[32];
    for (int l = 0; l < 32; ++l) off[l] = base + b_lane_offset(ldw, nt, kt, l);
    ldsm(r, n, off, base, ldw, L->np, ldw - kSkew);
  }

  // mma.sync.m16n8k16 (16-bit types) / m16n8k8 (tf32), row.col, float32 accumulate. With g = lane / 4,
  // t = lane % 4: A a0 (g, 2t..2t+1) a1 (g+8, 2t..) a2 (g, 2t+8..) a3 (g+8, 2t+8..), low half = lower
  // column; tf32 a0 (g, t) a1 (g+8, t) a2 (g, t+4) a3 (g+8, t+4). B b0 (k 2t..2t+1, n g) b1 (k 2t+8.., g);
  // tf32 b0 (k t, n g) b1 (k t+4, g). C c0 (g, 2t) c1 (g, 2t+1) c2 (g+8, 2t) c3 (g+8, 2t+1).
  void mma(Acc& c, const Reg (&a)[4], const Reg& b0, const Reg& b1) {
    constexpr int K = MODE == RNNFAST_TF32 ? 8 : 16;
    float A[16][16] = {}, B[16][8] = {}, D[16][8];
    for (int l = 0; l < 32; ++l) {
      const int g = l / 4, t = l % 4;
      if constexpr (MODE == RNNFAST_TF32) {
        A[g][t] = float_bits(a[0].v[l]), A[g + 8][t] = float_bits(a[1].v[l]);
        A[g][t + 4] = float_bits(a[2].v[l]), A[g + 8][t + 4] = float_bits(a[3].v[l]);
        B[t][g] = float_bits(b0.v[l]), B[t + 4][g] = float_bits(b1.v[l]);
      } else {
        for (int h = 0; h < 2; ++h) {
          const int sh = 16 * h;
          A[g][2 * t + h] = half_bits<E>(a[0].v[l] >> sh), A[g + 8][2 * t + h] = half_bits<E>(a[1].v[l] >> sh);
          A[g][2 * t + 8 + h] = half_bits<E>(a[2].v[l] >> sh);
          A[g + 8][2 * t + 8 + h] = half_bits<E>(a[3].v[l] >> sh);
          B[2 * t + h][g] = half_bits<E>(b0.v[l] >> sh), B[2 * t + 8 + h][g] = half_bits<E>(b1.v[l] >> sh);
        }
      }
    }
    for (int l = 0; l < 32; ++l) {
      const int g = l / 4, t = l % 4;
      D[g][2 * t] = c.v[l][0], D[g][2 * t + 1] = c.v[l][1];
      D[g + 8][2 * t] = c.v[l][2], D[g + 8][2 * t + 1] = c.v[l][3];
    }
    for (int i = 0; i < 16; ++i)
      for (int j = 0; j < 8; ++j)
        for (int k = 0; k < K; ++k) D[i][j] += A[i][k] * B[k][j];
    for (int l = 0; l < 32; ++l) {
      const int g = l / 4, t = l % 4;
      c.v[l][0] = D[g][2 * t], c.v[l][1] = D[g][2 * t + 1];
      c.v[l][2] = D[g + 8][2 * t], c.v[l][3] = D[g + 8][2 * t + 1];
    }
  }
  // The kernel side's placement of the accumulators (tile.cuh's c_row / c_col), as DeviceCta does it.
  void store_acc(float* Cs, const Tile& T, int part, int col0, const Acc& x, const Acc& y) {
    for (int l = 0; l < 32; ++l)
      for (int i = 0; i < 4; ++i) Cs[c_index(T, part, c_row(l, i), col0 + c_col(l, i))] = x.v[l][i] + y.v[l][i];
  }
  void zero(Acc& c) {
    for (auto& lane : c.v)
      for (float& v : lane) v = 0.0f;
  }
};

// The runtime interface of phases.cuh for one whole CTA.
template <int MODE, typename E>
struct EmuCta {
  struct Copy {
    int dst;
    const unsigned char* src;
    int bytes;
  };
  std::vector<unsigned char> smem;
  bool rev, early;  // reversed thread/warp order; copies land at issue
  Stats* st;
  unsigned* arrivals;
  std::vector<std::vector<Copy>> groups;
  std::vector<Copy> open;
  typename WarpMma<MODE, E>::Acc acc[kWarps][2][kTilesPerJob];
  float facc[kThreads][4][4];

  EmuCta(const Tile& L, bool reversed, Stats* stats, unsigned* counter)
      : smem(L.bytes, 0xFF), rev(reversed), early(reversed), st(stats), arrivals(counter) {
    std::memset(acc, 0, sizeof(acc));
    std::memset(facc, 0, sizeof(facc));
  }

  template <class F>
  void each(F&& f) {
    for (int j = 0; j < kThreads; ++j) f(rev ? kThreads - 1 - j : j);
  }
  void sync() {}
  void copy16(int dst, const unsigned char* src, int bytes) {
    if (dst % 16 != 0 || dst < 0 || dst + 16 > static_cast<int>(smem.size()) || bytes < 0 || bytes > 16)
      ++st->misplaced;
    ++st->copies;
    if (early) {
      land({dst, src, bytes});
      return;
    }
    std::memset(smem.data() + dst, 0xFF, 16);  // in flight: unreadable until it lands
    open.push_back({dst, src, bytes});
  }
  void land(const Copy& c) {
    std::memset(smem.data() + c.dst, 0, 16);
    if (c.bytes) std::memcpy(smem.data() + c.dst, c.src, c.bytes);
  }
  void commit() {
    groups.push_back(open);
    open.clear();
  }
  void wait_copies(int pending) {
    while (static_cast<int>(groups.size()) > pending) {
      for (const Copy& c : groups.front()) land(c);
      groups.erase(groups.begin());
    }
  }
  void gemm_chunk(const Tile& L, int a_base, int klen, int kt0) {
    if constexpr (MODE == RNNFAST_FFMA) {
      for (int tid = 0; tid < kThreads; ++tid) ffma_chunk(L, tid, smem.data(), a_base, klen, kt0 * k_step(MODE), facc[tid]);
    } else {
      for (int w = 0; w < kWarps; ++w) {
        WarpMma<MODE, E> m{smem.data(), &L, st};
        mma_chunk(m, L, rev ? kWarps - 1 - w : w, a_base, klen, kt0, acc[rev ? kWarps - 1 - w : w]);
      }
    }
  }
  void gemm_flush(const Tile& L) {
    float* Cs = reinterpret_cast<float*>(smem.data() + L.c_off);
    if constexpr (MODE == RNNFAST_FFMA) {
      for (int tid = 0; tid < kThreads; ++tid) ffma_flush(L, tid, Cs, facc[tid]);
    } else {
      for (int w = 0; w < kWarps; ++w) {
        WarpMma<MODE, E> m{smem.data(), &L, st};
        mma_flush(m, L, w, Cs, acc[w]);
      }
    }
  }
  void arrive() { ++*arrivals; }
  void done() { st->pending_at_exit += static_cast<long>(groups.size() + open.size()); }
};

// What the test reads back about a run: the plan and the checks above.
struct Info {
  int64_t ctas, units, smem, k_chunk, k_chunks, split, prefetch, nbuf;
  int64_t ldsm_phases, bank_conflicts, misplaced, copies, pending_at_exit, barrier_ok;
};

void fill_info(Info* info, const Tile& L, int ctas, int U, const Stats& st, bool barrier_ok) {
  if (info == nullptr) return;
  *info = Info{ctas, U, L.bytes, L.kc, L.nkc, L.split, L.pf != 0, L.nbuf,
               st.ldsm_phases, st.bank_conflicts, st.misplaced, st.copies, st.pending_at_exit, barrier_ok};
}

// work: rnnfast_fwd_workspace_bytes, or null for an internal one; NaN-filled either way.
template <typename E, int CELL, int MODE>
int fwd_persistent(FwdArgs<E> a, int sms, int optin, int order, void* work, Info* info) {
  using P = Fwd<E, CELL, MODE>;
  const int U = units_per_cta(a.H, sms), ctas = (a.H + U - 1) / U;
  const Tile L = persistent_tile<E, CELL, MODE>(false, a.B, a.H, U, optin);
  if (L.bytes > optin) return 1;
  const int dt = std::is_same<E, float>::value ? RNNFAST_F32 : (std::is_same<E, __half>::value ? RNNFAST_F16 : RNNFAST_BF16);
  const size_t BH = static_cast<size_t>(a.B) * a.H;
  a.hp_ld = rnnfast_row(a.H, dt);
  std::vector<float> h(BH, kNaN), c(BH, kNaN);
  std::vector<E> hp(2 * static_cast<size_t>(a.B) * a.hp_ld, from_f<E>(kNaN));
  a.h = h.data(), a.c = c.data(), a.hp = hp.data();
  (void)work;
  Stats st;
  unsigned arrivals = 0;
  bool barrier_ok = true;
  std::vector<EmuCta<MODE, E>> cta;
  for (int i = 0; i < ctas; ++i) cta.emplace_back(L, order == 1, &st, &arrivals);
  for (int i = 0; i < ctas; ++i) {
    const int c_ = cta_at(order, ctas, 0, i);
    P::prologue(cta[c_], a, L, own_units(a.H, U, c_), cta[c_].smem.data());
  }
  for (int s = 0; s < a.T; ++s) {
    barrier_ok &= arrivals == phase_target(s, ctas);  // below: released early; above: never released
    for (int i = 0; i < ctas; ++i) {
      const int c_ = cta_at(order, ctas, s, i);
      P::step(cta[c_], a, L, own_units(a.H, U, c_), cta[c_].smem.data(), s);
    }
  }
  for (int i = 0; i < ctas; ++i) {
    P::finish(cta[i], a, own_units(a.H, U, i));
    cta[i].done();
  }
  fill_info(info, L, ctas, U, st, barrier_ok);
  return 0;
}

template <typename E, int CELL, int MODE>
int bwd_persistent(BwdArgs<E> a, int sms, int optin, int order, Info* info) {
  using P = Bwd<E, CELL, MODE>;
  const int U = units_per_cta(a.H, sms), ctas = (a.H + U - 1) / U;
  const Tile L = persistent_tile<E, CELL, MODE>(true, a.B, a.H, U, optin);
  if (L.bytes > optin) return 1;
  const size_t BH = static_cast<size_t>(a.B) * a.H;
  std::vector<float> dh(BH, kNaN), carry(BH, kNaN), dc(BH, kNaN);
  a.dh = dh.data(), a.carry = carry.data(), a.dc = dc.data();
  Stats st;
  unsigned arrivals = 0;
  bool barrier_ok = true;
  std::vector<EmuCta<MODE, E>> cta;
  for (int i = 0; i < ctas; ++i) cta.emplace_back(L, order == 1, &st, &arrivals);
  for (int i = 0; i < ctas; ++i) {
    const int c_ = cta_at(order, ctas, 0, i);
    P::prologue(cta[c_], a, L, own_units(a.H, U, c_), cta[c_].smem.data());
    P::pre(cta[c_], a, L, own_units(a.H, U, c_), cta[c_].smem.data(), 0);
  }
  for (int s = 0; s < a.T; ++s) {
    barrier_ok &= arrivals == phase_target(s, ctas);
    for (int i = 0; i < ctas; ++i) {
      const int c_ = cta_at(order, ctas, s, i);
      const Own o = own_units(a.H, U, c_);
      P::post(cta[c_], a, L, o, cta[c_].smem.data(), s);
      // Runs ahead into the next step's cells while later CTAs still read dgh[t].
      if (s + 1 < a.T) P::pre(cta[c_], a, L, o, cta[c_].smem.data(), s + 1);
    }
  }
  for (int i = 0; i < ctas; ++i) {
    P::finish(cta[i], a, own_units(a.H, U, i));
    cta[i].done();
  }
  fill_info(info, L, ctas, U, st, barrier_ok);
  return 0;
}

// Stepwise: the GEMMs the binding runs through ATen (operands in the data dtype, float32 accumulation) as
// loops, and the pointwise kernels' threads.
template <typename E, int CELL>
int fwd_stepwise(FwdArgs<E> a, bool rev) {
  constexpr int G = Cell<CELL>::G;
  const int B = a.B, H = a.H, GH = G * H;
  const size_t BH = static_cast<size_t>(B) * H;
  std::vector<float> h(BH), c(BH, kNaN), gh(static_cast<size_t>(B) * GH);
  std::vector<E> hp(BH);
  for (size_t i = 0; i < BH; ++i) {
    h[i] = to_f(a.h0[i]);
    hp[i] = a.h0[i];
    if (CELL == RNNFAST_LSTM) c[i] = to_f(a.c0[i]);
  }
  a.h = h.data(), a.c = c.data(), a.gh = gh.data(), a.hp = hp.data(), a.hp_ld = H;
  const int64_t n = static_cast<int64_t>(BH);
  for (int s = 0; s < a.T; ++s) {
    const int t = a.reverse ? a.T - 1 - s : s;
    for (int b = 0; b < B; ++b)
      for (int r = 0; r < GH; ++r) {
        float acc = 0.0f;
        for (int k = 0; k < H; ++k) acc += to_f(hp[static_cast<size_t>(b) * H + k]) * to_f(a.w[static_cast<size_t>(r) * H + k]);
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
    const E* dgh_t = a.dgh + static_cast<size_t>(t) * B * a.dgh_ld;
    for (int b = 0; b < B; ++b)
      for (int k = 0; k < H; ++k) {
        float acc = 0.0f;
        for (int r = 0; r < GH; ++r) acc += to_f(dgh_t[static_cast<size_t>(b) * a.dgh_ld + r]) * to_f(a.w[static_cast<size_t>(r) * H + k]);
        dh[static_cast<size_t>(b) * H + k] = carry[static_cast<size_t>(b) * H + k] + acc;
      }
  }
  for (size_t i = 0; i < BH; ++i) {
    a.dh0[i] = from_f<E>(dh[i]);
    if (CELL == RNNFAST_LSTM) a.dc0[i] = from_f<E>(dc[i]);
  }
  return 0;
}

template <typename E, class F>
int with_mode(int mode, F&& f) {
  if constexpr (std::is_same<E, float>::value) {
    if (mode == RNNFAST_TF32) return f(std::integral_constant<int, RNNFAST_TF32>{});
    if (mode == RNNFAST_FFMA) return f(std::integral_constant<int, RNNFAST_FFMA>{});
  } else {
    if (mode == RNNFAST_MMA16) return f(std::integral_constant<int, RNNFAST_MMA16>{});
  }
  return static_cast<int>(cudaErrorInvalidValue);
}

}  // namespace
}  // namespace rnnfast

using namespace rnnfast;

extern "C" int rnnfast_emulator_info_size() { return static_cast<int>(sizeof(Info)); }

// A shared-memory budget for the tests: spec 0 roomy (1 MiB), 1 just too small for the unchunked tile
// (K-chunks, prefetch buffer only if it still fits), 2 exactly the chunked tile without a prefetch buffer.
extern "C" int rnnfast_emulator_optin(int spec, int cell, int dtype, int mode, int backward, int B, int H, int sms) {
  RNNFAST_DISPATCH_DTYPE(dtype, E, {
    RNNFAST_DISPATCH_CELL(cell, CELL, {
      return with_mode<E>(mode, [&](auto m) {
        constexpr int MODE = decltype(m)::value;
        const int U = units_per_cta(H, sms), roomy = 1 << 20;
        if (spec == 0) return roomy;
        const Tile L0 = persistent_tile<E, CELL, MODE>(backward != 0, B, H, U, roomy);
        const Tile L1 = persistent_tile<E, CELL, MODE>(backward != 0, B, H, U, L0.pf_off - 1);
        return spec == 1 ? L0.pf_off - 1 : L1.pf_off;
      });
    })
  })
}

// The persistent tile for (cell, dtype, mode, direction, B, H) on a GPU of `sms` SMs with `optin` bytes per
// CTA: 0 and info filled if it fits, 1 if not.
extern "C" int rnnfast_emulator_tile(int cell, int dtype, int mode, int backward, int B, int H, int sms, int optin,
                                     void* info) {
  RNNFAST_DISPATCH_DTYPE(dtype, E, {
    RNNFAST_DISPATCH_CELL(cell, CELL, {
      return with_mode<E>(mode, [&](auto m) {
        const int U = units_per_cta(H, sms);
        const Tile L = persistent_tile<E, CELL, decltype(m)::value>(backward != 0, B, H, U, optin);
        if (L.bytes > optin) return 1;
        fill_info(static_cast<Info*>(info), L, (H + U - 1) / U, U, Stats{}, true);
        return 0;
      });
    })
  })
}

// algo: 1 persistent, 2 stepwise; order: CTA schedule (0 ascending, 1 descending, 2 rotating). Returns 0,
// 1 when the persistent tile does not fit the modelled GPU, or cudaErrorInvalidValue for an unknown code.
// info (may be null): an Info struct about the persistent run. dgh rows have rnnfast_row(G·H) elements.
extern "C" int rnnfast_emulate_fwd(int algo, int cell, int dtype, int mode, int T, int B, int H, int reverse, int sms,
                                   int optin, int order, const void* gi, const void* h0, const void* c0,
                                   const void* w_hh, const void* b_hh, const int64_t* lengths, void* y, void* h_n,
                                   void* c_n, float* ws, void* info) {
  RNNFAST_DISPATCH_DTYPE(dtype, E, {
    FwdArgs<E> a{};
    a.T = T, a.B = B, a.H = H, a.reverse = reverse;
    a.gi = static_cast<const E*>(gi), a.h0 = static_cast<const E*>(h0), a.c0 = static_cast<const E*>(c0);
    a.w = static_cast<const E*>(w_hh), a.bias = static_cast<const E*>(b_hh), a.lengths = lengths;
    a.y = static_cast<E*>(y), a.hn = static_cast<E*>(h_n), a.cn = static_cast<E*>(c_n), a.ws = ws;
    RNNFAST_DISPATCH_CELL(cell, CELL, {
      if (algo != 1) return fwd_stepwise<E, CELL>(a, order == 1);
      return with_mode<E>(mode, [&](auto m) {
        return fwd_persistent<E, CELL, decltype(m)::value>(a, sms, optin, order, nullptr, static_cast<Info*>(info));
      });
    })
  })
}

extern "C" int rnnfast_emulate_bwd(int algo, int cell, int dtype, int mode, int T, int B, int H, int reverse, int sms,
                                   int optin, int order, const void* grad_y, const void* grad_hn, const void* grad_cn,
                                   const void* h0, const void* c0, const void* w_hh, const int64_t* lengths,
                                   const void* y, const float* ws, void* dgi, void* dgh, void* dh0, void* dc0,
                                   void* info) {
  RNNFAST_DISPATCH_DTYPE(dtype, E, {
    BwdArgs<E> a{};
    a.T = T, a.B = B, a.H = H, a.reverse = reverse;
    a.grad_y = static_cast<const E*>(grad_y), a.grad_hn = static_cast<const E*>(grad_hn);
    a.grad_cn = static_cast<const E*>(grad_cn), a.h0 = static_cast<const E*>(h0);
    a.c0 = static_cast<const E*>(c0), a.w = static_cast<const E*>(w_hh), a.lengths = lengths;
    a.y = static_cast<const E*>(y), a.ws = ws, a.dgi = static_cast<E*>(dgi), a.dgh = static_cast<E*>(dgh);
    a.dh0 = static_cast<E*>(dh0), a.dc0 = static_cast<E*>(dc0);
    RNNFAST_DISPATCH_CELL(cell, CELL, {
      a.dgh_ld = rnnfast_row(Cell<CELL>::G * H, dtype);
      if (algo != 1) return bwd_stepwise<E, CELL>(a, order == 1);
      return with_mode<E>(mode, [&](auto m) {
        return bwd_persistent<E, CELL, decltype(m)::value>(a, sms, optin, order, static_cast<Info*>(info));
      });
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

extern "C" size_t rnnfast_fwd_workspace_bytes(int dtype, int B, int H) {
  return 2 * sizeof(float) * B * H + 2 * static_cast<size_t>(B) * rnnfast_row(H, dtype) * rnnfast_dtype_bytes(dtype);
}

extern "C" size_t rnnfast_bwd_workspace_bytes(int, int B, int H) { return 3 * sizeof(float) * B * H; }

extern "C" int rnnfast_persistent_plan(int cell, int dtype, int mode, int B, int H, int backward, int,
                                       rnnfast_plan* p) {
  *p = rnnfast_plan{};
  RNNFAST_DISPATCH_DTYPE(dtype, E, {
    RNNFAST_DISPATCH_CELL(cell, CELL, {
      return with_mode<E>(mode, [&](auto m) {
        constexpr int MODE = decltype(m)::value;
        if (H <= 0 || B <= 0) return 0;
        const int U = units_per_cta(H, kModelSms);
        const Tile L = persistent_tile<E, CELL, MODE>(backward != 0, B, H, U, kModelOptin);
        if (L.bytes > kModelOptin) return 0;
        p->ok = 1, p->ctas = (H + U - 1) / U, p->units = U, p->mode = MODE, p->k_chunk = L.kc;
        p->k_chunks = L.nkc, p->split = L.split, p->prefetch = L.pf != 0, p->smem_bytes = L.bytes;
        return 0;
      });
    })
  })
}

extern "C" int rnnfast_fwd_persistent(int cell, int dtype, int T, int B, int H, int reverse, const void* gi,
                                      const void* h0, const void* c0, const void* w_hh, const void* b_hh,
                                      const int64_t* lengths, void* y, void* h_n, void* c_n, float* ws, void* work,
                                      unsigned* barrier, const rnnfast_plan* plan, rnnfast_stream) {
  if (plan == nullptr || !plan->ok || barrier == nullptr || *barrier != 0) return kInvalid;
  if (T == 0 || B == 0 || H == 0) return 0;
  std::memset(work, 0xFF, rnnfast_fwd_workspace_bytes(dtype, B, H));
  RNNFAST_DISPATCH_DTYPE(dtype, E, {
    FwdArgs<E> a{};
    a.T = T, a.B = B, a.H = H, a.reverse = reverse;
    a.gi = static_cast<const E*>(gi), a.h0 = static_cast<const E*>(h0), a.c0 = static_cast<const E*>(c0);
    a.w = static_cast<const E*>(w_hh), a.bias = static_cast<const E*>(b_hh), a.lengths = lengths;
    a.y = static_cast<E*>(y), a.hn = static_cast<E*>(h_n), a.cn = static_cast<E*>(c_n), a.ws = ws;
    RNNFAST_DISPATCH_CELL(cell, CELL, {
      return with_mode<E>(plan->mode, [&](auto m) {
        return fwd_persistent<E, CELL, decltype(m)::value>(a, kModelSms, kModelOptin, 0, work, nullptr) ? kInvalid : 0;
      });
    })
  })
}

extern "C" int rnnfast_bwd_persistent(int cell, int dtype, int T, int B, int H, int reverse, const void* grad_y,
                                      const void* grad_hn, const void* grad_cn, const void* h0, const void* c0,
                                      const void* w_hh, const int64_t* lengths, const void* y, const float* ws,
                                      void* dgi, void* dgh, void* dh0, void* dc0, void* work, unsigned* barrier,
                                      const rnnfast_plan* plan, rnnfast_stream) {
  if (plan == nullptr || !plan->ok || barrier == nullptr || *barrier != 0) return kInvalid;
  if (T == 0 || B == 0 || H == 0) return 0;
  std::memset(work, 0xFF, rnnfast_bwd_workspace_bytes(dtype, B, H));
  RNNFAST_DISPATCH_DTYPE(dtype, E, {
    BwdArgs<E> a{};
    a.T = T, a.B = B, a.H = H, a.reverse = reverse;
    a.grad_y = static_cast<const E*>(grad_y), a.grad_hn = static_cast<const E*>(grad_hn);
    a.grad_cn = static_cast<const E*>(grad_cn), a.h0 = static_cast<const E*>(h0);
    a.c0 = static_cast<const E*>(c0), a.w = static_cast<const E*>(w_hh), a.lengths = lengths;
    a.y = static_cast<const E*>(y), a.ws = ws, a.dgi = static_cast<E*>(dgi), a.dgh = static_cast<E*>(dgh);
    a.dh0 = static_cast<E*>(dh0), a.dc0 = static_cast<E*>(dc0);
    RNNFAST_DISPATCH_CELL(cell, CELL, {
      a.dgh_ld = rnnfast_row(Cell<CELL>::G * H, dtype);
      return with_mode<E>(plan->mode, [&](auto m) {
        return bwd_persistent<E, CELL, decltype(m)::value>(a, kModelSms, kModelOptin, 0, nullptr) ? kInvalid : 0;
      });
    })
  })
}

extern "C" int rnnfast_fwd_step(int cell, int dtype, int t, int T, int B, int H, const void* gi, const float* gh,
                                const void* b_hh, const int64_t* lengths, float* h, void* hp, float* c, void* y,
                                float* ws, rnnfast_stream) {
  RNNFAST_DISPATCH_DTYPE(dtype, E, {
    FwdArgs<E> a{};
    a.T = T, a.B = B, a.H = H;
    a.gi = static_cast<const E*>(gi), a.bias = static_cast<const E*>(b_hh), a.lengths = lengths;
    a.y = static_cast<E*>(y), a.ws = ws, a.h = h, a.c = c, a.gh = gh, a.hp = static_cast<E*>(hp), a.hp_ld = H;
    RNNFAST_DISPATCH_CELL(cell, CELL, {
      for (int64_t i = 0; i < static_cast<int64_t>(B) * H; ++i) fwd_step_thread<E, CELL>(a, t, i);
      return 0;
    })
  })
}

extern "C" int rnnfast_bwd_step(int cell, int dtype, int t, int T, int B, int H, int reverse, const void* grad_y,
                                const void* h0, const void* c0, const int64_t* lengths, const void* y,
                                const float* ws, const float* dh, float* dc, void* dgi, void* dgh, float* carry,
                                rnnfast_stream) {
  RNNFAST_DISPATCH_DTYPE(dtype, E, {
    BwdArgs<E> a{};
    a.T = T, a.B = B, a.H = H, a.reverse = reverse;
    a.grad_y = static_cast<const E*>(grad_y), a.h0 = static_cast<const E*>(h0), a.c0 = static_cast<const E*>(c0);
    a.lengths = lengths, a.y = static_cast<const E*>(y), a.ws = ws;
    a.dgi = static_cast<E*>(dgi), a.dgh = static_cast<E*>(dgh);
    a.dh = const_cast<float*>(dh), a.carry = carry, a.dc = dc;
    RNNFAST_DISPATCH_CELL(cell, CELL, {
      a.dgh_ld = rnnfast_row(Cell<CELL>::G * H, dtype);
      for (int64_t i = 0; i < static_cast<int64_t>(B) * H; ++i) bwd_step_thread<E, CELL>(a, t, i);
      return 0;
    })
  })
}
