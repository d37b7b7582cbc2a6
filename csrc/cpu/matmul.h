// The per-step product out (B, M) = x (B, K) · W (K, M) of the time loops.
//
// At small B the product is dominated by call overhead in ATen (4.6 µs for 1×128·128×384 through
// torch.mm, where the arithmetic is < 1 µs), and MKL re-packs W at every call: a register-blocked
// kernel streaming W (kept in L2 across steps) does it directly. With AVX2 it keeps every size (it runs
// at the GEMM libraries' rate and pays no call per step, see blas_min_rows()); elsewhere from B = 64, or
// when W outgrows L2, the forward's product goes to oneDNN (gemm.h), or to ATen/MKL where torch has no
// oneDNN. gemm_blocked() runs the same kernel over the large products around the loops (weight gradients,
// the modules' input projection) where it beats the libraries.
#pragma once

#include <ATen/Parallel.h>

#include <unistd.h>

#include <algorithm>
#include <type_traits>

#include "common.h"
#include "gemm.h"

namespace rnnfast {

// acc += x[:, k] ⊗ w[k, 0:NV·L] for the NB rows of a block (see block_kernel). XT: x is stored
// transposed, element (i, k) at x[k·ldx + i] (the weight gradients' aᵀ, see gemm_block).
template <typename scalar_t, int VB, int NB, int NV, bool XT = false, typename V>
RNNFAST_INLINE void block_step(int64_t k, const scalar_t* x, int64_t ldx, const scalar_t* w, int64_t ldw,
                               V (&acc)[NB][NV]) {
  constexpr int L = VB / sizeof(scalar_t);
  const scalar_t* wr = w + k * ldw;
  V wv[NV];
#pragma GCC unroll 8
  for (int v = 0; v < NV; ++v) std::memcpy(&wv[v], wr + v * L, sizeof(V));
#pragma GCC unroll 4
  for (int i = 0; i < NB; ++i) {
    // The broadcast of x[i, k], written s - 0 (an identity the compiler folds, so it loads straight
    // into all lanes); 0 + s is not one (-0 + 0 = +0) and cost an add and a shuffle per row.
    const V a = x[XT ? k * ldx + i : i * ldx + k] - V{};
#pragma GCC unroll 8
    for (int v = 0; v < NV; ++v) acc[i][v] += a * wv[v];
  }
}

// NB rows of x times columns [0, NV·L) of w, L = lanes of a VB-byte vector. GCC vector extensions keep
// the NB·NV accumulators in registers (plain arrays ended up on the stack: 3 GMAC/s); each w vector
// loaded is used NB times, and >= 8 independent FMA chains cover the FMA latency: a block of fewer
// than 8 accumulators (one row of a 4-vector panel) keeps two sets, for even and odd k.
// XT: x stored transposed (block_step); ACC: out = init + the product (init's rows ldi apart: out itself
// to accumulate, ldi 0 for a bias on every row) instead of out = the product.
template <typename scalar_t, int VB, int NB, int NV, bool XT = false, bool ACC = false>
RNNFAST_INLINE void block_kernel(int64_t K, const scalar_t* x, int64_t ldx, const scalar_t* w, int64_t ldw,
                                 scalar_t* out, int64_t ldo, const scalar_t* init = nullptr, int64_t ldi = 0) {
  typedef scalar_t V __attribute__((vector_size(VB)));
  constexpr int L = VB / sizeof(scalar_t);
  constexpr int KS = NB * NV < 8 ? 2 : 1;
  V acc[KS][NB][NV];
#pragma GCC unroll 2
  for (int s = 0; s < KS; ++s) {
#pragma GCC unroll 4
    for (int i = 0; i < NB; ++i) {
#pragma GCC unroll 8
      for (int v = 0; v < NV; ++v) {
        acc[s][i][v] = V{};
        if (ACC && s == 0) std::memcpy(&acc[s][i][v], init + i * ldi + v * L, sizeof(V));
      }
    }
  }
  int64_t k = 0;
  for (; k + KS <= K; k += KS) {
#pragma GCC unroll 2
    for (int s = 0; s < KS; ++s) block_step<scalar_t, VB, NB, NV, XT>(k + s, x, ldx, w, ldw, acc[s]);
  }
  for (; k < K; ++k) block_step<scalar_t, VB, NB, NV, XT>(k, x, ldx, w, ldw, acc[0]);
#pragma GCC unroll 4
  for (int i = 0; i < NB; ++i) {
#pragma GCC unroll 8
    for (int v = 0; v < NV; ++v) {
      V sum = acc[0][i][v];
      if (KS == 2) sum += acc[KS - 1][i][v];
      std::memcpy(out + i * ldo + v * L, &sum, sizeof(V));
    }
  }
}

// Accumulators per row block, sized to the register file: AVX-512 has 32 vector registers (4 rows x 4
// vectors = 16 accumulators), AVX2 and SSE 16 (4 x 3 = 12, leaving room for the w vectors and the
// broadcast; 4 x 4 there spills to the stack and runs 20x slower).
template <int VB, int NB>
constexpr int block_vectors() {
  return NB == 1 ? 8 : (VB == 64 ? 4 : 3);
}

template <typename scalar_t, int VB, int NB>
RNNFAST_INLINE void rows_kernel(int64_t K, const scalar_t* x, int64_t ldx, const scalar_t* w, int64_t ldw,
                                scalar_t* out, int64_t ldo, int64_t m0, int64_t m1) {
  constexpr int64_t L = VB / sizeof(scalar_t);
  constexpr int NV = block_vectors<VB, NB>();
  int64_t m = m0;
  for (; m + NV * L <= m1; m += NV * L) block_kernel<scalar_t, VB, NB, NV>(K, x, ldx, w + m, ldw, out + m, ldo);
  for (; m + L <= m1; m += L) block_kernel<scalar_t, VB, NB, 1>(K, x, ldx, w + m, ldw, out + m, ldo);
  if (m < m1) {
    for (int i = 0; i < NB; ++i) {
      scalar_t* o = out + i * ldo;
      for (int64_t j = m; j < m1; ++j) o[j] = 0;
      for (int64_t k = 0; k < K; ++k) {
        const scalar_t a = x[i * ldx + k];
        for (int64_t j = m; j < m1; ++j) o[j] += a * w[k * ldw + j];
      }
    }
  }
}

template <typename scalar_t, int VB>
RNNFAST_INLINE void small_mm_body(int64_t B, int64_t K, const scalar_t* x, int64_t ldx, const scalar_t* w,
                                  int64_t ldw, scalar_t* out, int64_t ldo, int64_t m0, int64_t m1) {
  for (int64_t b = 0; b < B; b += 4) {
    const scalar_t* xb = x + b * ldx;
    scalar_t* ob = out + b * ldo;
    switch (std::min<int64_t>(4, B - b)) {
      case 4: rows_kernel<scalar_t, VB, 4>(K, xb, ldx, w, ldw, ob, ldo, m0, m1); break;
      case 3: rows_kernel<scalar_t, VB, 3>(K, xb, ldx, w, ldw, ob, ldo, m0, m1); break;
      case 2: rows_kernel<scalar_t, VB, 2>(K, xb, ldx, w, ldw, ob, ldo, m0, m1); break;
      default: rows_kernel<scalar_t, VB, 1>(K, xb, ldx, w, ldw, ob, ldo, m0, m1); break;
    }
  }
}

// W packed in panels of PW columns, each a contiguous (K, PW) block (the last one zero-padded), so that the
// block kernel reads W in memory order: with W row-major a column block's rows are a whole row of W apart,
// which the hardware prefetcher does not follow once W is out of L2 (the loads of W then took ~40% of the
// kernel's time at B=16, H=256 LSTM). Panels outermost: one panel (24 KiB at K=256 with AVX2) serves all
// row blocks from L1.
template <typename scalar_t, int VB>
constexpr int64_t panel_width() {
  return block_vectors<VB, 4>() * (VB / static_cast<int64_t>(sizeof(scalar_t)));
}

// out[:, panels p0..p1) = x · W for W packed by StepMatmul (M columns in all). NV: vectors a panel wide
// (panels of half the width serve the teams' slices of small H, see team_panel_width()).
template <typename scalar_t, int VB, int NV = block_vectors<VB, 4>()>
RNNFAST_INLINE void packed_mm_body(int64_t B, int64_t K, const scalar_t* x, int64_t ldx, const scalar_t* wp,
                                   scalar_t* out, int64_t ldo, int64_t M, int64_t p0, int64_t p1) {
  constexpr int64_t PW = NV * (VB / static_cast<int64_t>(sizeof(scalar_t)));
  scalar_t tmp[4 * PW];
  for (int64_t p = p0; p < p1; ++p) {
    const scalar_t* w = wp + p * K * PW;
    const int64_t m = p * PW, cols = std::min(PW, M - m);
    for (int64_t b = 0; b < B; b += 4) {
      const scalar_t* xb = x + b * ldx;
      const int64_t nb = std::min<int64_t>(4, B - b);
      scalar_t* o = cols == PW ? out + b * ldo + m : tmp;  // the padded last panel goes through tmp
      const int64_t lo = cols == PW ? ldo : PW;
      switch (nb) {
        case 4: block_kernel<scalar_t, VB, 4, NV>(K, xb, ldx, w, PW, o, lo); break;
        case 3: block_kernel<scalar_t, VB, 3, NV>(K, xb, ldx, w, PW, o, lo); break;
        case 2: block_kernel<scalar_t, VB, 2, NV>(K, xb, ldx, w, PW, o, lo); break;
        default: block_kernel<scalar_t, VB, 1, NV>(K, xb, ldx, w, PW, o, lo); break;
      }
      if (cols < PW) {
        for (int64_t i = 0; i < nb; ++i) std::copy(tmp + i * PW, tmp + i * PW + cols, out + (b + i) * ldo + m);
      }
    }
  }
}

// Panels of half the width (at least one vector).
template <int VB>
constexpr int half_vectors() {
  return block_vectors<VB, 4>() / 2 > 0 ? block_vectors<VB, 4>() / 2 : 1;
}

template <typename scalar_t, int VB>
RNNFAST_INLINE void packed_mm_half_body(int64_t B, int64_t K, const scalar_t* x, int64_t ldx, const scalar_t* wp,
                                        scalar_t* out, int64_t ldo, int64_t M, int64_t p0, int64_t p1) {
  packed_mm_body<scalar_t, VB, half_vectors<VB>()>(B, K, x, ldx, wp, out, ldo, M, p0, p1);
}

// i with its log2(L) low bits reversed (L a power of two).
template <int L>
constexpr int bit_reverse(int i) {
  int r = 0;
  for (int b = 1; b < L; b <<= 1, i >>= 1) r = (r << 1) | (i & 1);
  return r;
}

// Horizontal sums of L vectors at once. A level takes n vectors made of segments of n lanes, each
// segment partial sums of one row, and merges pairs (a, b) into n / 2 vectors of segments of n / 2
// lanes: output lane i, in segment q = i / (n / 2), is the sum of lanes j and j + n / 2 (j = i % (n / 2))
// of segment q / 2 of a (q even) or of b (q odd): two shuffles and an add per pair. From L vectors of
// one row each (n = L) down to one vector, whose lane r holds the sum of the row fed at position
// bit_reverse(r): L - 1 merges for L rows, where summing each row alone takes log2(L) shuffles and adds.
template <typename V, typename M, int L, int n>
RNNFAST_INLINE void rowsum_tree(V* v) {
  if constexpr (n >= 2) {
    M lo, hi;
#pragma GCC unroll 16
    for (int i = 0; i < L; ++i) {
      const int h = n / 2, q = i / h;
      lo[i] = (q % 2) * L + q / 2 * n + i % h;
      hi[i] = lo[i] + h;
    }
#pragma GCC unroll 8
    for (int p = 0; p < n / 2; ++p) {
      v[p] = __builtin_shuffle(v[2 * p], v[2 * p + 1], lo) + __builtin_shuffle(v[2 * p], v[2 * p + 1], hi);
    }
    rowsum_tree<V, M, L, n / 2>(v);
  }
}

// B = 1 with a W too large for L2: the product is bound by reading W, so read it in memory order.
// out[m] = x · wt[m, :] for m in [m0, m1), wt (M, K) row stride ldw (a Linear weight): four rows at a
// time, two VB-byte accumulators per row, each x vector loaded once for the four rows.
template <typename scalar_t, int VB>
RNNFAST_INLINE void matvec_body(int64_t K, const scalar_t* x, const scalar_t* wt, int64_t ldw, scalar_t* out,
                                int64_t m0, int64_t m1) {
  typedef scalar_t V __attribute__((vector_size(VB)));
  constexpr int64_t L = VB / sizeof(scalar_t);
  constexpr int R = 4;
  const int64_t K2 = K - K % (2 * L);
  int64_t m = m0;
  for (; m < m1; m += R) {
    const int rows = static_cast<int>(std::min<int64_t>(R, m1 - m));
    V acc[R][2];
#pragma GCC unroll 4
    for (int r = 0; r < R; ++r) acc[r][0] = acc[r][1] = V{};
    const scalar_t* w[R];
    for (int r = 0; r < R; ++r) w[r] = wt + (m + std::min(r, rows - 1)) * ldw;
    for (int64_t k = 0; k < K2; k += 2 * L) {
      V x0, x1;
      std::memcpy(&x0, x + k, sizeof(V));
      std::memcpy(&x1, x + k + L, sizeof(V));
#pragma GCC unroll 4
      for (int r = 0; r < R; ++r) {
        V w0, w1;
        std::memcpy(&w0, w[r] + k, sizeof(V));
        std::memcpy(&w1, w[r] + k + L, sizeof(V));
        acc[r][0] += x0 * w0;
        acc[r][1] += x1 * w1;
      }
    }
    for (int r = 0; r < rows; ++r) {
      const V a = acc[r][0] + acc[r][1];
      scalar_t sum = 0;
      for (int64_t l = 0; l < L; ++l) sum += a[l];
      for (int64_t k = K2; k < K; ++k) sum += x[k] * w[r][k];
      out[m + r] = sum;
    }
  }
}

// The same product for a W that stays in cache (the in-place W_hh of a one-row call too short for a
// transposed copy, see StepMatmul): L rows at a time (a vector's lanes), one accumulator per row, each
// x vector loaded once for all of them, their horizontal sums by rowsum_tree() and one vector store;
// the rows past the last whole group as matvec_body(). With short rows (K = 64-128) the four-row
// kernel's lane-by-lane sums cost about as much as the products; not for a W beyond L2, where reading 16
// rows at once is slower than four (docs/cpu.md).
template <typename scalar_t, int VB>
RNNFAST_INLINE void matvec_tree_body(int64_t K, const scalar_t* x, const scalar_t* wt, int64_t ldw, scalar_t* out,
                                     int64_t m0, int64_t m1) {
  typedef scalar_t V __attribute__((vector_size(VB)));
  typedef std::conditional_t<sizeof(scalar_t) == 4, int32_t, int64_t> index_t;
  typedef index_t M __attribute__((vector_size(VB)));
  constexpr int L = VB / sizeof(scalar_t);
  const int64_t KL = K - K % L;
  int64_t m = m0;
  for (; m + L <= m1; m += L) {
    V acc[L];
#pragma GCC unroll 16
    for (int r = 0; r < L; ++r) acc[r] = V{};
    for (int64_t k = 0; k < KL; k += L) {
      V xv;
      std::memcpy(&xv, x + k, sizeof(V));
#pragma GCC unroll 16
      for (int r = 0; r < L; ++r) {
        V w;
        std::memcpy(&w, wt + (m + r) * ldw + k, sizeof(V));
        acc[r] += xv * w;
      }
    }
    V v[L];
#pragma GCC unroll 16
    for (int i = 0; i < L; ++i) v[i] = acc[bit_reverse<L>(i)];
    rowsum_tree<V, M, L, L>(v);
    if (KL < K) {
      scalar_t sums[L];
      std::memcpy(sums, &v[0], sizeof(V));
      for (int r = 0; r < L; ++r) {
        for (int64_t k = KL; k < K; ++k) sums[r] += x[k] * wt[(m + r) * ldw + k];
      }
      std::memcpy(out + m, sums, sizeof(V));
    } else {
      std::memcpy(out + m, &v[0], sizeof(V));
    }
  }
  if (m < m1) matvec_body<scalar_t, VB>(K, x, wt, ldw, out, m, m1);
}

// Large products y = a·b (+ init) (gemm_blocked()): rows [i0, i1) of y against `cols` columns of b
// packed in panels (wp, K rows each, as pack_panels() lays them out). a is (rows, K), element (i, k) at
// a[i·lda + k], or with XT stored transposed, at a[k·lda + i] (the weight gradients' aᵀ, whose 4 rows of
// a block then broadcast from one cache line). Rows in groups of 16 (a line of a transposed in float32),
// each group taking every panel in turn, so that its part of a stays in L1 while the panels stream from
// L2. With init, y = init + the product, init's rows ldi apart (y itself to accumulate, 0 for a bias).
constexpr int64_t kGemmGroup = 16;

template <typename scalar_t, int VB, bool XT, bool ACC>
RNNFAST_INLINE void gemm_block(int64_t K, const scalar_t* a, int64_t lda, const scalar_t* wp, int64_t cols,
                               scalar_t* y, int64_t ldy, int64_t i0, int64_t i1, const scalar_t* init,
                               int64_t ldi) {
  constexpr int64_t PW = panel_width<scalar_t, VB>();
  constexpr int NV = block_vectors<VB, 4>();
  scalar_t tmp[4 * PW];
  const int64_t panels = (cols + PW - 1) / PW;
  for (int64_t g = i0; g < i1; g += kGemmGroup) {
    const int64_t g1 = std::min(i1, g + kGemmGroup);
    for (int64_t p = 0; p < panels; ++p) {
      const scalar_t* w = wp + p * K * PW;
      const int64_t m = p * PW, c = std::min(PW, cols - m);
      for (int64_t i = g; i < g1; i += 4) {
        const int64_t nb = std::min<int64_t>(4, g1 - i);
        const scalar_t* ai = XT ? a + i : a + i * lda;
        // the part-filled last panel goes through tmp (its init copied in first)
        scalar_t* o = c == PW ? y + i * ldy + m : tmp;
        const int64_t lo = c == PW ? ldy : PW;
        const scalar_t* in = ACC ? init + i * ldi + m : nullptr;
        int64_t li = ldi;
        if (c < PW && ACC) {
          for (int64_t r = 0; r < nb; ++r) std::copy(in + r * ldi, in + r * ldi + c, tmp + r * PW);
          in = tmp, li = PW;
        }
        switch (nb) {
          case 4: block_kernel<scalar_t, VB, 4, NV, XT, ACC>(K, ai, lda, w, PW, o, lo, in, li); break;
          case 3: block_kernel<scalar_t, VB, 3, NV, XT, ACC>(K, ai, lda, w, PW, o, lo, in, li); break;
          case 2: block_kernel<scalar_t, VB, 2, NV, XT, ACC>(K, ai, lda, w, PW, o, lo, in, li); break;
          default: block_kernel<scalar_t, VB, 1, NV, XT, ACC>(K, ai, lda, w, PW, o, lo, in, li); break;
        }
        if (c < PW) {
          for (int64_t r = 0; r < nb; ++r) std::copy(tmp + r * PW, tmp + r * PW + c, y + (i + r) * ldy + m);
        }
      }
    }
  }
}

template <typename scalar_t, int VB>
RNNFAST_INLINE void gemm_body(int64_t K, const scalar_t* a, int64_t lda, bool xt, const scalar_t* wp, int64_t cols,
                              scalar_t* y, int64_t ldy, int64_t i0, int64_t i1, const scalar_t* init, int64_t ldi) {
  if (xt) {
    if (init) return gemm_block<scalar_t, VB, true, true>(K, a, lda, wp, cols, y, ldy, i0, i1, init, ldi);
    return gemm_block<scalar_t, VB, true, false>(K, a, lda, wp, cols, y, ldy, i0, i1, init, ldi);
  }
  if (init) return gemm_block<scalar_t, VB, false, true>(K, a, lda, wp, cols, y, ldy, i0, i1, init, ldi);
  gemm_block<scalar_t, VB, false, false>(K, a, lda, wp, cols, y, ldy, i0, i1, init, ldi);
}

// The kernels are compiled once per ISA level with the vector width and block shape of that level
// (target_clones cannot do this: its clones share one source, so one block shape), and the level is
// picked once from the running CPU. NAME_body<scalar_t, VB> is the kernel; NAME(...) the dispatcher.
#define RNNFAST_SMALL_MM_ARGS                                                                           \
  int64_t B, int64_t K, const scalar_t *x, int64_t ldx, const scalar_t *w, int64_t ldw, scalar_t *out, \
      int64_t ldo, int64_t m0, int64_t m1
#define RNNFAST_PACKED_MM_ARGS                                                                      \
  int64_t B, int64_t K, const scalar_t *x, int64_t ldx, const scalar_t *wp, scalar_t *out, int64_t ldo, \
      int64_t M, int64_t p0, int64_t p1
#define RNNFAST_MATVEC_ARGS \
  int64_t K, const scalar_t *x, const scalar_t *wt, int64_t ldw, scalar_t *out, int64_t m0, int64_t m1
#define RNNFAST_GEMM_ARGS                                                                                      \
  int64_t K, const scalar_t *a, int64_t lda, bool xt, const scalar_t *wp, int64_t cols, scalar_t *y, int64_t ldy, \
      int64_t i0, int64_t i1, const scalar_t *init, int64_t ldi

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && !defined(RNNFAST_NO_CLONES)
// 4: AVX-512 (x86-64-v4), 3: AVX2 + FMA (x86-64-v3), 1: baseline SSE2.
inline int isa_level() {
  static const int level = [] {
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl"))
      return 4;
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return 3;
    return 1;
  }();
  return level;
}
#define RNNFAST_ISA_KERNEL(NAME, ARGS, CALL)                                                          \
  template <typename scalar_t>                                                                        \
  __attribute__((target("arch=x86-64-v4"))) void NAME##_v4(ARGS) {                                    \
    NAME##_body<scalar_t, 64> CALL;                                                                   \
  }                                                                                                   \
  template <typename scalar_t>                                                                        \
  __attribute__((target("arch=x86-64-v3"))) void NAME##_v3(ARGS) {                                    \
    NAME##_body<scalar_t, 32> CALL;                                                                   \
  }                                                                                                   \
  template <typename scalar_t>                                                                        \
  void NAME##_base(ARGS) {                                                                            \
    NAME##_body<scalar_t, 16> CALL;                                                                   \
  }                                                                                                   \
  template <typename scalar_t>                                                                        \
  void NAME(ARGS) {                                                                                   \
    switch (isa_level()) {                                                                            \
      case 4: NAME##_v4<scalar_t> CALL; break;                                                        \
      case 3: NAME##_v3<scalar_t> CALL; break;                                                        \
      default: NAME##_base<scalar_t> CALL; break;                                                     \
    }                                                                                                 \
  }
