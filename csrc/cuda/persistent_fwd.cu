// Persistent forward: the whole time loop of one layer/direction in one cooperative launch.
//
// CTA c owns hidden units [c·U, c·U + U) and keeps their G·U rows of W_hh in shared memory for all T
// steps. Per step t (in processing order) and chunk of batch rows it stages h_{t-1} (B, H) float32 from
// global memory (L2), multiplies it by its slice (tensor cores for half/bfloat16, FMA for float32), applies
// the cell to its units, writes y[t], ws[t] and its part of h_t, then all CTAs meet at one grid barrier.
// h lives in a float32 ping-pong buffer (2, B, H): step s reads buffer s % 2 and writes the other, so the
// single barrier per step separates every read of a buffer from the next write to it. c (LSTM) is only
// touched by its owner and stays in one float32 buffer.
//
// Dimensions: T time, B batch, H hidden, G gates, U units per CTA.
#include "persistent.cuh"

namespace rnnfast {
namespace {

template <typename E, int CELL>
__global__ void __launch_bounds__(kThreads, 1) fwd_persistent_kernel(FwdArgs<E> a, Tile L, int U) {
  namespace cg = cooperative_groups;
  constexpr int G = Cell<CELL>::G;
  extern __shared__ __align__(128) unsigned char smem[];
  E* Ws = reinterpret_cast<E*>(smem + L.w_off);
  E* As = reinterpret_cast<E*>(smem + L.a_off);
  float* Cs = reinterpret_cast<float*>(smem + L.c_off);
  cg::grid_group grid = cg::this_grid();
  const int B = a.B, H = a.H, tid = threadIdx.x;
  const int u0 = blockIdx.x * U;
  const int nu = min(U, H - u0);  // the last CTA may own fewer units

  // Ws row r = g·U + u holds W_hh row g·H + u0 + u; rows and columns beyond the slice are zero.
  for (int idx = tid; idx < L.np * L.kp; idx += kThreads) {
    const int r = idx / L.kp, k = idx % L.kp, g = r / U, u = r % U;
    E v = from_f<E>(0.0f);
    if (g < G && u < nu && k < H) v = a.w[static_cast<int64_t>(g * H + u0 + u) * H + k];
    Ws[idx] = v;
  }
  float* h_even = a.h;                               // read at even steps
  float* h_odd = a.h + static_cast<int64_t>(B) * H;  // read at odd steps
  for (int idx = tid; idx < B * nu; idx += kThreads) {
    const int64_t bj = static_cast<int64_t>(idx / nu) * H + u0 + idx % nu;
    h_even[bj] = to_f(a.h0[bj]);
    if (CELL == RNNFAST_LSTM) a.c[bj] = to_f(a.c0[bj]);
  }
  grid.sync();

  for (int s = 0; s < a.T; ++s) {
    const int t = a.reverse ? a.T - 1 - s : s;
    const float* h_in = (s & 1) ? h_odd : h_even;
    float* h_out = (s & 1) ? h_even : h_odd;
    for (int b0 = 0; b0 < B; b0 += L.bc) {
      const int rows = min(L.bc, B - b0);
      stage_rows<E>(L, As, h_in + static_cast<int64_t>(b0) * H, rows, H);
      __syncthreads();
      chunk_gemm(L, rows, As, Ws, Cs);
      __syncthreads();
      for (int idx = tid; idx < rows * nu; idx += kThreads) {
        const int m = idx / nu, u = idx % nu;
        float pre_h[G];
#pragma unroll
        for (int g = 0; g < G; ++g) pre_h[g] = chunk_sum(L, Cs, m, g * U + u);
        const int64_t bj = static_cast<int64_t>(b0 + m) * H + u0 + u;
        h_out[bj] = fwd_unit<E, CELL>(a, t, b0 + m, u0 + u, pre_h, __ldcg(h_in + bj));
      }
      __syncthreads();  // the next chunk overwrites As and Cs
    }
    grid.sync();
  }

  const float* h_last = (a.T & 1) ? h_odd : h_even;
  for (int idx = tid; idx < B * nu; idx += kThreads) {
    const int64_t bj = static_cast<int64_t>(idx / nu) * H + u0 + idx % nu;
    a.hn[bj] = from_f<E>(__ldcg(h_last + bj));
    if (CELL == RNNFAST_LSTM) a.cn[bj] = from_f<E>(a.c[bj]);
  }
}

}  // namespace

int plan_fwd(int cell, int dtype, int B, int H, int device, rnnfast_plan* p) {
  RNNFAST_DISPATCH_DTYPE(dtype, E, {
    RNNFAST_DISPATCH_CELL(cell, CELL, {
      return plan_persistent<E>(fwd_persistent_kernel<E, CELL>, Cell<CELL>::G, H, false, B, H, device, p);
    })
  })
}

}  // namespace rnnfast

using namespace rnnfast;

extern "C" int rnnfast_fwd_persistent(int cell, int dtype, int T, int B, int H, int reverse, const void* gi,
                                      const void* h0, const void* c0, const void* w_hh, const void* b_hh,
                                      const int64_t* lengths, void* y, void* h_n, void* c_n, float* ws,
                                      float* work, const rnnfast_plan* plan, rnnfast_stream stream) {
  if (plan == nullptr || !plan->ok || plan->units * plan->ctas < H) return static_cast<int>(cudaErrorInvalidValue);
  if (T == 0 || B == 0 || H == 0) return 0;
  RNNFAST_DISPATCH_DTYPE(dtype, E, {
    FwdArgs<E> a{};
    a.T = T, a.B = B, a.H = H, a.reverse = reverse;
    a.gi = static_cast<const E*>(gi), a.h0 = static_cast<const E*>(h0), a.c0 = static_cast<const E*>(c0);
    a.w = static_cast<const E*>(w_hh), a.bias = static_cast<const E*>(b_hh), a.lengths = lengths;
    a.y = static_cast<E*>(y), a.hn = static_cast<E*>(h_n), a.cn = static_cast<E*>(c_n), a.ws = ws;
    a.h = work, a.c = work + 2 * static_cast<int64_t>(B) * H;
    RNNFAST_DISPATCH_CELL(cell, CELL, {
      const Tile L = make_tile<E>(Cell<CELL>::G * plan->units, H, plan->batch_chunk);
      if (L.bytes != plan->smem_bytes) return static_cast<int>(cudaErrorInvalidValue);
      return launch_cooperative(fwd_persistent_kernel<E, CELL>, plan, L, a, stream);
    })
  })
}

extern "C" int rnnfast_persistent_plan(int cell, int dtype, int B, int H, int backward, int device,
                                       rnnfast_plan* plan) {
  if (plan == nullptr) return static_cast<int>(cudaErrorInvalidValue);
  return backward ? plan_bwd(cell, dtype, B, H, device, plan) : plan_fwd(cell, dtype, B, H, device, plan);
}
