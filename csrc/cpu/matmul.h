// The per-step product out (B, M) = x (B, K) · W (K, M) of the time loops.
//
// At small B the product is dominated by call overhead in ATen (4.6 µs for 1×128·128×384 through
// torch.mm, where the arithmetic is < 1 µs), and MKL re-packs W at every call: a register-blocked
// kernel streaming W (kept in L2 across steps) does it directly up to B = 63. From B = 64, or when W
// outgrows L2, it is a real GEMM and goes to oneDNN (gemm.h), or to ATen/MKL where torch has no oneDNN.
#pragma once

#include <ATen/Parallel.h>

#include <algorithm>

#include "common.h"
#include "gemm.h"

namespace rnnfast {

// NB rows of x times columns [0, NV·L) of w, L = lanes of a 64-byte vector. GCC vector extensions keep
// the NB·NV accumulators in registers (plain arrays ended up on the stack: 3 GMAC/s); each w vector
// loaded is used NB times, and NB·NV >= 8 independent FMA chains cover the FMA latency. Under the ISA
// clones a 64-byte vector is one AVX-512 register, two AVX2 or four SSE registers.
template <typename scalar_t, int NB, int NV>
RNNFAST_INLINE void block_kernel(int64_t K, const scalar_t* x, int64_t ldx, const scalar_t* w, int64_t ldw,
                                 scalar_t* out, int64_t ldo) {
  typedef scalar_t V __attribute__((vector_size(64)));
  constexpr int L = 64 / sizeof(scalar_t);
  V acc[NB][NV];
#pragma GCC unroll 4
  for (int i = 0; i < NB; ++i) {
#pragma GCC unroll 8
    for (int v = 0; v < NV; ++v) acc[i][v] = V{};
  }
  for (int64_t k = 0; k < K; ++k) {
    const scalar_t* wr = w + k * ldw;
    V wv[NV];
#pragma GCC unroll 8
    for (int v = 0; v < NV; ++v) std::memcpy(&wv[v], wr + v * L, sizeof(V));
#pragma GCC unroll 4
    for (int i = 0; i < NB; ++i) {
      const V a = V{} + x[i * ldx + k];
#pragma GCC unroll 8
      for (int v = 0; v < NV; ++v) acc[i][v] += a * wv[v];
    }
  }
#pragma GCC unroll 4
  for (int i = 0; i < NB; ++i) {
#pragma GCC unroll 8
    for (int v = 0; v < NV; ++v) std::memcpy(out + i * ldo + v * L, &acc[i][v], sizeof(V));
  }
}

template <typename scalar_t, int NB>
RNNFAST_INLINE void rows_kernel(int64_t K, const scalar_t* x, int64_t ldx, const scalar_t* w, int64_t ldw,
                                scalar_t* out, int64_t ldo, int64_t m0, int64_t m1) {
  constexpr int64_t L = 64 / sizeof(scalar_t);
  constexpr int NV = NB == 1 ? 8 : 4;
  int64_t m = m0;
  for (; m + NV * L <= m1; m += NV * L) block_kernel<scalar_t, NB, NV>(K, x, ldx, w + m, ldw, out + m, ldo);
  for (; m + L <= m1; m += L) block_kernel<scalar_t, NB, 1>(K, x, ldx, w + m, ldw, out + m, ldo);
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

// out[:, m0:m1] = x · w[:, m0:m1];  x (B, K) stride ldx, w (K, M) stride ldw, out (B, M) stride ldo.
template <typename scalar_t>
RNNFAST_CLONES void small_mm(int64_t B, int64_t K, const scalar_t* x, int64_t ldx, const scalar_t* w, int64_t ldw,
                             scalar_t* out, int64_t ldo, int64_t m0, int64_t m1) {
  for (int64_t b = 0; b < B; b += 4) {
    const scalar_t* xb = x + b * ldx;
    scalar_t* ob = out + b * ldo;
    switch (std::min<int64_t>(4, B - b)) {
      case 4: rows_kernel<scalar_t, 4>(K, xb, ldx, w, ldw, ob, ldo, m0, m1); break;
      case 3: rows_kernel<scalar_t, 3>(K, xb, ldx, w, ldw, ob, ldo, m0, m1); break;
      case 2: rows_kernel<scalar_t, 2>(K, xb, ldx, w, ldw, ob, ldo, m0, m1); break;
      default: rows_kernel<scalar_t, 1>(K, xb, ldx, w, ldw, ob, ldo, m0, m1); break;
    }
  }
}

// Where ATen's GEMM takes over from small_mm: from this many rows (env RNNFAST_CPU_BLAS_MIN_B), or
// from 2^18 multiply-adds per row, where W (1 MiB in float32) no longer stays in a core's L2.
// Measured per step, GRU (K = H, M = 3H), float32, small_mm vs at::mm (MKL), 2 threads:
//   H=64:  B=1 1.3 vs 2.2 µs, B=4 2.1 vs 3.6, B=16 6.9 vs 8.3, B=32 13 vs 15
//   H=128: B=1 3.4 vs 4.9 µs, B=4 6.3 vs 9.8, B=16 20 vs 26, B=32 44 vs 58
//   H=256: B=1 11 vs 21 µs, B=4 20 vs 58, B=16 69 vs 101, B=32 124 vs 181; H=1024, B=1: 1.6 vs 1.1 ms
inline int64_t blas_min_rows() {
  static const int64_t v = [] {
    const char* s = std::getenv("RNNFAST_CPU_BLAS_MIN_B");
    return s ? std::atoll(s) : int64_t{64};
  }();
  return v;
}
constexpr int64_t kSmallMaxWork = int64_t{1} << 18;

// Where oneDNN (gemm.h) takes the products the blocked kernel leaves to a GEMM library: from this many
// rows (env RNNFAST_CPU_DNNL_MIN_B) and at least kDnnlMinWork multiply-adds per step. Measured per step,
// 1 thread, oneDNN vs MKL: GRU B=4 H=1024 460 vs 1090 µs, B=4 H=512 107-133 vs 212; at B=1 (a matrix-
// vector product, bound by reading W) no clear winner (GRU H=1024: 262-398 vs 290-302 µs).
inline int64_t dnnl_min_rows() {
  static const int64_t v = [] {
    const char* s = std::getenv("RNNFAST_CPU_DNNL_MIN_B");
    return s ? std::atoll(s) : int64_t{2};
  }();
  return v;
}

// A fixed right-hand factor W (K, M) applied at every step: x (B, K) -> x·W (B, M).
template <typename scalar_t>
class StepMatmul {
 public:
  // `w` is (K, M); a transposed view is fine (it is copied to the layout each path wants). steps: how
  // many products will be taken (the packing decision of LinearNT).
  StepMatmul(const at::Tensor& w, int64_t B, int64_t steps) : B_(B), K_(w.size(0)), M_(w.size(1)) {
    use_blas_ = B >= blas_min_rows() || K_ * M_ > kSmallMaxWork;
    // Where the register-blocked kernel applies it beats oneDNN, whose per-call overhead (~25 µs) is
    // paid every step (measured, 1 thread, LSTM B=16 H=256: 109 vs 125 µs per step; B=8: 51 vs 75).
    const at::Tensor wt = w.t();  // (M, K): a Linear weight
    if (use_blas_ && B >= dnnl_min_rows() && dnnl_pays(wt, B)) {
      dnnl_.emplace(wt, B, steps);
      if (dnnl_->uses_dnnl()) return;
      dnnl_.reset();
    }
    w_ = use_blas_ ? w : w.contiguous();
    // Split the columns over threads only when a step has enough work to amortise waking them: measured
    // with 2 threads, B=4 H=256 GRU (0.8M multiply-adds) 20 µs on one thread vs 27 on two; B=32 (6.3M)
    // 146 vs 124.
    parallel_ = !use_blas_ && B * K_ * M_ >= (int64_t{1} << 22) && at::get_num_threads() > 1;
  }

  const char* path() const { return dnnl_.has_value() ? "onednn" : use_blas_ ? "aten" : "blocked"; }

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
    if (!parallel_) {
      small_mm<scalar_t>(B, K_, x, ldx, w, M_, out, ldo, 0, M_);
      return out;
    }
    constexpr int64_t MB = 512 / sizeof(scalar_t);  // one 8-vector block per task
    const int64_t blocks = (M_ + MB - 1) / MB;
    at::parallel_for(0, blocks, 1, [&](int64_t lo, int64_t hi) {
      small_mm<scalar_t>(B, K_, x, ldx, w, M_, out, ldo, lo * MB, std::min(hi * MB, M_));
    });
    return out;
  }

 private:
  int64_t B_, K_, M_;
  bool use_blas_ = false;
  bool parallel_ = false;
  at::Tensor w_;
  c10::optional<LinearNT> dnnl_;
};

}  // namespace rnnfast
