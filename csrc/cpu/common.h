// Shared pieces of the CPU kernels: ISA cloning, vectorisable math, output allocation.
//
// Portability: a wheel built here must run on any x86-64 CPU, so nothing is compiled with -march.
// The hot loops (the small matrix products and the per-cell pointwise code) are instead compiled
// three times with GCC's target_clones (x86-64-v4 = AVX-512, x86-64-v3 = AVX2+FMA, baseline SSE2)
// and the dynamic loader picks the best one for the running CPU. at::vec::Vectorized cannot do that
// from an extension: its ISA is fixed when the extension is compiled. Large products go to ATen's
// GEMM (MKL/oneDNN), which dispatches at run time itself.
#pragma once

#include <ATen/ATen.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>

#include "blocks.h"

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__) && \
    !defined(RNNFAST_NO_CLONES)
#define RNNFAST_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define RNNFAST_CLONES
#endif

// The pointwise loops read and write distinct rows (or the same element in place), which the compiler
// cannot prove through the pointers: without this it keeps them scalar (measured: LSTM B=1 H=128
// pointwise 3x slower).
#if defined(__GNUC__) && !defined(__clang__)
#define RNNFAST_IVDEP _Pragma("GCC ivdep")
#elif defined(__clang__)
#define RNNFAST_IVDEP _Pragma("clang loop vectorize(assume_safety)")
#else
#define RNNFAST_IVDEP
#endif

#if defined(__GNUC__)
#define RNNFAST_INLINE inline __attribute__((always_inline))
#else
#define RNNFAST_INLINE inline
#endif