template <typename scalar_t>
int64_t packed_width() {
  switch (isa_level()) {
    case 4: return panel_width<scalar_t, 64>();
    case 3: return panel_width<scalar_t, 32>();
    default: return panel_width<scalar_t, 16>();
  }
}
template <typename scalar_t>
int64_t half_packed_width() {
  switch (isa_level()) {
    case 4: return half_vectors<64>() * (64 / static_cast<int64_t>(sizeof(scalar_t)));
    case 3: return half_vectors<32>() * (32 / static_cast<int64_t>(sizeof(scalar_t)));
    default: return half_vectors<16>() * (16 / static_cast<int64_t>(sizeof(scalar_t)));
  }
}
#else
inline int isa_level() { return 0; }
#define RNNFAST_ISA_KERNEL(NAME, ARGS, CALL) \
  template <typename scalar_t>               \
  void NAME(ARGS) {                          \
    NAME##_body<scalar_t, 32> CALL;          \
  }
template <typename scalar_t>
int64_t packed_width() {
  return panel_width<scalar_t, 32>();
}
template <typename scalar_t>
int64_t half_packed_width() {
  return half_vectors<32>() * (32 / static_cast<int64_t>(sizeof(scalar_t)));
}
#endif

// out[:, m0:m1] = x · w[:, m0:m1];  x (B, K) stride ldx, w (K, M) stride ldw, out (B, M) stride ldo.
RNNFAST_ISA_KERNEL(small_mm, RNNFAST_SMALL_MM_ARGS, (B, K, x, ldx, w, ldw, out, ldo, m0, m1))
// out[:, panels p0..p1) = x · W, W packed (see packed_mm_body).
RNNFAST_ISA_KERNEL(packed_mm, RNNFAST_PACKED_MM_ARGS, (B, K, x, ldx, wp, out, ldo, M, p0, p1))
// The same on panels of half_packed_width() columns.
RNNFAST_ISA_KERNEL(packed_mm_half, RNNFAST_PACKED_MM_ARGS, (B, K, x, ldx, wp, out, ldo, M, p0, p1))
// out[m0:m1] = x · wt[m0:m1, :]ᵀ;  x (K), wt (M, K) row stride ldw.
RNNFAST_ISA_KERNEL(matvec, RNNFAST_MATVEC_ARGS, (K, x, wt, ldw, out, m0, m1))
// The same for a W in cache (see matvec_tree_body).
RNNFAST_ISA_KERNEL(matvec_tree, RNNFAST_MATVEC_ARGS, (K, x, wt, ldw, out, m0, m1))
// y[i0:i1, :cols] = a · b (+ init), a or aᵀ (xt), b packed (see gemm_block).
RNNFAST_ISA_KERNEL(gemm, RNNFAST_GEMM_ARGS, (K, a, lda, xt, wp, cols, y, ldy, i0, i1, init, ldi))
#undef RNNFAST_ISA_KERNEL
#undef RNNFAST_GEMM_ARGS
#undef RNNFAST_SMALL_MM_ARGS
#undef RNNFAST_PACKED_MM_ARGS
#undef RNNFAST_MATVEC_ARGS

