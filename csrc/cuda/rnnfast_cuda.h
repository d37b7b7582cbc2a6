// C ABI of the rnnfast CUDA recurrence kernels (csrc/cuda/*.cu).
//
// Plain C types only, so that the torch binding (bindings.cpp) compiles without any CUDA header and the
// kernels compile without any torch header. Every launcher returns the cudaError_t of its launch as an
// int (0 = cudaSuccess); rnnfast_cuda_error_string turns it into a message.
//
// Dimensions: T time, B batch, H hidden, G gates (rnn 1, gru 3, lstm 4), S saved activations per unit
// (rnn 0, gru 4, lstm 5). Layouts (all row-major, contiguous):
//   gi (T, B, G·H)  h0, c0, h_n, c_n (B, H)  w_hh (G·H, H)  b_hh (G·H)  lengths (B) int64
//   y (T, B, H)  ws (T, B, S·H) float32  dgi (T, B, G·H)  dgh (T, B, G·H) float32
// Data tensors have dtype `dtype` (RNNFAST_F32/F16/BF16); ws, dgh and the workspaces are float32.
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

// How a persistent kernel would be launched for (cell, dtype, H) on `device`; ok = 0 when the weight slices
// do not fit on chip (then the caller uses the stepwise algorithm). B does not change the plan except for
// float32, whose batch chunk (rows of h staged in shared memory) shrinks to fit.
typedef struct {
  int ok;            // 1 if the persistent kernel can run
  int ctas;          // grid size: one CTA per slice of `units` hidden units, all co-resident
  int units;         // hidden units per CTA (U)
  int batch_chunk;   // batch rows per shared-memory chunk (16 for tensor cores)
  int split_k;       // split of the reduction across warps
  int smem_bytes;    // dynamic shared memory per CTA
} rnnfast_plan;

// Float32 workspace sizes (elements) the caller allocates for the persistent launchers.
static inline size_t rnnfast_fwd_workspace(int B, int H) { return (size_t)3 * B * H; }  // h ping-pong, c
static inline size_t rnnfast_bwd_workspace(int B, int H) { return (size_t)3 * B * H; }  // dh, carry, dc

const char* rnnfast_cuda_error_string(int err);

int rnnfast_persistent_plan(int cell, int dtype, int B, int H, int backward, int device, rnnfast_plan* plan);

// Whole forward time loop in one cooperative launch. work: rnnfast_fwd_workspace(B, H) floats.
int rnnfast_fwd_persistent(int cell, int dtype, int T, int B, int H, int reverse, const void* gi, const void* h0,
                           const void* c0, const void* w_hh, const void* b_hh, const int64_t* lengths, void* y,
                           void* h_n, void* c_n, float* ws, float* work, const rnnfast_plan* plan,
                           rnnfast_stream stream);

// Whole backward time loop in one cooperative launch. Writes dgi, dgh (gradient of h·W_hhᵀ + b_hh, zero at
// invalid steps; the caller turns it into dW_hh, db_hh with one GEMM), dh0 and dc0.
// work: rnnfast_bwd_workspace(B, H) floats.
int rnnfast_bwd_persistent(int cell, int dtype, int T, int B, int H, int reverse, const void* grad_y,
                           const void* grad_hn, const void* grad_cn, const void* h0, const void* c0,
                           const void* w_hh, const int64_t* lengths, const void* y, const float* ws, void* dgi,
                           float* dgh, void* dh0, void* dc0, float* work, const rnnfast_plan* plan,
                           rnnfast_stream stream);

// Stepwise algorithm, forward: the pointwise part of step t, after the caller computed gh = h·W_hhᵀ
// (B, G·H, float32, no bias). h (B, H) and c (B, H) are the float32 running state, updated in place.
int rnnfast_fwd_step(int cell, int dtype, int t, int T, int B, int H, const void* gi, const float* gh,
                     const void* b_hh, const int64_t* lengths, float* h, float* c, void* y, float* ws,
                     rnnfast_stream stream);

// Stepwise algorithm, backward: the pointwise part of step t. dh (B, H) holds the gradient flowing into
// h_t from later steps; writes dgi[t], dgh[t] and carry (B, H), the part of the gradient w.r.t. h_{t-1}
// that does not go through W_hh, so that the caller finishes the step with dh = carry + dgh[t]·W_hh.
// dc (B, H) is updated in place (LSTM).
int rnnfast_bwd_step(int cell, int dtype, int t, int T, int B, int H, int reverse, const void* grad_y,
                     const void* h0, const void* c0, const int64_t* lengths, const void* y, const float* ws, const float* dh,
                     float* dc, void* dgi, float* dgh, float* carry, rnnfast_stream stream);

#ifdef __cplusplus
}
#endif
