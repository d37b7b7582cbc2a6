// Persistent backward: the whole backward time loop of one layer/direction in one cooperative launch.
//
// CTA c owns hidden units [c·U, c·U + U) and keeps columns u0..u0+U-1 of W_hh (all G·H rows) in shared
// memory. Per step (reverse processing order): the cells of its units write dgi[t] and dgh[t] (the gate
// gradients, published in the data dtype: the MMA's operand and the input of dW_hh), it arrives at the grid
// barrier, fetches the next step's cell inputs and waits; then it multiplies dgh[t] (all G·H columns,
// staged through L2 in K-chunks) by its columns: dh_{t-1}[:, own] = carry + dgh[t]·W_hh[:, own]. See
// phases.cuh (Bwd) for the program and its one-barrier-per-step argument.
//
// Dimensions: T time, B batch, H hidden, G gates, U units per CTA.
#include "persistent.cuh"

namespace rnnfast {
namespace {

template <typename E, int CELL, int MODE>
__global__ void __launch_bounds__(kThreads, 1)
    bwd_persistent_kernel(BwdArgs<E> a, Tile L, int U, unsigned ctas, unsigned* barrier) {
  using P = Bwd<E, CELL, MODE>;
  extern __shared__ __align__(128) unsigned char smem[];
  DeviceCta<MODE, E> r{smem, barrier, static_cast<int>(threadIdx.x)};
  r.init();
  const Own o = own_units(a.H, U, static_cast<int>(blockIdx.x));
  P::prologue(r, a, L, o, smem);
  for (int s = 0; s < a.T; ++s) {
    P::pre(r, a, L, o, smem, s);
    r.wait(phase_target(s, ctas));  // phase s: all of dgh[t] published
    P::post(r, a, L, o, smem, s);
  }
  P::finish(r, a, o);
}

}  // namespace

int plan_bwd(int cell, int dtype, int mode, int B, int H, int device, rnnfast_plan* p) {
  RNNFAST_DISPATCH_DTYPE(dtype, E, {
    RNNFAST_DISPATCH_CELL(cell, CELL, {
      return dispatch_mode<E>(mode, [&](auto m) {
        constexpr int MODE = decltype(m)::value;
        return plan_persistent<E, CELL, MODE>(bwd_persistent_kernel<E, CELL, MODE>, true, B, H, device, p);
      });
    })
  })
}

}  // namespace rnnfast

using namespace rnnfast;

extern "C" int rnnfast_bwd_persistent(int cell, int dtype, int T, int B, int H, int reverse, const void* grad_y,
                                      const void* grad_hn, const void* grad_cn, const void* h0, const void* c0,
                                      const void* w_hh, const int64_t* lengths, const void* y, const float* ws,
                                      void* dgi, void* dgh, void* dh0, void* dc0, void* work, unsigned* barrier,
                                      const rnnfast_plan* plan, rnnfast_stream stream) {
  if (plan == nullptr || barrier == nullptr) return static_cast<int>(cudaErrorInvalidValue);
  if (T == 0 || B == 0 || H == 0) return 0;
  if ((static_cast<int64_t>(T) + 1) * plan->ctas >= (int64_t{1} << 31)) return static_cast<int>(cudaErrorInvalidValue);
  RNNFAST_DISPATCH_DTYPE(dtype, E, {
    BwdArgs<E> a{};
    a.T = T, a.B = B, a.H = H, a.reverse = reverse;
    a.grad_y = static_cast<const E*>(grad_y), a.grad_hn = static_cast<const E*>(grad_hn);
    a.grad_cn = static_cast<const E*>(grad_cn), a.h0 = static_cast<const E*>(h0);
    a.c0 = static_cast<const E*>(c0), a.w = static_cast<const E*>(w_hh), a.lengths = lengths;
    a.y = static_cast<const E*>(y), a.ws = ws, a.dgi = static_cast<E*>(dgi), a.dgh = static_cast<E*>(dgh);
    a.dh0 = static_cast<E*>(dh0), a.dc0 = static_cast<E*>(dc0);
    const int64_t BH = static_cast<int64_t>(B) * H;
    a.dh = static_cast<float*>(work), a.carry = a.dh + BH, a.dc = a.dh + 2 * BH;
    RNNFAST_DISPATCH_CELL(cell, CELL, {
      a.dgh_ld = rnnfast_row(Cell<CELL>::G * H, dtype);
      return dispatch_mode<E>(plan->mode, [&](auto m) {
        constexpr int MODE = decltype(m)::value;
        Tile L{};
        if (!planned_tile<E, CELL, MODE>(plan, true, B, H, &L)) return static_cast<int>(cudaErrorInvalidValue);
        return launch_cooperative(bwd_persistent_kernel<E, CELL, MODE>, plan->ctas, L.bytes, stream, a, L,
                                  plan->units, static_cast<unsigned>(plan->ctas), barrier);
      });
    })
  })
}