// out[:, panels p0..p1) = x · W on panels PW wide: packed_width() (packed_mm) or half_packed_width().
template <typename scalar_t>
void packed_mm_of_width(int64_t PW, int64_t B, int64_t K, const scalar_t* x, int64_t ldx, const scalar_t* wp,
                        scalar_t* out, int64_t ldo, int64_t M, int64_t p0, int64_t p1) {
  if (PW == packed_width<scalar_t>()) {
    packed_mm<scalar_t>(B, K, x, ldx, wp, out, ldo, M, p0, p1);
  } else {
    packed_mm_half<scalar_t>(B, K, x, ldx, wp, out, ldo, M, p0, p1);
  }
}

// Packs the right factor w (K, M), element (k, m) at w[k·sk + m·sm], into packed_mm's layout at dst:
// ⌈M / PW⌉ panels of (K, PW), PW = packed_width() unless given, the last zero-padded.
template <typename scalar_t>
void pack_panels(const scalar_t* w, int64_t sk, int64_t sm, int64_t K, int64_t M, scalar_t* dst, int64_t PW = 0) {
  if (PW == 0) PW = packed_width<scalar_t>();
  for (int64_t m0 = 0; m0 < M; m0 += PW, dst += K * PW) {
    const int64_t cols = std::min(PW, M - m0);
    if (cols < PW) std::fill(dst, dst + K * PW, scalar_t(0));
    // Along whichever of w's dimensions is contiguous (a panel, K·PW, stays in L1 for the other).
    if (sm == 1) {
      for (int64_t k = 0; k < K; ++k) std::copy(w + k * sk + m0, w + k * sk + m0 + cols, dst + k * PW);
    } else {
      for (int64_t j = 0; j < cols; ++j) {
        const scalar_t* src = w + (m0 + j) * sm;
        for (int64_t k = 0; k < K; ++k) dst[k * PW + j] = src[k * sk];
      }
    }
  }
}

