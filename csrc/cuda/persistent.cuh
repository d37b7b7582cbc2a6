// Building blocks of the persistent (whole time loop in one cooperative launch) kernels.
//
// Each CTA owns U consecutive hidden units and keeps, for all T steps, the part of W_hh those units need
// in shared memory: forward, the G·U rows g·H + u0 + u (a (G·U, H) slice); backward, the U columns
// u0 + u (a (U, G·H) slice of W_hh, i.e. rows of W_hhᵀ). Per step and per chunk of `bc` batch rows it
// stages the shared operand (h_{t-1} forward, dgh_t backward, float32 in global memory, written by every
// CTA) into shared memory and computes
//     C (bc, n) = A (bc, k) · Wsᵀ          Ws (n, k): the on-chip slice
// with tensor cores (WMMA 16x16x16, float32 accumulate) for half/bfloat16 and exact float32 FMA for
// float32. The reduction may be split over warps (split_k partial sums in C, added by the consumer).
#pragma once

#ifdef __CUDACC__
#include <cooperative_groups.h>
#include <mma.h>
#endif

#include <climits>
#include <type_traits>

#include "cells.cuh"

namespace rnnfast {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr int kMaxSplitK = 8;

// Shared-memory layout of one CTA; computed on the host (plan, launch) and read by the kernel.
struct Tile {
  int n, k;     // used rows of the slice / reduction length
  int np, kp;   // padded: tensor cores round both to 16; float32 keeps np = n and makes the row stride kp odd
  int bc;       // batch rows per chunk (16 for tensor cores)
  int ks;       // split of the reduction: C holds ks partial sums
  int w_off, a_off, c_off, bytes;  // byte offsets of Ws (np, kp), A (bc, kp), C (ks, bc, np) float; total
};

__host__ __device__ inline int round_up(int x, int m) { return (x + m - 1) / m * m; }

template <typename E>
__host__ inline Tile make_tile(int n, int k, int bc) {
  Tile L{};
  L.n = n, L.k = k;
  if (std::is_same<E, float>::value) {
    // Odd row stride: the 32 lanes of a warp read 32 different rows at the same column, which then fall
    // into 32 different banks.
    L.np = n, L.kp = k | 1, L.bc = bc;
    const int outs = bc * n;
    L.ks = outs >= kThreads ? 1 : kThreads / outs;
    L.ks = L.ks > kMaxSplitK ? kMaxSplitK : L.ks;
    L.ks = L.ks > k ? k : L.ks;
  } else {
    L.np = round_up(n, 16), L.kp = round_up(k, 16), L.bc = 16;
    const int ntiles = L.np / 16, ktiles = L.kp / 16;
    L.ks = ntiles >= kWarps ? 1 : kWarps / ntiles;
    L.ks = L.ks > ktiles ? ktiles : L.ks;
  }
  // Sizes in size_t: an enormous H must read as "does not fit", never wrap around to a small int.
  const auto align = [](size_t x) { return (x + 127) / 128 * 128; };
  const size_t esz = sizeof(E);
  const size_t a_off = align(static_cast<size_t>(L.np) * L.kp * esz);
  const size_t c_off = a_off + align(static_cast<size_t>(L.bc) * L.kp * esz);
  const size_t total = c_off + align(static_cast<size_t>(L.ks) * L.bc * L.np * sizeof(float));
  const bool fits = total <= static_cast<size_t>(INT_MAX);
  L.w_off = 0, L.a_off = fits ? static_cast<int>(a_off) : 0, L.c_off = fits ? static_cast<int>(c_off) : 0;
  L.bytes = fits ? static_cast<int>(total) : INT_MAX;
  return L;
}

// Device loads of data other CTAs wrote before the last grid barrier go through L2 (ld.global.cg), never a
// possibly stale L1 line; the host emulator reads plain memory.
RNNFAST_HD float load_cg(const float* p) {
#ifdef __CUDA_ARCH__
  return __ldcg(p);
#else
  return *p;
#endif
}

// Thread tid's part of: A (bc, kp) <- src rows [0, rows) of width `width` (row stride `width`), float32 -> E,
// zero padded.
template <typename E>
RNNFAST_HD void stage_rows(const Tile& L, int tid, E* As, const float* src, int rows, int width) {
  for (int idx = tid; idx < L.bc * L.kp; idx += kThreads) {
    const int m = idx / L.kp, k = idx % L.kp;
    float v = 0.0f;
    if (m < rows && k < width) v = load_cg(src + static_cast<int64_t>(m) * width + k);
    As[idx] = from_f<E>(v);
  }
}

#ifdef __CUDACC__
// Warp w's part of C = A · Wsᵀ on tensor cores (see chunk_gemm).
template <typename E>
__device__ __forceinline__ void chunk_mma(const Tile& L, int tid, const E* As, const E* Ws, float* Cs) {
  using namespace nvcuda;
  const int warp = tid / 32;
  const int ntiles = L.np / 16, ktiles = L.kp / 16;
  // Job = (output tile, reduction part); with ks = kWarps / ntiles there are at most kWarps jobs when
  // ntiles < kWarps, else ks = 1 and each warp loops over output tiles.
  for (int job = warp; job < ntiles * L.ks; job += kWarps) {
    const int nt = job % ntiles, part = job / ntiles;
    wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
    wmma::fill_fragment(acc, 0.0f);
    for (int kt = part; kt < ktiles; kt += L.ks) {
      wmma::fragment<wmma::matrix_a, 16, 16, 16, E, wmma::row_major> fa;
      wmma::fragment<wmma::matrix_b, 16, 16, 16, E, wmma::col_major> fb;
      wmma::load_matrix_sync(fa, As + kt * 16, L.kp);
      // B (k, n) = Ws[n][k]: Ws row-major is B column-major with leading dimension kp.
      wmma::load_matrix_sync(fb, Ws + static_cast<int64_t>(nt) * 16 * L.kp + kt * 16, L.kp);
      wmma::mma_sync(acc, fa, fb, acc);
    }
    wmma::store_matrix_sync(Cs + part * 16 * L.np + nt * 16, acc, L.np, wmma::mem_row_major);
  }
}
#endif

// What chunk_mma computes, in plain loops, for the host emulator: lane 0 of each warp does its warp's jobs.
template <typename E>
inline void chunk_mma_model(const Tile& L, int tid, const E* As, const E* Ws, float* Cs) {
  if (tid % 32 != 0) return;
  const int ntiles = L.np / 16, ktiles = L.kp / 16;
  for (int job = tid / 32; job < ntiles * L.ks; job += kWarps) {
    const int nt = job % ntiles, part = job / ntiles;
    for (int m = 0; m < 16; ++m) {
      for (int n = 0; n < 16; ++n) {
        float acc = 0.0f;
        for (int kt = part; kt < ktiles; kt += L.ks)
          for (int kk = 0; kk < 16; ++kk)
            acc += to_f(As[m * L.kp + kt * 16 + kk]) * to_f(Ws[(nt * 16 + n) * L.kp + kt * 16 + kk]);
        Cs[part * 16 * L.np + m * L.np + nt * 16 + n] = acc;
      }
    }
  }
}

// Thread tid's part of C[ks][bc][np] = partial sums over the reduction of A (bc, kp) · Ws (np, kp)ᵀ:
// tensor cores (float32 accumulate) for half/bfloat16, exact FMA for float32. Rows >= rows of C are left
// unspecified for float32 (never read).
template <typename E>
RNNFAST_HD void chunk_gemm(const Tile& L, int tid, int rows, const E* As, const E* Ws, float* Cs) {
  if constexpr (std::is_same<E, float>::value) {
    const int outs = rows * L.n;
    for (int idx = tid; idx < outs * L.ks; idx += kThreads) {
      const int o = idx % outs, part = idx / outs;
      const int m = o / L.n, n = o % L.n;
      const float* a = As + m * L.kp;
      const float* w = Ws + n * L.kp;
      float acc = 0.0f;
      for (int k = part; k < L.k; k += L.ks) acc = fmaf(a[k], w[k], acc);
      Cs[(part * L.bc + m) * L.np + n] = acc;
    }
  } else {
#ifdef __CUDA_ARCH__
    chunk_mma(L, tid, As, Ws, Cs);
#else
    chunk_mma_model(L, tid, As, Ws, Cs);
#endif
  }
}

// Sum of the ks partial products of C at (m, n).
RNNFAST_HD float chunk_sum(const Tile& L, const float* Cs, int m, int n) {
  float v = 0.0f;
  for (int part = 0; part < L.ks; ++part) v += Cs[(part * L.bc + m) * L.np + n];
  return v;
}

// Plan: the fewest hidden units per CTA such that one CTA per SM covers H (most parallelism per step),
// then the largest batch chunk whose shared memory fits in `optin` bytes; false if nothing fits. The slice
// has rows_per_unit·U rows (forward, G·U) or, with slice_is_columns, U rows (backward); k is its reduction
// length (H forward, G·H backward).
template <typename E>
bool choose_tile(int rows_per_unit, int k, bool slice_is_columns, int B, int H, int sms, int optin, int* U,
                 int* ctas, Tile* L) {
  if (H <= 0 || B <= 0 || sms <= 0) return false;
  *U = (H + sms - 1) / sms;
  *ctas = (H + *U - 1) / *U;
  const int n = slice_is_columns ? *U : rows_per_unit * *U;
  int bc = std::is_same<E, float>::value ? (B < 16 ? B : 16) : 16;
  *L = make_tile<E>(n, k, bc);
  while (L->bytes > optin && std::is_same<E, float>::value && bc > 1) {
    bc /= 2;
    *L = make_tile<E>(n, k, bc);
  }
  return L->bytes <= optin;
}

#ifdef __CUDACC__
// The plan on `device`: choose_tile with its SM count and shared memory, then a check that the grid can be
// co-resident (a cooperative launch of a larger grid would fail).
template <typename E, typename Kernel>
int plan_persistent(Kernel kernel, int rows_per_unit, int k, bool slice_is_columns, int B, int H, int device,
                    rnnfast_plan* p) {
  *p = rnnfast_plan{};
  int sms = 0, optin = 0;
  cudaError_t err = cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device);
  if (err == cudaSuccess) err = cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device);
  if (err != cudaSuccess) return static_cast<int>(err);
  int U = 0, ctas = 0;
  Tile L{};
  if (!choose_tile<E>(rows_per_unit, k, slice_is_columns, B, H, sms, optin, &U, &ctas, &L)) return 0;
  // The device maximum, not L.bytes: plans with other batch sizes (float32 chunks) share the kernel, and a
  // later plan must not lower the limit below what an earlier one launches with.
  err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, optin);
  if (err != cudaSuccess) return static_cast<int>(err);
  int per_sm = 0;
  err = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, kThreads, L.bytes);
  if (err != cudaSuccess) return static_cast<int>(err);
  if (per_sm * sms < ctas) return 0;
  p->ok = 1, p->ctas = ctas, p->units = U, p->batch_chunk = L.bc, p->split_k = L.ks, p->smem_bytes = L.bytes;
  return 0;
}

// Cooperative launch (all CTAs co-resident, required by grid.sync), also valid under stream capture. Only
// after a plan for this kernel on the current device (which raised its shared-memory limit).
template <typename Kernel, typename Args>
int launch_cooperative(Kernel kernel, const rnnfast_plan* p, const Tile& L, const Args& a, rnnfast_stream stream) {
  cudaLaunchConfig_t cfg{};
  cfg.gridDim = dim3(static_cast<unsigned>(p->ctas));
  cfg.blockDim = dim3(kThreads);
  cfg.dynamicSmemBytes = static_cast<size_t>(L.bytes);
  cfg.stream = stream;
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeCooperative;
  attr[0].val.cooperative = 1;
  cfg.attrs = attr;
  cfg.numAttrs = 1;
  return static_cast<int>(cudaLaunchKernelEx(&cfg, kernel, a, L, p->units));
}
#endif

// Internal: the plans of each direction (persistent_fwd.cu, persistent_bwd.cu).
int plan_fwd(int cell, int dtype, int B, int H, int device, rnnfast_plan* p);
int plan_bwd(int cell, int dtype, int B, int H, int device, rnnfast_plan* p);

}  // namespace rnnfast
