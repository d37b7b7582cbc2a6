// C ABI of the rnnfast CUDA recurrence kernels (csrc/cuda/*.cu).
//
// Plain C types only, so that the torch binding (bindings.cpp) compiles without any CUDA header and the
// kernels compile without any torch header. Every launcher returns the cudaError_t of its launch as an
// int (0 = cudaSuccess); rnnfast_cuda_error_string turns it into a message.
//
// Dimensions: T time, B batch, H hidden, G gates (rnn 1, gru 3, lstm 4), S saved activations per unit
// (rnn 0, gru 4, lstm 5). Layouts (row-major):
//   gi (T, B, G·H)  h0, c0, h_n, c_n (B, H)  w_hh (G·H, H)  b_hh (G·H)  lengths (B) int64
//   y (T, B, H)  ws (T, B, S·H) float32  dgi (T, B, G·H)
//   dgh (T, B, rnnfast_row(G·H, dtype)): the gate gradients in the data dtype, each row padded to a
//       multiple of 16 bytes (the padding is never written nor read)
// Data tensors have dtype `dtype` (RNNFAST_F32/F16/BF16); ws and the state buffers are float32.
// Optional pointers (c0, b_hh, lengths, ws; c_n, grad_cn, dc0 for non-LSTM cells) may be NULL.
#pragma once

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

struct CUstream_st;  // cudaStream_t is `struct CUstream_st*`; declared here so no CUDA header is needed
typedef struct CUstream_st* rnnfast_stream;

enum { RNNFAST_RNN_TANH = 0, RNNFAST_RNN_RELU = 1, RNNFAST_GRU = 2, RNNFAST_LSTM = 3 };  // common.CELL_CODE
enum { RNNFAST_F32 = 0, RNNFAST_F16 = 1, RNNFAST_BF16 = 2 };
// How a persistent kernel multiplies: tensor cores on float16/bfloat16 (m16n8k16), tensor cores on float32
// rounded to TF32 (m16n8k8), or exact float32 FMA. The first follows from the dtype; float32 takes TF32
// only when the caller allows it.
enum { RNNFAST_MMA16 = 0, RNNFAST_TF32 = 1, RNNFAST_FFMA = 2 };

static inline int rnnfast_dtype_bytes(int dtype) { return dtype == RNNFAST_F32 ? 4 : 2; }

// Elements per row of a buffer whose rows are copied in 16-byte pieces: n rounded up to 16 bytes.
static inline int rnnfast_row(int n, int dtype) {
  const int per = 16 / rnnfast_dtype_bytes(dtype);
  return (n + per - 1) / per * per;
}

// How a persistent kernel would be launched for (cell, dtype, mode, B, H, direction) on `device`; ok = 0
// when it cannot run there (the slices do not fit in shared memory, or the grid could not be co-resident).
typedef struct {
  int ok;            // 1 if the persistent kernel can run
  int ctas;          // grid size: one CTA per slice of `units` hidden units, all co-resident
  int units;         // hidden units per CTA (U)
  int mode;          // RNNFAST_MMA16 / RNNFAST_TF32 / RNNFAST_FFMA
  int k_chunk;       // columns of the shared operand staged at a time (the whole reduction if it fits)
  int k_chunks;      // chunks per 16 batch rows
  int split;         // partial sums per output (warps or threads splitting the reduction)
  int prefetch;      // 1 if the next step's cell inputs are fetched into shared memory before the barrier
  int smem_bytes;    // dynamic shared memory per CTA
} rnnfast_plan;

// Workspace bytes the caller allocates (any content) for the persistent launchers, and the grid barrier
// counter (one unsigned int, zero before each launch).
size_t rnnfast_fwd_workspace_bytes(int dtype, int B, int H);  // h, c (float32), published h (2, B, row(H))
size_t rnnfast_bwd_workspace_bytes(int dtype, int B, int H);  // dh, carry, dc (float32)

const char* rnnfast_cuda_error_string(int err);

// Also sets up the kernel for `device` (shared-memory limit, occupancy) the first time; that part runs in
// relaxed stream-capture mode, so a first call inside CUDA graph capture is safe. Cached per arguments.
int rnnfast_persistent_plan(int cell, int dtype, int mode, int B, int H, int backward, int device,
                            rnnfast_plan* plan);

// Whole forward time loop in one cooperative launch.
int rnnfast_fwd_persistent(int cell, int dtype, int T, int B, int H, int reverse, const void* gi, const void* h0,
                           const void* c0, const void* w_hh, const void* b_hh, const int64_t* lengths, void* y,
                           void* h_n, void* c_n, float* ws, void* work, unsigned* barrier,
                           const rnnfast_plan* plan, rnnfast_stream stream);

// Whole backward time loop in one cooperative launch. Writes dgi, dgh (gradient of h·W_hhᵀ + b_hh, zero at
// invalid steps; the caller turns it into dW_hh, db_hh with one GEMM), dh0 and dc0.
int rnnfast_bwd_persistent(int cell, int dtype, int T, int B, int H, int reverse, const void* grad_y,
                           const void* grad_hn, const void* grad_cn, const void* h0, const void* c0,
                           const void* w_hh, const int64_t* lengths, const void* y, const float* ws, void* dgi,
                           void* dgh, void* dh0, void* dc0, void* work, unsigned* barrier,
                           const rnnfast_plan* plan, rnnfast_stream stream);

// Stepwise algorithm, forward: the pointwise part of step t, after the caller computed gh = h·W_hhᵀ
// (B, G·H, float32, no bias) from hp. h (B, H) float32 is the running state and hp (B, H) its copy in
// the data dtype (the next GEMM's operand), both updated in place; c (B, H) float32 the LSTM cell state.
int rnnfast_fwd_step(int cell, int dtype, int t, int T, int B, int H, const void* gi, const float* gh,
                     const void* b_hh, const int64_t* lengths, float* h, void* hp, float* c, void* y, float* ws,
                     rnnfast_stream stream);

// Stepwise algorithm, backward: the pointwise part of step t. dh (B, H) holds the gradient flowing into
// h_t from later steps; writes dgi[t], dgh[t] and carry (B, H), the part of the gradient w.r.t. h_{t-1}
// that does not go through W_hh, so that the caller finishes the step with dh = carry + dgh[t]·W_hh.
// dc (B, H) is updated in place (LSTM).
int rnnfast_bwd_step(int cell, int dtype, int t, int T, int B, int H, int reverse, const void* grad_y,
                     const void* h0, const void* c0, const int64_t* lengths, const void* y, const float* ws,
                     const float* dh, float* dc, void* dgi, void* dgh, float* carry, rnnfast_stream stream);

#ifdef __cplusplus
}
#endif
