// Persistent forward: the whole time loop of one layer/direction in one cooperative launch.
//
// CTA c owns hidden units [c·U, c·U + U) and keeps their G·U rows of W_hh in shared memory for all T
// steps. Per step it multiplies h_{t-1}, published by the owners in the MMA's dtype and staged through L2 in
// 16-byte cp.async pieces, by its slice on tensor cores (ldmatrix + mma.sync; float32: TF32 or exact FMA),
// applies the cell to its units, publishes its part of h_t, arrives at the grid barrier, fetches the next
// step's gi and waits. See phases.cuh (Fwd) for the program and its one-barrier-per-step argument.
//
// Dimensions: T time, B batch, H hidden, G gates, U units per CTA.
#include "persistent.cuh"

namespace rnnfast {
namespace {

template <typename E, int CELL, int MODE>
__global__ void __launch_bounds__(kThreads, 1)
    fwd_persistent_kernel(FwdArgs<E> a, Tile L, int U, unsigned ctas, unsigned* barrier) {
  using P = Fwd<E, CELL, MODE>;
  extern __shared__ __align__(128) unsigned char smem[];
  DeviceCta<MODE, E> r{smem, barrier, static_cast<int>(threadIdx.x)};
  r.init();
  const Own o = own_units(a.H, U, static_cast<int>(blockIdx.x));
  P::prologue(r, a, L, o, smem);
  for (int s = 0; s < a.T; ++s) {
    r.wait(phase_target(s, ctas));  // phase s: all of h_s published
    P::step(r, a, L, o, smem, s);
  }
  P::finish(r, a, o);
}

}  // namespace

int plan_fwd(int cell, int dtype, int mode, int B, int H, int device, rnnfast_plan* p) {
  RNNFAST_DISPATCH_DTYPE(dtype, E, {
    RNNFAST_DISPATCH_CELL(cell, CELL, {
      return dispatch_mode<E>(mode, [&](auto m) {
        constexpr int MODE = decltype(m)::value;
        return plan_persistent<E, CELL, MODE>(fwd_persistent_kernel<E, CELL, MODE>, false, B, H, device, p);
      });
    })
  })
}

int plan_bwd(int cell, int dtype, int mode, int B, int H, int device, rnnfast_plan* p);

}  // namespace rnnfast

using namespace rnnfast;

namespace {
size_t align256(size_t x) { return (x + 255) / 256 * 256; }
}  // namespace

extern "C" size_t rnnfast_fwd_workspace_bytes(int dtype, int B, int H) {
  return align256(2 * sizeof(float) * B * H) + 2 * static_cast<size_t>(B) * rnnfast_row(H, dtype) * rnnfast_dtype_bytes(dtype);
}

extern "C" size_t rnnfast_bwd_workspace_bytes(int, int B, int H) { return 3 * sizeof(float) * B * H; }

extern "C" int rnnfast_fwd_persistent(int cell, int dtype, int T, int B, int H, int reverse, const void* gi,
                                      const void* h0, const void* c0, const void* w_hh, const void* b_hh,
                                      const int64_t* lengths, void* y, void* h_n, void* c_n, float* ws, void* work,
                                      unsigned* barrier, const rnnfast_plan* plan, rnnfast_stream stream) {
  if (plan == nullptr || barrier == nullptr) return static_cast<int>(cudaErrorInvalidValue);
  if (T == 0 || B == 0 || H == 0) return 0;
  // The barrier counter reaches (T + 1)·ctas and is compared as a signed difference.
  if ((static_cast<int64_t>(T) + 1) * plan->ctas >= (int64_t{1} << 31)) return static_cast<int>(cudaErrorInvalidValue);
  RNNFAST_DISPATCH_DTYPE(dtype, E, {
    FwdArgs<E> a{};
    a.T = T, a.B = B, a.H = H, a.reverse = reverse;
    a.gi = static_cast<const E*>(gi), a.h0 = static_cast<const E*>(h0), a.c0 = static_cast<const E*>(c0);
    a.w = static_cast<const E*>(w_hh), a.bias = static_cast<const E*>(b_hh), a.lengths = lengths;
    a.y = static_cast<E*>(y), a.hn = static_cast<E*>(h_n), a.cn = static_cast<E*>(c_n), a.ws = ws;
    const int64_t BH = static_cast<int64_t>(B) * H;
    a.h = static_cast<float*>(work), a.c = a.h + BH;
    a.hp = reinterpret_cast<E*>(static_cast<unsigned char*>(work) + align256(2 * sizeof(float) * BH));
    a.hp_ld = rnnfast_row(H, dtype);
    RNNFAST_DISPATCH_CELL(cell, CELL, {
      return dispatch_mode<E>(plan->mode, [&](auto m) {
        constexpr int MODE = decltype(m)::value;
        Tile L{};
        if (!planned_tile<E, CELL, MODE>(plan, false, B, H, &L)) return static_cast<int>(cudaErrorInvalidValue);
        return launch_cooperative(fwd_persistent_kernel<E, CELL, MODE>, plan->ctas, L.bytes, stream, a, L,
                                  plan->units, static_cast<unsigned>(plan->ctas), barrier);
      });
    })
  })
}

// Plans are cached per arguments: after the first call no CUDA API is called but the launch, which keeps
// calls inside CUDA graph capture to the launch alone.
extern "C" int rnnfast_persistent_plan(int cell, int dtype, int mode, int B, int H, int backward, int device,
                                       rnnfast_plan* plan) {
  if (plan == nullptr) return static_cast<int>(cudaErrorInvalidValue);
  static std::mutex mutex;
  static std::map<std::array<int, 7>, rnnfast_plan> cache;
  const std::array<int, 7> key{cell, dtype, mode, B, H, backward, device};
  std::lock_guard<std::mutex> lock(mutex);
  const auto hit = cache.find(key);
  if (hit != cache.end()) {
    *plan = hit->second;
    return 0;
  }
  const int err = backward ? plan_bwd(cell, dtype, mode, B, H, device, plan)
                           : plan_fwd(cell, dtype, mode, B, H, device, plan);
  if (err == 0) cache.emplace(key, *plan);
  return err;
}