namespace rnnfast {

// Choices forced from Python (rnnfast.backends.cpu.flags, through the op set_options): 0 leaves each to
// the kernels' defaults, which are functions of the machine's facts (vector width, L2) and the call's sizes.
enum class PathChoice : int { kAuto = 0, kPlain = 1, kRows = 2, kTeam = 3 };
enum class GemmChoice : int { kAuto = 0, kAten = 1, kOnednn = 2, kBlocked = 3 };

struct Options {
  std::atomic<int> path{0}, gemm{0};
  static Options& get() {
    static Options o;
    return o;
  }
};
inline PathChoice forced_path() { return static_cast<PathChoice>(Options::get().path.load(std::memory_order_relaxed)); }
inline GemmChoice forced_gemm() { return static_cast<GemmChoice>(Options::get().gemm.load(std::memory_order_relaxed)); }

// RNNFAST_DEBUG_POISON=1: outputs are filled with NaN when allocated, so an element a kernel forgets to
// write fails the tests instead of passing with whatever the allocator left there.
inline bool debug_poison() {
  static const bool on = [] {
    const char* v = std::getenv("RNNFAST_DEBUG_POISON");
    return v != nullptr && v[0] != '\0' && std::strcmp(v, "0") != 0;
  }();
  return on;
}

// A 2-D tensor as a contiguous one. A transposed view (unit stride along its rows' elements) is
// copied in 16x16 tiles: at::Tensor::contiguous() walks it element by element with the read stride of
// a whole row (2 threads, AVX2 EPYC: a 384x128 W_hhᵀ 55 µs against 19 µs tiled, 1536x512 830 µs
// against 340 µs), and the time loops take such a copy of W_hhᵀ at every call.
inline at::Tensor contiguous_2d(const at::Tensor& w) {
  if (w.is_contiguous() || w.dim() != 2 || w.stride(0) != 1) return w.contiguous();
  const int64_t R = w.size(0), C = w.size(1), ld = w.stride(1);
  at::Tensor out = at::empty({R, C}, w.options());
  AT_DISPATCH_FLOATING_TYPES(w.scalar_type(), "contiguous_2d", [&] {
    constexpr int64_t TB = 16;
    const scalar_t* a = w.data_ptr<scalar_t>();  // element (r, c) at a[c * ld + r]
    scalar_t* b = out.data_ptr<scalar_t>();
    for (int64_t c0 = 0; c0 < C; c0 += TB) {
      const int64_t c1 = std::min(C, c0 + TB);
      for (int64_t r0 = 0; r0 < R; r0 += TB) {
        const int64_t r1 = std::min(R, r0 + TB);
        for (int64_t r = r0; r < r1; ++r) {
          for (int64_t c = c0; c < c1; ++c) b[r * C + c] = a[c * ld + r];
        }
      }
    }
  });
  return out;
}

// Scratch arrays of one call carved out of a single zeroed block, each starting on a cache line (the
// teams' slices of them are line-aligned, see team_slices()): at small sizes each ATen allocation, clone,
// fill or copy costs ~0.3-1 µs, and a one-step call made ten of them. Sizes in elements; an array of
// size 0 gets nullptr. `block` keeps the memory (from the block cache when large).
template <typename scalar_t, size_t K>
std::array<scalar_t*, K> scratch_arrays(at::Tensor& block, const std::array<int64_t, K>& sizes,
                                        const at::TensorOptions& options) {
  constexpr int64_t kLine = 64 / static_cast<int64_t>(sizeof(scalar_t));
  std::array<int64_t, K> off{};
  int64_t total = 0;
  for (size_t i = 0; i < K; ++i) {
    off[i] = total;
    total += (sizes[i] + kLine - 1) / kLine * kLine;
  }
  block = BlockCache::get().empty({std::max<int64_t>(total, 1)}, options);
  scalar_t* base = block.data_ptr<scalar_t>();
  std::fill(base, base + total, scalar_t(0));
  std::array<scalar_t*, K> p{};
  for (size_t i = 0; i < K; ++i) p[i] = sizes[i] > 0 ? base + off[i] : nullptr;
  return p;
}

// Copies the (B, C) tensor t (any strides) into dst, rows C apart.
template <typename scalar_t>
void copy_rows(const at::Tensor& t, scalar_t* dst) {
  const at::Tensor c = t.contiguous();
  const scalar_t* src = c.data_ptr<scalar_t>();
  std::copy(src, src + c.numel(), dst);
}

// An output tensor: large ones come from the block cache (blocks.h), every one NaN-poisoned under
// RNNFAST_DEBUG_POISON.
inline at::Tensor new_output(at::IntArrayRef sizes, const at::TensorOptions& options) {
  at::Tensor t = BlockCache::get().empty(sizes, options);
  if (debug_poison() && t.numel() > 0) {
    t.fill_(std::numeric_limits<double>::quiet_NaN());
  }
  return t;
}

// ---------------------------------------------------------------------------------------------
// Elementwise math written with plain arithmetic and bit casts, so that loops calling it vectorise
// (libm's expf/tanhf are scalar calls). float: Cephes-style exp (range reduction by ln 2 and a
// degree-6 polynomial, ~2 ulp); double keeps libm for the 1e-12 agreement with the reference.

RNNFAST_INLINE float exp_fast(float x) {
  x = x < -87.0f ? -87.0f : x;
  x = x > 88.0f ? 88.0f : x;
  // Round x·log2(e) to the nearest integer n by adding 1.5·2^23: n sits in the low mantissa bits.
  const float shifter = 12582912.0f;
  float t = x * 1.44269504088896341f + shifter;
  float n = t - shifter;
  int32_t ti;
  std::memcpy(&ti, &t, sizeof(ti));
  int32_t ni = ti - 0x4B400000;
  float r = x - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  int32_t bits = (ni + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return p * scale;
}

RNNFAST_INLINE float sigmoid_fast(float x) { return 1.0f / (1.0f + exp_fast(-x)); }

RNNFAST_INLINE float tanh_fast(float x) {
  // 1 - 2/(e^{2x}+1) loses relative accuracy near 0; there an odd Taylor polynomial is exact to float.
  float big = 1.0f - 2.0f / (exp_fast(2.0f * x) + 1.0f);
  float x2 = x * x;
  float small = x * (1.0f + x2 * (-1.0f / 3 + x2 * (2.0f / 15 + x2 * (-17.0f / 315 + x2 * (62.0f / 2835)))));
  return (x2 < 0.0625f) ? small : big;
}

RNNFAST_INLINE double sigmoid_fast(double x) { return 1.0 / (1.0 + std::exp(-x)); }
RNNFAST_INLINE double tanh_fast(double x) { return std::tanh(x); }

}  // namespace rnnfast
