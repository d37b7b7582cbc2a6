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

// One row of x times columns [0, NV·L) of w, L = lanes of a 64-byte vector. GCC vector extensions keep
// the NV accumulators in registers (plain arrays ended up on the stack, 3 GMAC/s); NV = 8 independent
// FMA chains cover the FMA latency. Under the ISA clones a 64-byte vector is one AVX-512 register, two
// AVX2 or four SSE registers.
template <typename scalar_t, int NV>
RNNFAST_INLINE void row_kernel(int64_t K, const scalar_t* x, const scalar_t* w, int64_t ldw, scalar_t* out) {
  typedef scalar_t V __attribute__((vector_size(64)));
  constexpr int L = 64 / sizeof(scalar_t);
  V acc[NV];
#pragma GCC unroll 8
  for (int v = 0; v < NV; ++v) acc[v] = V{} ;
  for (int64_t k = 0; k < K; ++k) {
    const scalar_t* wr = w + k * ldw;
    const V a = V{} + x[k];
#pragma GCC unroll 8
    for (int v = 0; v < NV; ++v) {
      V wv;
      std::memcpy(&wv, wr + v * L, sizeof(V));
      acc[v] += a * wv;
    }
  }
#pragma GCC unroll 8
  for (int v = 0; v < NV; ++v) std::memcpy(out + v * L, &acc[v], sizeof(V));
}

// out[:, m0:m1] = x · w[:, m0:m1];  x (B, K) stride ldx, w (K, M) stride ldw, out (B, M) stride ldo.
template <typename scalar_t>
RNNFAST_CLONES void small_mm(int64_t B, int64_t K, const scalar_t* x, int64_t ldx, const scalar_t* w, int64_t ldw,
                             scalar_t* out, int64_t ldo, int64_t m0, int64_t m1) {
  constexpr int64_t L = 64 / sizeof(scalar_t);
  for (int64_t b = 0; b < B; ++b) {
    const scalar_t* xb = x + b * ldx;
    scalar_t* ob = out + b * ldo;
    int64_t m = m0;
    for (; m + 8 * L <= m1; m += 8 * L) row_kernel<scalar_t, 8>(K, xb, w + m, ldw, ob + m);
    for (; m + L <= m1; m += L) row_kernel<scalar_t, 1>(K, xb, w + m, ldw, ob + m);
    if (m < m1) {
      for (int64_t j = m; j < m1; ++j) ob[j] = 0;
      for (int64_t k = 0; k < K; ++k) {
        const scalar_t a = xb[k];
        for (int64_t j = m; j < m1; ++j) ob[j] += a * w[k * ldw + j];
      }
    }
  }
}

// Where ATen's GEMM takes over from small_mm: from this many rows (env RNNFAST_CPU_BLAS_MIN_B), or
// from 2^18 multiply-adds per row, where W (1 MiB in float32) no longer stays in a core's L2.
// Measured per step, GRU (K = H, M = 3H), float32, 1 thread, small_mm vs at::mm:
//   H=64:  B=1 1.5 vs 3.6 µs, B=4 4.0 vs 5.3, B=8 7.1 vs 5.0
//   H=128: B=1 3.4 vs 4.8 µs, B=4 9.4 vs 9.9, B=8 18.5 vs 14.6
//   H=256: B=1 12.3 vs 18.1 µs, B=4 39 vs 42; H=1024, B=1 (2 threads): 1.6 vs 1.1 ms
inline int64_t blas_min_rows() {
  static const int64_t v = [] {
    const char* s = std::getenv("RNNFAST_CPU_BLAS_MIN_B");
    return s ? std::atoll(s) : int64_t{5};
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
    constexpr int64_t MB = 512 / sizeof(scalar_t);  // one 8-vector block per task
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
