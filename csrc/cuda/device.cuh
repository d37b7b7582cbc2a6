// The GPU side of a persistent CTA: what phases.cuh's programs call, one thread at a time, as inline PTX.
//
// - ldmatrix / mma.sync for the tile GEMM (gemm.cuh's machine interface, one lane's registers);
// - cp.async.cg (L2 only, never a stale L1 line) with zero fill for staging data other CTAs wrote;
// - a split grid barrier on a counter: arrive = CTA barrier, then one thread's release-add; wait = one
//   thread's acquire-load spin until every CTA has arrived, then a CTA barrier. Between the two the CTA
//   fetches read-only inputs of the next step, so that their latency hides behind the barrier. The
//   counter only grows (phase p waits for (p + 1)·ctas arrivals), so it needs no reset inside a launch;
//   the caller zeroes it before each launch.
// Only valid in a cooperative launch: every CTA must be resident while another spins.
#pragma once

#include "gemm.cuh"

namespace rnnfast {

__device__ __forceinline__ uint32_t smem_addr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

__device__ __forceinline__ uint32_t tf32_bits(float v) {
  uint32_t r;
  asm("cvt.rna.tf32.f32 %0, %1;" : "=r"(r) : "f"(v));
  return r;
}

// One lane's view of the warp-level MMA operations (gemm.cuh).
template <int MODE, typename E>
struct LaneMma {
  using Reg = uint32_t;
  using Acc = float[4];
  const unsigned char* smem;
  int lane;

  __device__ __forceinline__ void ldsm(Reg* r, int n, const unsigned char* p) const {
    const uint32_t addr = smem_addr(p);
    if (n == 4)
      asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];"
                   : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                   : "r"(addr));
    else
      asm volatile("ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%0, %1}, [%2];" : "=r"(r[0]), "=r"(r[1]) : "r"(addr));
  }
  __device__ __forceinline__ void ldsm_a(Reg (&r)[4], int base, int lda, int kt) const {
    ldsm(r, 4, smem + base + a_lane_offset(lda, kt, lane));
    if (MODE == RNNFAST_TF32) {
#pragma unroll
      for (int i = 0; i < 4; ++i) r[i] = tf32_bits(__uint_as_float(r[i]));  // Ws was rounded when loaded
    }
  }
  __device__ __forceinline__ void ldsm_b(Reg (&r)[4], int n, int base, int ldw, int nt, int kt) const {
    ldsm(r, n, smem + base + b_lane_offset(ldw, nt, kt, lane));
  }
  __device__ __forceinline__ void mma(Acc& c, const Reg (&a)[4], Reg b0, Reg b1) const {
    if constexpr (MODE == RNNFAST_TF32) {
      asm volatile(
          "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
          "{%0, %1, %2, %3};"
          : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
          : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
    } else if constexpr (std::is_same<E, __nv_bfloat16>::value) {
      asm volatile(
          "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
          "{%0, %1, %2, %3};"
          : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
          : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
    } else {
      asm volatile(
          "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
          "{%0, %1, %2, %3};"
          : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
          : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
    }
  }
  __device__ __forceinline__ void store_acc(float* Cs, const Tile& L, int part, int col0, const Acc& x,
                                            const Acc& y) const {
#pragma unroll
    for (int i = 0; i < 4; ++i) Cs[c_index(L, part, c_row(lane, i), col0 + c_col(lane, i))] = x[i] + y[i];
  }
  __device__ __forceinline__ void zero(Acc& c) const { c[0] = c[1] = c[2] = c[3] = 0.0f; }
};

// Thread tid of a persistent CTA (phases.cuh's runtime interface).
template <int MODE, typename E>
struct DeviceCta {
  unsigned char* smem;
  unsigned* barrier;
  int tid;
  float acc[2][kTilesPerJob][4];  // tensor-core accumulators of this lane's warp job
  float facc[4][4];               // FMA path: this thread's 4x4 tile

  __device__ __forceinline__ void init() {
#pragma unroll
    for (int s = 0; s < 2; ++s)
#pragma unroll
      for (int j = 0; j < kTilesPerJob; ++j)
#pragma unroll
        for (int i = 0; i < 4; ++i) acc[s][j][i] = 0.0f;
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
      for (int j = 0; j < 4; ++j) facc[i][j] = 0.0f;
  }

  template <class F>
  __device__ __forceinline__ void each(F&& f) {
    f(tid);
  }
  __device__ __forceinline__ void sync() { __syncthreads(); }

  // cp.async of 16 bytes, of which the first `bytes` come from src and the rest are zero.
  __device__ __forceinline__ void copy16(int dst, const unsigned char* src, int bytes) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(smem_addr(smem + dst)), "l"(src), "r"(bytes)
                 : "memory");
  }
  __device__ __forceinline__ void commit() { asm volatile("cp.async.commit_group;" ::: "memory"); }
  // Wait until at most `pending` (0 or 1) of this thread's groups are still in flight.
  __device__ __forceinline__ void wait_copies(int pending) {
    if (pending)
      asm volatile("cp.async.wait_group 1;" ::: "memory");
    else
      asm volatile("cp.async.wait_group 0;" ::: "memory");
  }

  __device__ __forceinline__ void gemm_chunk(const Tile& L, int a_base, int klen, int kt0) {
    if constexpr (MODE == RNNFAST_FFMA) {
      ffma_chunk(L, tid, smem, a_base, klen, kt0 * k_step(MODE), facc);
    } else {
      LaneMma<MODE, E> m{smem, tid & 31};
      mma_chunk(m, L, tid >> 5, a_base, klen, kt0, acc);
    }
  }
  __device__ __forceinline__ void gemm_flush(const Tile& L) {
    float* Cs = reinterpret_cast<float*>(smem + L.c_off);
    if constexpr (MODE == RNNFAST_FFMA) {
      ffma_flush(L, tid, Cs, facc);
    } else {
      LaneMma<MODE, E> m{smem, tid & 31};
      mma_flush(m, L, tid >> 5, Cs, acc);
    }
  }

  __device__ __forceinline__ void arrive() {
    __syncthreads();
    if (tid == 0) asm volatile("red.release.gpu.global.add.u32 [%0], 1;" ::"l"(barrier) : "memory");
  }
  __device__ __forceinline__ void wait(unsigned target) {
    if (tid == 0) {
      unsigned seen;
      do {
        asm volatile("ld.acquire.gpu.global.u32 %0, [%1];" : "=r"(seen) : "l"(barrier) : "memory");
      } while (static_cast<int>(seen - target) < 0);
    }
    __syncthreads();
  }
};

}  // namespace rnnfast
