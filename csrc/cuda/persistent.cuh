// Launch side of the persistent kernels (persistent_fwd.cu, persistent_bwd.cu): plan, one-time setup of a
// kernel on a device, cooperative launch, and the dispatch of runtime codes to template arguments.
//
// Co-residency: every CTA of a persistent kernel spins at the grid barrier until all the others arrive, so
// all of them must be resident at once. The cooperative launch attribute makes the driver check that
// (ctas <= SMs x CTAs per SM at this shared memory, else cudaErrorCooperativeLaunchTooLarge) and keep the
// grid co-resident; the plan refuses a grid that fails the same check, so such a call goes stepwise.
#pragma once

#include <array>
#include <map>
#include <mutex>
#include <set>
#include <type_traits>
#include <utility>

#include "device.cuh"
#include "phases.cuh"

namespace rnnfast {

// CUDA API calls that do not enqueue work (device attributes, function attributes, occupancy) but may count
// as unsafe during stream capture in the default (global) mode run under this guard: relaxed mode for this thread, as
// torch's allocator does for its cudaMalloc, so a first call inside graph capture is legal.
struct RelaxedCapture {
  cudaStreamCaptureMode mode = cudaStreamCaptureModeRelaxed;
  RelaxedCapture() { cudaThreadExchangeStreamCaptureMode(&mode); }
  ~RelaxedCapture() { cudaThreadExchangeStreamCaptureMode(&mode); }
};

// Raise the kernel's dynamic shared-memory limit to the device maximum, once per (kernel, device).
inline int setup_kernel(const void* kernel, int device, int optin) {
  static std::mutex mutex;
  static std::set<std::pair<const void*, int>> done;
  std::lock_guard<std::mutex> lock(mutex);
  if (done.count({kernel, device})) return 0;
  const cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, optin);
  if (err == cudaSuccess) done.insert({kernel, device});
  return static_cast<int>(err);
}

template <typename E, int CELL, int MODE, typename Kernel>
int plan_persistent(Kernel kernel, bool backward, int B, int H, int device, rnnfast_plan* p) {
  *p = rnnfast_plan{};
  RelaxedCapture relaxed;
  int sms = 0, optin = 0, current = 0;
  cudaError_t err = cudaGetDevice(&current);
  if (err == cudaSuccess && current != device) err = cudaErrorInvalidDevice;  // the caller makes it current
  if (err == cudaSuccess) err = cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device);
  if (err == cudaSuccess) err = cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device);
  if (err != cudaSuccess) return static_cast<int>(err);
  if (H <= 0 || B <= 0 || sms <= 0) return 0;
  const int U = units_per_cta(H, sms), ctas = (H + U - 1) / U;
  const Tile L = persistent_tile<E, CELL, MODE>(backward, B, H, U, optin);
  if (L.bytes > optin) return 0;
  int per_sm = 0;
  const int e = setup_kernel(reinterpret_cast<const void*>(kernel), device, optin);
  if (e) return e;
  err = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, kThreads, L.bytes);
  if (err != cudaSuccess) return static_cast<int>(err);
  if (per_sm * sms < ctas) return 0;
  p->ok = 1, p->ctas = ctas, p->units = U, p->mode = MODE, p->k_chunk = L.kc, p->k_chunks = L.nkc;
  p->split = L.split, p->prefetch = L.pf != 0, p->smem_bytes = L.bytes;
  return 0;
}

// The plan's tile again (make_tile is deterministic: with optin = the planned bytes it picks the same
// chunks and prefetch buffer); false if the plan does not match this call.
template <typename E, int CELL, int MODE>
bool planned_tile(const rnnfast_plan* p, bool backward, int B, int H, Tile* L) {
  if (p == nullptr || !p->ok || p->mode != MODE || p->units * p->ctas < H) return false;
  *L = persistent_tile<E, CELL, MODE>(backward, B, H, p->units, p->smem_bytes);
  return L->bytes == p->smem_bytes;
}

// Cooperative launch (all CTAs co-resident, which the grid barrier needs), also valid under stream capture.
template <typename Kernel, typename... Args>
int launch_cooperative(Kernel kernel, int ctas, int smem, rnnfast_stream stream, Args... args) {
  cudaLaunchConfig_t cfg{};
  cfg.gridDim = dim3(static_cast<unsigned>(ctas));
  cfg.blockDim = dim3(kThreads);
  cfg.dynamicSmemBytes = static_cast<size_t>(smem);
  cfg.stream = stream;
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeCooperative;
  attr[0].val.cooperative = 1;
  cfg.attrs = attr;
  cfg.numAttrs = 1;
  return static_cast<int>(cudaLaunchKernelEx(&cfg, kernel, args...));
}

// Call f(std::integral_constant<int, MODE>) for a multiply mode valid for element type E (float: TF32 or
// FFMA; half types: MMA16), so that only valid (E, MODE) kernels are instantiated; else an invalid-value error.
template <typename E, class F>
int dispatch_mode(int mode, F&& f) {
  if constexpr (std::is_same<E, float>::value) {
    if (mode == RNNFAST_TF32) return f(std::integral_constant<int, RNNFAST_TF32>{});
    if (mode == RNNFAST_FFMA) return f(std::integral_constant<int, RNNFAST_FFMA>{});
  } else {
    if (mode == RNNFAST_MMA16) return f(std::integral_constant<int, RNNFAST_MMA16>{});
  }
  return static_cast<int>(cudaErrorInvalidValue);
}

}  // namespace rnnfast