// A core's L2 in bytes (1 MiB where the system does not say).
inline int64_t l2_bytes() {
  static const int64_t v = [] {
#if defined(_SC_LEVEL2_CACHE_SIZE)
    const long n = sysconf(_SC_LEVEL2_CACHE_SIZE);
    if (n > 0) return static_cast<int64_t>(n);
#endif
    return int64_t{1} << 20;
  }();
  return v;
}

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// No limit (for the thresholds below; small enough to double).
constexpr int64_t kNoLimit = int64_t{1} << 60;

// The thresholds of the per-step products: functions of the vector width and the sizes only (their
// measurements: docs/cpu.md, "Thresholds").
//
// From how many rows, or beyond how many multiply-adds per row (K·M), a GEMM library (oneDNN, else ATen)
// takes the per-step product from the blocked kernel. With AVX2 the blocked kernel runs at the libraries'
// rate and keeps every size; with AVX-512 the libraries win from 64 rows or a W beyond a core's L2 (2^18
// float32 values = 1 MiB). flags(gemm="blocked") keeps every product in the blocked kernel,
// gemm="onednn" / "aten" gives the library these limits with any vector width.
inline bool blocked_keeps_all() {
  const GemmChoice g = forced_gemm();
  return g == GemmChoice::kBlocked || (g == GemmChoice::kAuto && isa_level() == 3);
}
inline int64_t blas_min_rows() { return blocked_keeps_all() ? kNoLimit : 64; }
inline int64_t small_max_work() { return blocked_keeps_all() ? kNoLimit : int64_t{1} << 18; }
// The same for the backward's products dh_{t-1} = dgh·W_hh.
inline int64_t bwd_small_max_work() { return small_max_work(); }

