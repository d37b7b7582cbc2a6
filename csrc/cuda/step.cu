// Stepwise algorithm: per time step the caller runs one GEMM (gh = h·W_hhᵀ forward, dh = carry + dgh·W_hh
// backward, cuBLAS through ATen on tensor cores in the data dtype with float32 accumulation) and one of these
// fused pointwise kernels, which applies the cell, writes y / ws and the next GEMM's operand h (forward) or
// dgi / dgh (backward) and updates the float32 state in place. Used where the persistent kernels do not fit
// or the cost model prefers it. No allocation, no host sync: CUDA-graph friendly.
//
// Dimensions: T time, B batch, H hidden, G gates, S saved per unit. One thread per (b, j) of (B, H).
#include "phases.cuh"

namespace rnnfast {
namespace {

constexpr int kStepThreads = 256;

template <typename E, int CELL>
__global__ void __launch_bounds__(kStepThreads) fwd_step_kernel(FwdArgs<E> a, int t) {
  const int64_t idx = static_cast<int64_t>(blockIdx.x) * kStepThreads + threadIdx.x;
  if (idx < static_cast<int64_t>(a.B) * a.H) fwd_step_thread<E, CELL>(a, t, idx);
}

template <typename E, int CELL>
__global__ void __launch_bounds__(kStepThreads) bwd_step_kernel(BwdArgs<E> a, int t) {
  const int64_t idx = static_cast<int64_t>(blockIdx.x) * kStepThreads + threadIdx.x;
  if (idx < static_cast<int64_t>(a.B) * a.H) bwd_step_thread<E, CELL>(a, t, idx);
}

unsigned step_blocks(int B, int H) {
  return static_cast<unsigned>((static_cast<int64_t>(B) * H + kStepThreads - 1) / kStepThreads);
}

}  // namespace
}  // namespace rnnfast

using namespace rnnfast;

extern "C" const char* rnnfast_cuda_error_string(int err) {
  return cudaGetErrorString(static_cast<cudaError_t>(err));
}

extern "C" int rnnfast_fwd_step(int cell, int dtype, int t, int T, int B, int H, const void* gi, const float* gh,
                                const void* b_hh, const int64_t* lengths, float* h, void* hp, float* c, void* y,
                                float* ws, rnnfast_stream stream) {
  if (B == 0 || H == 0) return 0;
  RNNFAST_DISPATCH_DTYPE(dtype, E, {
    FwdArgs<E> a{};
    a.T = T, a.B = B, a.H = H, a.reverse = 0;
    a.gi = static_cast<const E*>(gi), a.bias = static_cast<const E*>(b_hh), a.lengths = lengths;
    a.y = static_cast<E*>(y), a.ws = ws, a.h = h, a.c = c, a.gh = gh;
    a.hp = static_cast<E*>(hp), a.hp_ld = H;
    RNNFAST_DISPATCH_CELL(cell, CELL, {
      fwd_step_kernel<E, CELL><<<step_blocks(B, H), kStepThreads, 0, stream>>>(a, t);
      return static_cast<int>(cudaGetLastError());
    })
  })
}

extern "C" int rnnfast_bwd_step(int cell, int dtype, int t, int T, int B, int H, int reverse, const void* grad_y,
                                const void* h0,
                                const void* c0, const int64_t* lengths, const void* y, const float* ws,
                                const float* dh, float* dc, void* dgi, void* dgh, float* carry,
                                rnnfast_stream stream) {
  if (B == 0 || H == 0) return 0;
  RNNFAST_DISPATCH_DTYPE(dtype, E, {
    BwdArgs<E> a{};
    a.T = T, a.B = B, a.H = H, a.reverse = reverse;
    a.grad_y = static_cast<const E*>(grad_y), a.h0 = static_cast<const E*>(h0), a.c0 = static_cast<const E*>(c0);
    a.lengths = lengths, a.y = static_cast<const E*>(y), a.ws = ws;
    a.dgi = static_cast<E*>(dgi), a.dgh = static_cast<E*>(dgh);
    a.dh = const_cast<float*>(dh), a.carry = carry, a.dc = dc;
    RNNFAST_DISPATCH_CELL(cell, CELL, {
      a.dgh_ld = rnnfast_row(Cell<CELL>::G * H, dtype);
      bwd_step_kernel<E, CELL><<<step_blocks(B, H), kStepThreads, 0, stream>>>(a, t);
      return static_cast<int>(cudaGetLastError());
    })
  })
}
