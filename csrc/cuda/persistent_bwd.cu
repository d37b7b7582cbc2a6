// Persistent backward: the whole backward time loop of one layer/direction in one cooperative launch.
//
// CTA c owns hidden units [c·U, c·U + U) and keeps columns u0..u0+U-1 of W_hh (all G·H rows) in shared
// memory. Per step t (reverse processing order), two phases and one grid barrier:
//   A (own units, all b): dh_t = dh + grad_y[t]; the cell's backward writes dgi[t], dgh[t] (float32,
//     (B, G·H) in global memory) and carry = the part of dh_{t-1} that bypasses W_hh.
//   grid barrier: dgh[t] is complete.
//   B (own units, all b): dh_{t-1}[:, own] = carry + dgh[t] · W_hh[:, own]; stages dgh[t] (written by all
//     CTAs) chunk by chunk into shared memory.
// Phase B writes only the CTA's own units, which only the same CTA reads in the next phase A, so no second
// barrier is needed; phase A of the next step writes dgh[t'] (another t), which no CTA still reads.
//
// Dimensions: T time, B batch, H hidden, G gates, U units per CTA.
#include "phases.cuh"

namespace rnnfast {
namespace {

template <typename E, int CELL>
__global__ void __launch_bounds__(kThreads, 1) bwd_persistent_kernel(BwdArgs<E> a, Tile L, int U) {
  using P = BwdPhases<E, CELL>;
  extern __shared__ __align__(128) unsigned char smem[];
  E* Ws = reinterpret_cast<E*>(smem + L.w_off);
  E* As = reinterpret_cast<E*>(smem + L.a_off);
  float* Cs = reinterpret_cast<float*>(smem + L.c_off);
  cooperative_groups::grid_group grid = cooperative_groups::this_grid();
  const int tid = threadIdx.x, cta = blockIdx.x;

  P::load_weights(a, L, U, cta, tid, Ws);
  P::init_state(a, U, cta, tid);
  __syncthreads();
  for (int s = 0; s < a.T; ++s) {
    P::cells(a, U, cta, s, tid);
    grid.sync();  // dgh[t] complete
    for (int b0 = 0; b0 < a.B; b0 += L.bc) {
      P::stage(a, L, s, b0, tid, As);
      __syncthreads();
      chunk_gemm<E>(L, tid, min(L.bc, a.B - b0), As, Ws, Cs);
      __syncthreads();
      P::accumulate(a, L, U, cta, b0, tid, Cs);
      __syncthreads();  // the next chunk overwrites As and Cs; the next phase A reads dh
    }
  }
  P::finish(a, U, cta, tid);
}

}  // namespace

int plan_bwd(int cell, int dtype, int B, int H, int device, rnnfast_plan* p) {
  RNNFAST_DISPATCH_DTYPE(dtype, E, {
    RNNFAST_DISPATCH_CELL(cell, CELL, {
      return plan_persistent<E>(bwd_persistent_kernel<E, CELL>, 1, Cell<CELL>::G * H, true, B, H, device, p);
    })
  })
}

}  // namespace rnnfast

using namespace rnnfast;

extern "C" int rnnfast_bwd_persistent(int cell, int dtype, int T, int B, int H, int reverse, const void* grad_y,
                                      const void* grad_hn, const void* grad_cn, const void* h0, const void* c0,
                                      const void* w_hh, const int64_t* lengths, const void* y, const float* ws,
                                      void* dgi, float* dgh, void* dh0, void* dc0, float* work,
                                      const rnnfast_plan* plan, rnnfast_stream stream) {
  if (plan == nullptr || !plan->ok || plan->units * plan->ctas < H) return static_cast<int>(cudaErrorInvalidValue);
  if (T == 0 || B == 0 || H == 0) return 0;
  RNNFAST_DISPATCH_DTYPE(dtype, E, {
    BwdArgs<E> a{};
    a.T = T, a.B = B, a.H = H, a.reverse = reverse;
    a.grad_y = static_cast<const E*>(grad_y), a.grad_hn = static_cast<const E*>(grad_hn);
    a.grad_cn = static_cast<const E*>(grad_cn), a.h0 = static_cast<const E*>(h0);
    a.c0 = static_cast<const E*>(c0), a.w = static_cast<const E*>(w_hh), a.lengths = lengths;
    a.y = static_cast<const E*>(y), a.ws = ws, a.dgi = static_cast<E*>(dgi), a.dgh = dgh;
    a.dh0 = static_cast<E*>(dh0), a.dc0 = static_cast<E*>(dc0);
    const int64_t BH = static_cast<int64_t>(B) * H;
    a.dh = work, a.carry = work + BH, a.dc = work + 2 * BH;
    RNNFAST_DISPATCH_CELL(cell, CELL, {
      const Tile L = make_tile<E>(plan->units, Cell<CELL>::G * H, plan->batch_chunk);
      if (L.bytes != plan->smem_bytes) return static_cast<int>(cudaErrorInvalidValue);
      return launch_cooperative(bwd_persistent_kernel<E, CELL>, plan, L, a, stream);
    })
  })
}