// oneDNN takes the library's products from 2 rows: a one-row product is bound by reading W, where
// neither library is ahead.
constexpr int64_t kDnnlMinRows = 2;
inline int64_t dnnl_min_rows() { return kDnnlMinRows; }

// From how many multiply-adds (B·K·M) a blocked product is split over threads: waking a second thread
// costs a few µs, which a step must earn back; a vector of half the width earns it back sooner.
inline int64_t parallel_min_work() { return isa_level() == 4 ? int64_t{1} << 22 : int64_t{1} << 19; }

// From how many multiply-adds (K·M) a one-row product takes matvec() on all threads: a W of 1 MiB in
// float32, beyond a 512 KiB L2; below, the short rows' horizontal sums cost more than a second core saves.
constexpr int64_t kMatvecMinWork = int64_t{1} << 18;
inline int64_t matvec_min_work() { return kMatvecMinWork; }

// From how many multiply-adds per row (K·M) a blocked product of 4 or more rows (2 or more with W beyond
// L2, see StepMatmul) packs W in panels: a W of 512 KiB in float32, where row-major reads of W stop
// hitting L1/L2 streams well.
constexpr int64_t kPackedMinWork = int64_t{1} << 17;
inline int64_t packed_min_work() { return kPackedMinWork; }

// Whether mm_tn() (the weight gradients) computes in the blocked kernel: with flags(gemm="blocked");
// else ATen's GEMM, which takes the transposed operand in place.
inline bool tn_blocked() { return forced_gemm() == GemmChoice::kBlocked; }

