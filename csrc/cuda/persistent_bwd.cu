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
#include "persistent.cuh"

namespace rnnfast {
namespace {

template <typename E, int CELL>
__global__ void __launch_bounds__(kThreads, 1) bwd_persistent_kernel(BwdArgs<E> a, Tile L, int U) {
  namespace cg = cooperative_groups;
  constexpr int G = Cell<CELL>::G;
  extern __shared__ __align__(128) unsigned char smem[];
  E* Ws = reinterpret_cast<E*>(smem + L.w_off);
  E* As = reinterpret_cast<E*>(smem + L.a_off);
  float* Cs = reinterpret_cast<float*>(smem + L.c_off);
  cg::grid_group grid = cg::this_grid();
  const int B = a.B, H = a.H, GH = G * a.H, tid = threadIdx.x;
  const int u0 = blockIdx.x * U;
  const int nu = min(U, H - u0);

  // Ws row u holds column u0 + u of W_hh: Ws[u][n] = W_hh[n][u0 + u]; zero beyond the slice.
  for (int idx = tid; idx < L.np * L.kp; idx += kThreads) {
    const int u = idx / L.kp, n = idx % L.kp;
    E v = from_f<E>(0.0f);
    if (u < nu && n < GH) v = a.w[static_cast<int64_t>(n) * H + u0 + u];
    Ws[idx] = v;
  }
  for (int idx = tid; idx < B * nu; idx += kThreads) {
    const int64_t bj = static_cast<int64_t>(idx / nu) * H + u0 + idx % nu;
    a.dh[bj] = to_f(a.grad_hn[bj]);
    if (CELL == RNNFAST_LSTM) a.dc[bj] = to_f(a.grad_cn[bj]);
  }
  __syncthreads();

  for (int s = 0; s < a.T; ++s) {
    const int t = a.reverse ? s : a.T - 1 - s;
    for (int idx = tid; idx < B * nu; idx += kThreads) {
      const int b = idx / nu, j = u0 + idx % nu;
      const int64_t bj = static_cast<int64_t>(b) * H + j;
      a.carry[bj] = bwd_unit<E, CELL>(a, t, b, j, a.dh[bj]);
    }
    grid.sync();
    const float* dgh_t = a.dgh + static_cast<int64_t>(t) * B * GH;
    for (int b0 = 0; b0 < B; b0 += L.bc) {
      const int rows = min(L.bc, B - b0);
      stage_rows<E>(L, As, dgh_t + static_cast<int64_t>(b0) * GH, rows, GH);
      __syncthreads();
      chunk_gemm(L, rows, As, Ws, Cs);
      __syncthreads();
      for (int idx = tid; idx < rows * nu; idx += kThreads) {
        const int m = idx / nu, u = idx % nu;
        const int64_t bj = static_cast<int64_t>(b0 + m) * H + u0 + u;
        a.dh[bj] = a.carry[bj] + chunk_sum(L, Cs, m, u);
      }
      __syncthreads();  // the next chunk overwrites As and Cs; the next phase A reads dh
    }
  }

  for (int idx = tid; idx < B * nu; idx += kThreads) {
    const int64_t bj = static_cast<int64_t>(idx / nu) * H + u0 + idx % nu;
    a.dh0[bj] = from_f<E>(a.dh[bj]);
    if (CELL == RNNFAST_LSTM) a.dc0[bj] = from_f<E>(a.dc[bj]);
  }
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
