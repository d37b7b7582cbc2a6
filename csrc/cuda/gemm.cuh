// The tile GEMM of a persistent CTA, C (16, np) += A_chunk (16, klen) · Ws[:, chunk]ᵀ, in two forms:
//
// - tensor cores (mma_chunk): warp w's job is (column group, reduction part); it accumulates up to
//   kTilesPerJob n-tiles over k-steps part, part + split, ... of each chunk in two independent sets of
//   accumulators (even / odd k-steps), loading every fragment from shared memory with ldmatrix. The code
//   is written over a machine M that does the warp-level operations: on the GPU (device.cuh) each lane runs
//   it with inline PTX; in the host emulator one call does all 32 lanes (ldmatrix and mma semantics from the
//   PTX ISA). Both compute every address with the functions of tile.cuh.
// - float32 FMA (ffma_chunk): thread tid owns a 4x4 tile of C and a part of the reduction, reading float4
//   pieces of A and Ws (register tiling: 8 shared loads per 64 FMAs).
// The partial sums end in C[part][row][column] (flush), which the cells add up.
#pragma once

#include "tile.cuh"

namespace rnnfast {

// One k-step of a warp's job over NT n-tiles: A fragment, then per pair of n-tiles a B fragment (x4; x2 for
// an odd last tile) and the MMAs. NT is a template argument so that the k-loop body has no branch.
template <int NT, class M>
RNNFAST_HD void mma_kstep(M& m, const Tile& L, int a_base, int kt, int kt_w, int nt0,
                          typename M::Acc (&acc)[kTilesPerJob]) {
  typename M::Reg a[4];
  m.ldsm_a(a, a_base, L.lda, kt);
#pragma unroll
  for (int p = 0; p < NT / 2; ++p) {
    typename M::Reg b[4];
    m.ldsm_b(b, 4, L.w_off, L.ldw, nt0 + 2 * p, kt_w);
    m.mma(acc[2 * p], a, b[0], b[1]);
    m.mma(acc[2 * p + 1], a, b[2], b[3]);
  }
  if constexpr (NT % 2 == 1) {
    typename M::Reg b[4];
    m.ldsm_b(b, 2, L.w_off, L.ldw, nt0 + NT - 1, kt_w);
    m.mma(acc[NT - 1], a, b[0], b[1]);
  }
}

// k-steps part, part + split, ... of a chunk, alternating between the two accumulator sets.
template <int NT, class M>
RNNFAST_HD void mma_ksteps(M& m, const Tile& L, int a_base, int steps, int kt0, int part, int nt0,
                           typename M::Acc (&acc)[2][kTilesPerJob]) {
  int kt = part;
  for (; kt + L.split < steps; kt += 2 * L.split) {
    mma_kstep<NT>(m, L, a_base, kt, kt0 + kt, nt0, acc[0]);
    mma_kstep<NT>(m, L, a_base, kt + L.split, kt0 + kt + L.split, nt0, acc[1]);
  }
  if (kt < steps) mma_kstep<NT>(m, L, a_base, kt, kt0 + kt, nt0, acc[0]);
}

// Warp `warp`'s share of one staged chunk (buffer at byte offset a_base, klen valid columns rounded up to a
// k-step, the chunk starting at k-step kt0 of the slice).
template <class M>
RNNFAST_HD void mma_chunk(M& m, const Tile& L, int warp, int a_base, int klen, int kt0,
                          typename M::Acc (&acc)[2][kTilesPerJob]) {
  const int part = job_part(L, warp);
  if (part >= L.split) return;
  const int nt0 = job_group(L, warp) * kTilesPerJob;
  const int steps = (klen + k_step(L.mode) - 1) / k_step(L.mode);
  switch (min_i(kTilesPerJob, L.np / 8 - nt0)) {
    case 1:
      return mma_ksteps<1>(m, L, a_base, steps, kt0, part, nt0, acc);
    case 2:
      return mma_ksteps<2>(m, L, a_base, steps, kt0, part, nt0, acc);
    case 3:
      return mma_ksteps<3>(m, L, a_base, steps, kt0, part, nt0, acc);
    default:
      return mma_ksteps<4>(m, L, a_base, steps, kt0, part, nt0, acc);
  }
}

// Warp `warp`'s partial sums into C (the two accumulator sets added), then zeroed for the next row block.
template <class M>
RNNFAST_HD void mma_flush(M& m, const Tile& L, int warp, float* Cs, typename M::Acc (&acc)[2][kTilesPerJob]) {
  const int part = job_part(L, warp);
  if (part >= L.split) return;
  const int nt0 = job_group(L, warp) * kTilesPerJob;
  const int ntc = min_i(kTilesPerJob, L.np / 8 - nt0);
#pragma unroll
  for (int j = 0; j < kTilesPerJob; ++j)
    if (j < ntc) m.store_acc(Cs, L, part, (nt0 + j) * 8, acc[0][j], acc[1][j]);
#pragma unroll
  for (int j = 0; j < kTilesPerJob; ++j) m.zero(acc[0][j]), m.zero(acc[1][j]);
}

// Thread tid's 4x4 tile (row tile tid % 4, column tile (tid % np) / 4) and reduction part tid / np.
RNNFAST_HD void ffma_chunk(const Tile& L, int tid, const unsigned char* smem, int a_base, int klen, int k0,
                           float (&acc)[4][4]) {
  const int tile = tid % L.np, part = tid / L.np;
  if (part >= L.split) return;
  const int r0 = (tile & 3) * 4, n0 = (tile >> 2) * 4;
  const unsigned char* A = smem + a_base + r0 * L.lda;
  const unsigned char* W = smem + L.w_off + n0 * L.ldw + static_cast<int64_t>(k0) * 4;
  for (int k = part * 4; k < klen; k += L.split * 4) {
    float4 a[4], w[4];
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      a[i] = *reinterpret_cast<const float4*>(A + i * L.lda + k * 4);
      w[i] = *reinterpret_cast<const float4*>(W + i * L.ldw + k * 4);
    }
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        acc[i][j] = fmaf(a[i].x, w[j].x, acc[i][j]);
        acc[i][j] = fmaf(a[i].y, w[j].y, acc[i][j]);
        acc[i][j] = fmaf(a[i].z, w[j].z, acc[i][j]);
        acc[i][j] = fmaf(a[i].w, w[j].w, acc[i][j]);
      }
  }
}

RNNFAST_HD void ffma_flush(const Tile& L, int tid, float* Cs, float (&acc)[4][4]) {
  const int tile = tid % L.np, part = tid / L.np;
  if (part >= L.split) return;
  const int r0 = (tile & 3) * 4, n0 = (tile >> 2) * 4;
#pragma unroll
  for (int i = 0; i < 4; ++i)
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      Cs[c_index(L, part, r0 + i, n0 + j)] = acc[i][j];
      acc[i][j] = 0.0f;
    }
}

// Sum of the partial products at (row, column).
RNNFAST_HD float c_sum(const Tile& L, const float* Cs, int row, int col) {
  float v = 0.0f;
  for (int part = 0; part < L.split; ++part) v += Cs[c_index(L, part, row, col)];
  return v;
}

}  // namespace rnnfast