// Rows of b (terms of the sum) per pass over y: a chunk of b is packed at a time; fewer rows would read
// and write y more often.
constexpr int64_t kGemmChunkRows = 512;

// y (M, N) = op(a)·b (+ bias on every row) (+ y with `accumulate`) in the blocked kernel: op(a) is a
// (M, R), or aᵀ with `a_t` (a (R, M): the weight gradients' sum over rows); a and y with unit stride
// along their rows, b (R, N) with any strides. b is packed in blocks of kGemmChunkRows rows by as many
// panels as fill half a core's L2, then each thread takes its groups of rows of y (gemm_block) through
// every block.
template <typename scalar_t>
void gemm_blocked(at::Tensor& y, const at::Tensor& a, bool a_t, const at::Tensor& b, const scalar_t* bias,
                  bool accumulate) {
  const int64_t R = b.size(0), M = y.size(0), N = y.size(1);
  const int64_t PW = packed_width<scalar_t>(), S = static_cast<int64_t>(sizeof(scalar_t));
  const int64_t KC = std::min(R, kGemmChunkRows);
  const int64_t NC = std::min(ceil_div(N, PW) * PW, std::max(PW, l2_bytes() / 2 / (KC * S) / PW * PW));
  const int64_t chunks = ceil_div(R, KC), blocks = ceil_div(N, NC);
  at::Tensor packed = at::empty({blocks * chunks * KC * NC}, a.options());
  const scalar_t* ap = a.data_ptr<scalar_t>();
  const scalar_t* bp = b.data_ptr<scalar_t>();
  scalar_t* yp = y.data_ptr<scalar_t>();
  scalar_t* pp = packed.data_ptr<scalar_t>();
  const int64_t lda = a.stride(0), sk = b.stride(0), sn = b.stride(1), ldy = y.stride(0);
  // Threads only where the work earns back waking them (parallel_min_work()).
  const bool serial = R * M * N < parallel_min_work();
  at::parallel_for(0, blocks * chunks, serial ? blocks * chunks : 1, [&](int64_t q0, int64_t q1) {
    for (int64_t q = q0; q < q1; ++q) {
      const int64_t n0 = q / chunks * NC, k0 = q % chunks * KC;
      pack_panels(bp + k0 * sk + n0 * sn, sk, sn, std::min(KC, R - k0), std::min(NC, N - n0), pp + q * KC * NC);
    }
  });
  const int64_t groups = ceil_div(M, kGemmGroup);
  at::parallel_for(0, groups, serial ? groups : 1, [&](int64_t g0, int64_t g1) {
    const int64_t i0 = g0 * kGemmGroup, i1 = std::min(M, g1 * kGemmGroup);
    for (int64_t nb = 0; nb < blocks; ++nb) {
      const int64_t n0 = nb * NC;
      for (int64_t c = 0; c < chunks; ++c) {
        const int64_t k0 = c * KC;
        // the first chunk starts from y (accumulate), the bias or nothing; the others accumulate
        const bool acc = accumulate || c > 0;
        const scalar_t* init = acc ? yp + n0 : bias ? bias + n0 : nullptr;
        gemm<scalar_t>(std::min(KC, R - k0), a_t ? ap + k0 * lda : ap + k0, lda, a_t, pp + (nb * chunks + c) * KC * NC,
                       std::min(NC, N - n0), yp + n0, ldy, i0, i1, init, acc ? ldy : 0);
      }
    }
  });
}

