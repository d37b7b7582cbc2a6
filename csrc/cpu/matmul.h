// The per-step product out (B, M) = x (B, K) · W (K, M) of the time loops.
//
// At small B the product is a matrix-vector product dominated by call overhead in ATen (4.6 µs for
// 1×128·128×384 through torch.mm, where the arithmetic is < 1 µs): a register-blocked kernel reading W
// row by row from cache does it directly. At large B or K·M it is a real GEMM and goes to ATen/MKL.
#pragma once

#include <ATen/Parallel.h>

#include <algorithm>

#include "common.h"

namespace rnnfast {

// Rows of x handled together (each W row loaded once is used NB times), and columns per block: 128 bytes,
// i.e. 2 AVX-512 / 4 AVX2 registers per row of accumulators.
constexpr int kRowBlock = 4;

template <typename scalar_t, int NB>
RNNFAST_INLINE void mm_block(int64_t K, const scalar_t* x, int64_t ldx, const scalar_t* w, int64_t ldw,
                             scalar_t* out, int64_t ldo, int64_t width) {
  constexpr int MB = 128 / sizeof(scalar_t);
  scalar_t acc[NB][MB];
  for (int i = 0; i < NB; ++i) {
    for (int m = 0; m < MB; ++m) acc[i][m] = 0;
  }
  if (width == MB) {
    for (int64_t k = 0; k < K; ++k) {
      const scalar_t* wr = w + k * ldw;
#pragma GCC unroll 4
      for (int i = 0; i < NB; ++i) {
        const scalar_t a = x[i * ldx + k];
#pragma GCC unroll 32
        for (int m = 0; m < MB; ++m) acc[i][m] += a * wr[m];
      }
    }
    for (int i = 0; i < NB; ++i) {
      for (int m = 0; m < MB; ++m) out[i * ldo + m] = acc[i][m];
    }
  } else {
    for (int64_t k = 0; k < K; ++k) {
      const scalar_t* wr = w + k * ldw;
      for (int i = 0; i < NB; ++i) {
        const scalar_t a = x[i * ldx + k];
        for (int64_t m = 0; m < width; ++m) acc[i][m] += a * wr[m];
      }
    }
    for (int i = 0; i < NB; ++i) {
      for (int64_t m = 0; m < width; ++m) out[i * ldo + m] = acc[i][m];
    }
  }
}

// out[:, m0:m1] = x · w[:, m0:m1];  x (B, K) stride ldx, w (K, M) stride ldw, out (B, M) stride ldo.
template <typename scalar_t>
RNNFAST_CLONES void small_mm(int64_t B, int64_t K, const scalar_t* x, int64_t ldx, const scalar_t* w, int64_t ldw,
                             scalar_t* out, int64_t ldo, int64_t m0, int64_t m1) {
  constexpr int64_t MB = 128 / sizeof(scalar_t);
  for (int64_t b0 = 0; b0 < B; b0 += kRowBlock) {
    const int64_t nb = std::min<int64_t>(kRowBlock, B - b0);
    const scalar_t* xb = x + b0 * ldx;
    scalar_t* ob = out + b0 * ldo;
    for (int64_t m = m0; m < m1; m += MB) {
      const int64_t width = std::min<int64_t>(MB, m1 - m);
      switch (nb) {
        case 4: mm_block<scalar_t, 4>(K, xb, ldx, w + m, ldw, ob + m, ldo, width); break;
        case 3: mm_block<scalar_t, 3>(K, xb, ldx, w + m, ldw, ob + m, ldo, width); break;
        case 2: mm_block<scalar_t, 2>(K, xb, ldx, w + m, ldw, ob + m, ldo, width); break;
        default: mm_block<scalar_t, 1>(K, xb, ldx, w + m, ldw, ob + m, ldo, width); break;
      }
    }
  }
}

// Where ATen's GEMM takes over from small_mm: from this many rows (env RNNFAST_CPU_BLAS_MIN_B), or
// from 2^18 multiply-adds per row. Measured per step, float32, 1 thread (GRU, K = H, M = 3H):
//   B=1: H=64 1.0 µs vs 2.2 µs through at::mm, H=128 2.9 vs 4.7, H=256 12 vs 18; H=1024: 1.6 vs 1.1 ms.
//   B=4: H=64 15 µs vs 3.5, H=128 137 vs 9.6 — MKL's small-GEMM kernels win as soon as B > 1.
inline int64_t blas_min_rows() {
  static const int64_t v = [] {
    const char* s = std::getenv("RNNFAST_CPU_BLAS_MIN_B");
    return s ? std::atoll(s) : int64_t{2};
  }();
  return v;
}
constexpr int64_t kSmallMaxWork = int64_t{1} << 18;

// A fixed right-hand factor W (K, M) applied at every step: x (B, K) -> x·W (B, M).
template <typename scalar_t>
class StepMatmul {
 public:
  // `w` is (K, M); a transposed view is fine (it is copied to row-major for small_mm when needed).
  StepMatmul(const at::Tensor& w, int64_t B) : B_(B), K_(w.size(0)), M_(w.size(1)) {
    use_blas_ = B >= blas_min_rows() || K_ * M_ > kSmallMaxWork;
    if (use_blas_) {
      w_ = w;
    } else {
      w_ = w.contiguous();
    }
    // Split the columns over threads only when a step has enough work to amortise waking them (~2 µs).
    parallel_ = !use_blas_ && B * K_ * M_ >= (int64_t{1} << 17) && at::get_num_threads() > 1;
  }

  // out (B, M) row stride ldo = x (B, K) row stride ldx · W.
  void apply(const scalar_t* x, int64_t ldx, scalar_t* out, int64_t ldo) const {
    if (use_blas_) {
      auto opts = w_.options();
      at::Tensor xt = at::from_blob(const_cast<scalar_t*>(x), {B_, K_}, {ldx, 1}, opts);
      at::Tensor ot = at::from_blob(out, {B_, M_}, {ldo, 1}, opts);
      at::mm_out(ot, xt, w_);
      return;
    }
    const scalar_t* w = w_.data_ptr<scalar_t>();
    if (!parallel_) {
      small_mm<scalar_t>(B_, K_, x, ldx, w, M_, out, ldo, 0, M_);
      return;
    }
    constexpr int64_t MB = 128 / sizeof(scalar_t);
    const int64_t blocks = (M_ + MB - 1) / MB;
    at::parallel_for(0, blocks, 1, [&](int64_t lo, int64_t hi) {
      small_mm<scalar_t>(B_, K_, x, ldx, w, M_, out, ldo, lo * MB, std::min(hi * MB, M_));
    });
  }

 private:
  int64_t B_, K_, M_;
  bool use_blas_ = false;
  bool parallel_ = false;
  at::Tensor w_;
};

}  // namespace rnnfast
