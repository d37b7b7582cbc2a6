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
#include <array>
#include <map>
#include <mutex>

#include "phases.cuh"

namespace rnnfast {
namespace {

template <typename E, int CELL>
__global__ void __launch_bounds__(kThreads, 1) fwd_persistent_kernel(FwdArgs<E> a, Tile L, int U) {
  using P = FwdPhases<E, CELL>;
  extern __shared__ __align__(128) unsigned char smem[];
  E* Ws = reinterpret_cast<E*>(smem + L.w_off);
  E* As = reinterpret_cast<E*>(smem + L.a_off);
  float* Cs = reinterpret_cast<float*>(smem + L.c_off);
  cooperative_groups::grid_group grid = cooperative_groups::this_grid();
  const int tid = threadIdx.x, cta = blockIdx.x;

  P::load_weights(a, L, U, cta, tid, Ws);
  P::init_state(a, U, cta, tid);
  grid.sync();
  for (int s = 0; s < a.T; ++s) {
    for (int b0 = 0; b0 < a.B; b0 += L.bc) {
      P::stage(a, L, s, b0, tid, As);
      __syncthreads();
      chunk_gemm<E>(L, tid, min(L.bc, a.B - b0), As, Ws, Cs);
      __syncthreads();
      P::cells(a, L, U, cta, s, b0, tid, Cs);
      __syncthreads();  // the next chunk overwrites As and Cs
    }
    grid.sync();
  }
  P::finish(a, U, cta, tid);
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

// Plans are cached per (cell, dtype, B, H, direction, device): after the first call no CUDA API is called,
// which keeps a call inside CUDA graph capture free of anything but the launch.
extern "C" int rnnfast_persistent_plan(int cell, int dtype, int B, int H, int backward, int device,
                                       rnnfast_plan* plan) {
  if (plan == nullptr) return static_cast<int>(cudaErrorInvalidValue);
  static std::mutex mutex;
  static std::map<std::array<int, 6>, rnnfast_plan> cache;
  const std::array<int, 6> key{cell, dtype, B, H, backward, device};
  std::lock_guard<std::mutex> lock(mutex);
  const auto hit = cache.find(key);
  if (hit != cache.end()) {
    *plan = hit->second;
    return 0;
  }
  const int err = backward ? plan_bwd(cell, dtype, B, H, device, plan) : plan_fwd(cell, dtype, B, H, device, plan);
  if (err == 0) cache.emplace(key, *plan);
  return err;
}