// Whether gemm_blocked() can take these operands: float32/float64 alike, unit stride along the rows of
// a and y, nothing empty (ATen's products handle those).
inline bool gemm_blocked_takes(const at::Tensor& y, const at::Tensor& a, const at::Tensor& b) {
  const auto st = a.scalar_type();
  return (st == at::kFloat || st == at::kDouble) && b.scalar_type() == st && y.scalar_type() == st &&
         a.dim() == 2 && b.dim() == 2 && a.stride(1) == 1 && y.stride(1) == 1 && b.size(0) > 0 && y.numel() > 0;
}

// y (M, N) = aᵀ·b (+ y with `accumulate`), a (R, M), b (R, N): the weight gradients, sums over the R
// rows. In the blocked kernel where tn_blocked(), else through ATen: oneDNN would need both operands
// transposed into copies, which cost as much as its speed-up saves (measured: B=256, H=64 RNN, 0.7 ms
// per copy against a 1 ms product).
inline void mm_tn(at::Tensor& y, const at::Tensor& a, const at::Tensor& b, bool accumulate = false) {
  if (tn_blocked() && gemm_blocked_takes(y, a, b)) {
    AT_DISPATCH_FLOATING_TYPES(a.scalar_type(), "mm_tn", [&] {
      gemm_blocked<scalar_t>(y, a, /*a_t=*/true, b, nullptr, accumulate);
    });
    return;
  }
  if (accumulate) {
    y.addmm_(a.t(), b);
  } else {
    at::mm_out(y, a.t(), b);
  }
}

// From how many steps a per-call copy of W into the layout a kernel wants pays (StepMatmul, and the row
// split of recurrence.cpp, whose blocked kernel needs one): GRU B=1 H=128, a 30 µs copy of W_hhᵀ against
// ~3 µs saved per step; a one-step RNN B=16 H=512 forward spent most of 533 µs on it.
constexpr int64_t kCopyMinSteps = 8;

// A fixed right-hand factor W (K, M) applied at every step: x (B, K) -> x·W (B, M).
template <typename scalar_t>
class StepMatmul {
 public:
  // `w` is (K, M); a transposed view is fine (it is copied to the layout each path wants). steps: how
  // many products will be taken (the packing decision of LinearNT).
  // serial: the product runs on the calling thread, in the blocked kernel (a row split of the loop, see
  // row_parts() in recurrence.cpp, gives each thread its own rows; K·M must be <= small_max_work()).
  // backward: the backward's dgh·W_hh, whose limit on K·M is bwd_small_max_work().
  StepMatmul(const at::Tensor& w, int64_t B, int64_t steps, bool serial = false, bool backward = false)
      : B_(B), K_(w.size(0)), M_(w.size(1)) {
    // The blocked kernel wants W row-major: for the forward (W_hhᵀ, a transposed view) that is a copy per
    // call, which a short sequence does not earn back (kCopyMinSteps).
    const bool copy_pays = w.is_contiguous() || steps >= kCopyMinSteps;
    // One row and a W beyond L2: a matrix-vector product bound by reading W, which matvec() does in
    // memory order on all threads (measured, 2 threads, AVX2, LSTM B=1 inference: H=512 T=200 23 vs
    // 39 ms through ATen's GEMM; H=1024 T=100 33 vs 140 ms). One row over a sequence too short for the
    // copy the blocked kernel wants (token-by-token decoding): matvec() on this thread, reading a
    // transposed W (W_hhᵀ, of a contiguous W_hh) in place, where ATen's GEMM costs a few µs a call.
    const bool big = K_ * M_ >= matvec_min_work(), in_place = w.t().is_contiguous();
    if (!serial && B == 1 && (in_place ? big || !copy_pays : big && steps >= kCopyMinSteps)) {
      matvec_ = true;
      tree_ = !big;  // a W in cache: matvec_tree()
      w_ = in_place ? w.t() : contiguous_2d(w.t());
      parallel_ = big && at::get_num_threads() > 1;
      return;
    }
    const int64_t max_work = backward ? bwd_small_max_work() : small_max_work();
    use_blas_ = !serial && (B >= blas_min_rows() || K_ * M_ > max_work || !copy_pays);
    // Where the register-blocked kernel applies it beats oneDNN, whose per-call overhead (~25 µs) is
    // paid every step (measured, 1 thread, LSTM B=16 H=256: 109 vs 125 µs per step; B=8: 51 vs 75).
    const at::Tensor wt = w.t();  // (M, K): a Linear weight
    if (use_blas_ && B >= dnnl_min_rows() && dnnl_pays(wt, B)) {
      dnnl_.emplace(wt, B, steps);
      if (dnnl_->uses_dnnl()) return;
      dnnl_.reset();
    }
    // Packed from 4 rows, and from 2 where W is beyond a core's L2 (one thread, AVX2, LSTM and GRU B=2-3
    // H=512-1024: row-major W ran 1.2-2.2x slower than oneDNN, packed 1.3-2.0x faster).
    const bool pack = B >= 4 || (B >= 2 && K_ * M_ * static_cast<int64_t>(sizeof(scalar_t)) > l2_bytes());
    if (!use_blas_ && pack && K_ * M_ >= packed_min_work()) {
      // (K, M) -> panels (P, K, PW), the last zero-padded, straight from w's strides.
      pw_ = packed_width<scalar_t>();
      panels_ = (M_ + pw_ - 1) / pw_;
      w_ = at::empty({panels_, K_, pw_}, w.options());
      pack_panels(w.data_ptr<scalar_t>(), w.stride(0), w.stride(1), K_, M_, w_.data_ptr<scalar_t>());
    } else {
      w_ = use_blas_ ? w : contiguous_2d(w);
    }
    // Split the columns over threads only when a step has enough work to amortise waking them
    // (parallel_min_work()).
    parallel_ = !serial && !use_blas_ && B * K_ * M_ >= parallel_min_work() && at::get_num_threads() > 1;
  }

