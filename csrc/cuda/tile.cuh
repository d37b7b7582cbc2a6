// Geometry of a persistent CTA's shared memory and the index math of its tile GEMM, shared by the kernels,
// the host-side plan and the host emulator (which runs these very functions).
//
// Per CTA and step: C (16, n) += A (16, k) · Wsᵀ, where Ws (n, k) is the CTA's slice of W_hh, resident in
// shared memory for all T steps, and A holds 16 batch rows of the shared operand (h_{t-1} forward, dgh_t
// backward) staged from global memory in K-chunks of kc columns. Dimensions: n rows of the slice (forward
// G·U, backward U), k the reduction (forward H, backward G·H).
//
// Layout: every shared matrix is row-major with a row stride of (padded columns)·esz + 16 bytes, where the
// padded columns are a multiple of 32 bytes. The stride is then an odd multiple of 16 bytes, so the 8 rows
// an ldmatrix phase (or a quarter-warp's 16-byte loads) touches at one column fall into 8 different groups of
// 4 banks: conflict-free without a swizzle, and the 16-byte pieces stay contiguous for cp.async.
#pragma once

#include <climits>
#include <cstddef>
#include <cstdint>

#include "cells.cuh"

namespace rnnfast {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr int kRows = 16;         // batch rows per staged chunk (one MMA m-tile)
constexpr int kTilesPerJob = 4;   // n-tiles (8 columns each) one warp accumulates
constexpr int kSkew = 16;         // bytes added to every shared row

RNNFAST_HD int round_up(int x, int m) { return (x + m - 1) / m * m; }
RNNFAST_HD int min_i(int a, int b) { return a < b ? a : b; }

// Elements per MMA k-step: m16n8k16 for 16-bit types, m16n8k8 for TF32; the FMA path reads float4 pieces.
RNNFAST_HD int k_step(int mode) { return mode == RNNFAST_MMA16 ? 16 : 8; }

struct Tile {
  int mode, esz;
  int n, np;           // rows of the W slice / padded to 8 (one n-tile)
  int k, kp;           // reduction length / padded to 32 bytes
  int ldw;             // bytes per Ws row: kp·esz + kSkew
  int kc, lda, nkc;    // chunk columns (a multiple of 32 bytes), bytes per staged row, chunks per kp
  int nbuf;            // staging buffers: 2 when more than one chunk is staged per step (double buffering)
  int ngroups, split;  // MMA: warp jobs = ngroups column groups x split reduction parts; FMA: split parts
  int rows_pf, pf;     // prefetch buffer: entries (B·U) and bytes per entry; pf = 0 without a buffer
  int w_off, a_off, c_off, pf_off, bytes;
};

RNNFAST_HD size_t align128(size_t x) { return (x + 127) / 128 * 128; }

// The geometry for a slice of n rows and reduction k, nm·16 batch rows per step, prefetch entries of
// pf_entry bytes (0: none) for pf_rows positions, in at most `optin` bytes; bytes = INT_MAX if nothing fits.
// K-chunks halve until the staging fits; the prefetch buffer is added only if it still fits.
RNNFAST_HD Tile make_tile(int mode, int esz, int n, int k, int nm, int pf_rows, int pf_entry, int optin) {
  Tile L{};
  L.mode = mode, L.esz = esz, L.n = n, L.k = k;
  L.np = round_up(n, 8);
  const int kq = 32 / esz;
  L.kp = round_up(k, kq);
  L.ldw = L.kp * esz + kSkew;
  L.bytes = INT_MAX;
  if (mode == RNNFAST_FFMA) {
    // Threads own 4x4 output tiles: 4 row tiles x np/4 column tiles, the rest of the 256 split the reduction.
    if (L.np > kThreads) return L;
    L.ngroups = 1, L.split = kThreads / L.np;
  } else {
    const int ntiles = L.np / 8;
    L.ngroups = (ntiles + kTilesPerJob - 1) / kTilesPerJob;
    if (L.ngroups > kWarps) return L;
    L.split = kWarps / L.ngroups;
  }
  const size_t w_bytes = align128(static_cast<size_t>(L.np) * L.ldw);
  const size_t c_bytes = align128(static_cast<size_t>(L.split) * kRows * L.np * sizeof(float));
  for (int kc = L.kp;; kc = round_up((kc + 1) / 2, kq)) {
    const int nkc = (L.kp + kc - 1) / kc;
    const int nbuf = nm * nkc > 1 ? 2 : 1;
    const size_t lda = static_cast<size_t>(kc) * esz + kSkew;
    const size_t total = w_bytes + c_bytes + align128(nbuf * kRows * lda);
    if (total <= static_cast<size_t>(optin)) {
      L.kc = kc, L.lda = static_cast<int>(lda), L.nkc = nkc, L.nbuf = nbuf;
      L.w_off = 0;
      L.c_off = static_cast<int>(w_bytes);
      L.a_off = static_cast<int>(w_bytes + c_bytes);
      const size_t pf_bytes = align128(static_cast<size_t>(pf_rows) * pf_entry);
      const bool pf = pf_entry > 0 && total + pf_bytes <= static_cast<size_t>(optin);
      L.pf_off = static_cast<int>(total);
      L.rows_pf = pf ? pf_rows : 0, L.pf = pf ? pf_entry : 0;
      L.bytes = static_cast<int>(pf ? total + pf_bytes : total);
      return L;
    }
    if (kc <= kq) return L;
  }
}

// ---- ldmatrix / mma.sync fragment index math (PTX ISA, warp-level matrix fragments) ----------------------
// A k-step covers two 16-byte pieces of a row (16 halves or 8 floats). ldmatrix.x4 takes one row address per
// lane: lanes 8i..8i+7 give the 8 rows of matrix i, and matrix i lands in register i of every lane.

// A (16 rows x k-step kt of a staged chunk): matrices (rows 0-7, lo), (8-15, lo), (0-7, hi), (8-15, hi) are
// exactly the a0..a3 registers of m16n8k16 / m16n8k8 (row-major A).
RNNFAST_HD int a_lane_offset(int lda, int kt, int lane) { return (lane & 15) * lda + (2 * kt + (lane >> 4)) * 16; }

// B = Wsᵀ for n-tiles (nt, nt+1) at k-step kt: matrices (tile nt, lo), (nt, hi), (nt+1, lo), (nt+1, hi) are
// b0, b1 of tile nt and b0, b1 of tile nt+1 (Ws rows are B's columns: the "col" operand of mma). With .x2
// only lanes 0-15 count and the two registers are tile nt's.
RNNFAST_HD int b_lane_offset(int ldw, int nt, int kt, int lane) {
  return (nt * 8 + (lane & 7) + ((lane >> 4) << 3)) * ldw + (2 * kt + ((lane >> 3) & 1)) * 16;
}

// Accumulator register i (0..3) of a lane holds C at (row, column) within the 16x8 tile.
RNNFAST_HD int c_row(int lane, int i) { return (lane >> 2) + ((i >> 1) << 3); }
RNNFAST_HD int c_col(int lane, int i) { return ((lane & 3) << 1) + (i & 1); }

// Partial sums C[part][row][column], float.
RNNFAST_HD int c_index(const Tile& L, int part, int row, int col) { return (part * kRows + row) * L.np + col; }

// Warp w's job: column group and reduction part, or part >= split when the warp has no job.
RNNFAST_HD int job_group(const Tile& L, int warp) { return warp % L.ngroups; }
RNNFAST_HD int job_part(const Tile& L, int warp) { return warp / L.ngroups; }

// ---- staging: 16-byte pieces of a (16 rows x kc columns) chunk --------------------------------------------
// Thread tid copies pieces tid, tid + 256, ... of the chunk, walking (row, piece) without a division per
// piece. Piece q of row m is columns [k0 + q·per, +per) of source row b0 + m; its bytes beyond the valid
// reduction length `kvalid` or past the last batch row are zero-filled (cp.async's src-size), so no padding
// is ever read from global memory and the MMA sees zeros there.
template <class Copy>
RNNFAST_HD void stage_chunk(const Tile& L, int tid, int dst_off, const unsigned char* src, int64_t src_ld_bytes,
                            int rows, int k0, int kvalid, Copy&& copy) {
  const int per = 16 / L.esz;
  const int pieces = L.kc / per;  // per row
  int m = tid / pieces, q = tid - m * pieces;
  const int dm = kThreads / pieces, dq = kThreads - dm * pieces;
  while (m < kRows) {
    const int col = k0 + q * per;
    int bytes = (kvalid - col) * L.esz;
    bytes = m < rows ? (bytes < 0 ? 0 : (bytes > 16 ? 16 : bytes)) : 0;
    // A zero-byte copy still names a valid address: the chunk's first source row.
    const unsigned char* from = src + (bytes ? m * src_ld_bytes + static_cast<int64_t>(col) * L.esz : 0);
    copy(dst_off + m * L.lda + q * 16, from, bytes);
    m += dm, q += dq;
    if (q >= pieces) q -= pieces, ++m;
  }
}

}  // namespace rnnfast