  const char* path() const {
    return dnnl_.has_value() ? "onednn" : use_blas_ ? "aten" : matvec_ ? "matvec" : pw_ ? "packed" : "blocked";
  }

  // out (rows, M) row stride ldo = x (rows, K) row stride ldx · W, for the first rows <= B rows.
  // Returns where the result is: `out`, or, on the oneDNN path when ldo == M and `keep` is given, the
  // product's own buffer (held in *keep; saves copying it, 5 µs a step at B=16, H=256 LSTM).
  const scalar_t* apply(const scalar_t* x, int64_t ldx, scalar_t* out, int64_t ldo, int64_t rows = -1,
                        at::Tensor* keep = nullptr) const {
    const int64_t B = rows < 0 ? B_ : rows;
    if (B == 0) return out;
    if (dnnl_.has_value() || use_blas_) {
      auto opts = at::TensorOptions().dtype(c10::CppTypeToScalarType<scalar_t>::value);
      at::Tensor xt = at::from_blob(const_cast<scalar_t*>(x), {B, K_}, {ldx, 1}, opts);
      if (dnnl_.has_value() && keep != nullptr && ldo == M_) {
        *keep = dnnl_->product(xt);
        return keep->data_ptr<scalar_t>();
      }
      at::Tensor ot = at::from_blob(out, {B, M_}, {ldo, 1}, opts);
      if (dnnl_.has_value()) {
        dnnl_->apply(xt, ot);
      } else {
        at::mm_out(ot, xt, w_);
      }
      return out;
    }
    const scalar_t* w = w_.data_ptr<scalar_t>();
    if (matvec_) {
      // Rows of W in chunks of 64 per task (16 KiB at K = 64 in float32).
      if (tree_) {
        matvec_tree<scalar_t>(K_, x, w, K_, out, 0, M_);
      } else if (!parallel_) {
        matvec<scalar_t>(K_, x, w, K_, out, 0, M_);
      } else {
        at::parallel_for(0, M_, 64, [&](int64_t lo, int64_t hi) { matvec<scalar_t>(K_, x, w, K_, out, lo, hi); });
      }
      return out;
    }
    if (pw_ > 0) {
      if (!parallel_) {
        packed_mm<scalar_t>(B, K_, x, ldx, w, out, ldo, M_, 0, panels_);
      } else {
        at::parallel_for(0, panels_, 1, [&](int64_t lo, int64_t hi) {
          packed_mm<scalar_t>(B, K_, x, ldx, w, out, ldo, M_, lo, hi);
        });
      }
      return out;
    }
    if (!parallel_) {
      small_mm<scalar_t>(B, K_, x, ldx, w, M_, out, ldo, 0, M_);
      return out;
    }
    // One even share of the columns per thread, in whole 64-byte vectors (3 blocks of 128 columns for
    // M = 384 would give one thread twice the work of the other).
    const int64_t nt = at::get_num_threads();
    constexpr int64_t A = 64 / sizeof(scalar_t);
    const int64_t share = ((M_ + nt - 1) / nt + A - 1) / A * A;
    at::parallel_for(0, nt, 1, [&](int64_t lo, int64_t hi) {
      small_mm<scalar_t>(B, K_, x, ldx, w, M_, out, ldo, std::min(lo * share, M_), std::min(hi * share, M_));
    });
    return out;
  }

 private:
  int64_t B_, K_, M_;
  bool use_blas_ = false;
  bool parallel_ = false;
  bool matvec_ = false;  // w_ holds Wᵀ (M, K), see matvec()
  bool tree_ = false;    // ... and fits in cache: matvec_tree()
  int64_t pw_ = 0;       // > 0: w_ holds W in panels of pw_ columns, see packed_mm_body()
  int64_t panels_ = 0;
  at::Tensor w_;
  c10::optional<LinearNT> dnnl_;
};

}  // namespace rnnfast
