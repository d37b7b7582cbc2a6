// Torch binding of the CUDA recurrence kernels: input checks, output allocation, dtype codes, the
// stepwise algorithm's time loop (ATen GEMM + one pointwise kernel per step).
//
// Only torch's CPU-side headers are used (no CUDA header): the kernels sit behind the C ABI of
// rnnfast_cuda.h, the stream comes in as an integer (torch.cuda.current_stream().cuda_stream, which must
// be the current stream, since the stepwise GEMMs run on it) and outputs are allocated with at::empty on
// the inputs' device. The caller makes that device current.
//
// Ops (namespace rnnfast_C), argument conventions as the CPU recurrence_fwd / recurrence_bwd, plus
//   algo: 1 persistent (whole loop in one cooperative launch), 2 stepwise; tf32: float32 may multiply on
//   tensor cores in TF32 (persistent kernels; the stepwise GEMMs follow torch's matmul setting);
//   stream: cudaStream_t as int.
//   cuda_recurrence_fwd(...) -> (y, h_n, c_n, ws)
//   cuda_recurrence_bwd(...) -> (dgi, dh0, dc0, dgh): dgh (T, B, rnnfast_row(G·H)) in the data dtype, of
//       which columns < G·H are the gradient w.r.t. h·W_hhᵀ + b_hh; the caller turns it into dW_hh, db_hh
//       with one GEMM and one reduction.
//   cuda_persistent_plan(cell, dtype, tf32, B, H, backward, device)
//       -> [ok, ctas, units, mode, k_chunk, k_chunks, split, prefetch, smem_bytes]
//
// Dimensions: T time, B batch, H hidden, G gates, S saved activations per unit.
#include <ATen/ATen.h>
#include <torch/library.h>

#if __has_include(<torch/headeronly/version.h>)
#include <torch/headeronly/version.h>
#elif __has_include(<torch/version.h>)
#include <torch/version.h>
#endif
// at::mm / at::addmm with an output dtype (float32 results of float16/bfloat16 operands): torch >= 2.8.
#if defined(TORCH_VERSION_MAJOR) && (TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 8))
#define RNNFAST_MM_OUT_DTYPE 1
#else
#define RNNFAST_MM_OUT_DTYPE 0
#endif

#include <cstdlib>
#include <cstring>
#include <limits>
#include <optional>
#include <tuple>
#include <vector>

#include "rnnfast_cuda.h"

namespace {

constexpr int64_t kPersistent = 1;
constexpr int64_t kStepwise = 2;

int gates(int64_t cell) { return cell == RNNFAST_GRU ? 3 : (cell == RNNFAST_LSTM ? 4 : 1); }
int saved(int64_t cell) { return cell == RNNFAST_GRU ? 4 : (cell == RNNFAST_LSTM ? 5 : 0); }

int dtype_code(at::ScalarType t) {
  switch (t) {
    case at::kFloat:
      return RNNFAST_F32;
    case at::kHalf:
      return RNNFAST_F16;
    case at::kBFloat16:
      return RNNFAST_BF16;
    default:
      TORCH_CHECK(false, "rnnfast cuda: expected float32, float16 or bfloat16, got ", t);
  }
}

int mode_code(at::ScalarType t, bool tf32) {
  return t == at::kFloat ? (tf32 ? RNNFAST_TF32 : RNNFAST_FFMA) : RNNFAST_MMA16;
}

rnnfast_stream as_stream(int64_t stream) { return reinterpret_cast<rnnfast_stream>(static_cast<intptr_t>(stream)); }

void check_cuda(int err, const char* what) {
  TORCH_CHECK(err == 0, "rnnfast cuda: ", what, " failed: ", rnnfast_cuda_error_string(err));
}

// Fill an output with NaN under RNNFAST_DEBUG_POISON=1, so that an element a kernel forgets to write fails
// the tests instead of passing by luck.
void poison(at::Tensor& t) {
  static const bool on = [] {
    const char* v = std::getenv("RNNFAST_DEBUG_POISON");
    return v != nullptr && std::strcmp(v, "1") == 0;
  }();
  if (on && t.numel() && t.is_floating_point()) t.fill_(std::numeric_limits<double>::quiet_NaN());
}

void check_like(const char* name, const at::Tensor& t, const at::Tensor& ref, at::IntArrayRef shape) {
  TORCH_CHECK(t.device() == ref.device(), name, ": expected a tensor on ", ref.device(), ", got ", t.device());
  TORCH_CHECK(t.scalar_type() == ref.scalar_type(), name, ": expected dtype ", ref.scalar_type(), ", got ",
              t.scalar_type());
  TORCH_CHECK(t.sizes() == shape, name, ": expected shape ", shape, ", got ", t.sizes());
  TORCH_CHECK(t.is_contiguous(), name, ": expected a contiguous tensor");
}

const void* opt_ptr(const std::optional<at::Tensor>& t) { return t.has_value() ? t->data_ptr() : nullptr; }

// Checks shared by forward and backward; returns (T, B, H).
std::tuple<int64_t, int64_t, int64_t> check_common(const char* x_name, const at::Tensor& x, int64_t xlast_per_h,
                                                   const at::Tensor& h0, const std::optional<at::Tensor>& c0,
                                                   const at::Tensor& w_hh, const std::optional<at::Tensor>& b_hh,
                                                   const std::optional<at::Tensor>& w_hr,
                                                   const std::optional<at::Tensor>& lengths, int64_t cell,
                                                   int64_t algo) {
  TORCH_CHECK(cell >= 0 && cell <= 3, "cell: expected a code 0..3 (rnn_tanh, rnn_relu, gru, lstm), got ", cell);
  TORCH_CHECK(algo == kPersistent || algo == kStepwise, "algo: expected 1 (persistent) or 2 (stepwise), got ",
              algo);
#ifndef RNNFAST_HOST_EMULATION
  TORCH_CHECK(x.is_cuda(), x_name, ": expected a CUDA tensor, got ", x.device());
#endif
  dtype_code(x.scalar_type());
  TORCH_CHECK(x.dim() == 3, x_name, ": expected 3 dimensions (T, B, ·), got ", x.sizes());
  TORCH_CHECK(x.is_contiguous(), x_name, ": expected a contiguous tensor");
  TORCH_CHECK(!w_hr.has_value(), "w_hr: the LSTM projection is not implemented by the cuda backend");
  const int64_t T = x.size(0), B = x.size(1), G = gates(cell);
  const int64_t H = h0.dim() == 2 ? h0.size(1) : -1;
  TORCH_CHECK(H >= 0, "h0: expected shape (B, H), got ", h0.sizes());
  TORCH_CHECK(x.size(2) == xlast_per_h * H, x_name, ": expected last dimension ", xlast_per_h * H, ", got ",
              x.size(2));
  check_like("h0", h0, x, {B, H});
  check_like("w_hh", w_hh, x, {G * H, H});
  if (b_hh.has_value()) check_like("b_hh", *b_hh, x, {G * H});
  if (cell == RNNFAST_LSTM) {
    TORCH_CHECK(c0.has_value(), "c0: required for the lstm cell");
    check_like("c0", *c0, x, {B, H});
  }
  if (lengths.has_value()) {
    TORCH_CHECK(lengths->device() == x.device(), "lengths: expected a tensor on ", x.device(), ", got ",
                lengths->device());
    TORCH_CHECK(lengths->scalar_type() == at::kLong, "lengths: expected int64, got ", lengths->scalar_type());
    TORCH_CHECK(lengths->sizes() == at::IntArrayRef({B}), "lengths: expected shape (", B, "), got ",
                lengths->sizes());
    TORCH_CHECK(lengths->is_contiguous(), "lengths: expected a contiguous tensor");
  }
  TORCH_CHECK(B * H < std::numeric_limits<int>::max() && T < std::numeric_limits<int>::max(),
              "rnnfast cuda: B·H and T must fit in int32, got B=", B, " H=", H, " T=", T);
  return {T, B, H};
}

rnnfast_plan make_plan(int64_t cell, const at::Tensor& x, int64_t B, int64_t H, bool backward, bool tf32) {
  rnnfast_plan plan{};
  check_cuda(rnnfast_persistent_plan(static_cast<int>(cell), dtype_code(x.scalar_type()),
                                     mode_code(x.scalar_type(), tf32), static_cast<int>(B), static_cast<int>(H),
                                     backward ? 1 : 0, x.device().index(), &plan),
             "persistent plan");
  TORCH_CHECK(plan.ok, "rnnfast cuda: the persistent kernel cannot run on this GPU for H=", H,
              " (slices too large for shared memory, or the grid cannot be co-resident); use the stepwise algorithm");
  return plan;
}

// Per-step GEMMs of the stepwise algorithm: out (float32) = [add +] a·b with a, b in the data dtype. On
// CUDA with torch >= 2.8 they run on tensor cores in that dtype with float32 accumulation and output;
// otherwise (older torch, the host emulation's CPU tensors) on float32 copies, the same products.
bool dtype_gemm(const at::Tensor& a) {
  return RNNFAST_MM_OUT_DTYPE && a.is_cuda() && a.scalar_type() != at::kFloat;
}

void gemm_f32(at::Tensor& out, const at::Tensor& a, const at::Tensor& b) {
#if RNNFAST_MM_OUT_DTYPE
  if (dtype_gemm(a)) {
    at::mm_out(out, a, b, at::kFloat);
    return;
  }
#endif
  at::mm_out(out, a.to(at::kFloat), b);
}

// out = add + a·b; prod (the shape of out, float32) is scratch for the 16-bit case.
void addgemm_f32(at::Tensor& out, at::Tensor& prod, const at::Tensor& add, const at::Tensor& a, const at::Tensor& b) {
  if (dtype_gemm(a)) {
    gemm_f32(prod, a, b);
    at::add_out(out, add, prod);
    return;
  }
  at::addmm_out(out, add, a.to(at::kFloat), b);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> recurrence_fwd(
    const at::Tensor& gi, const at::Tensor& h0, const std::optional<at::Tensor>& c0, const at::Tensor& w_hh,
    const std::optional<at::Tensor>& b_hh, const std::optional<at::Tensor>& w_hr,
    const std::optional<at::Tensor>& lengths, int64_t cell, bool reverse, bool need_ws, int64_t algo, bool tf32,
    int64_t stream) {
  const int64_t G = gates(cell), S = saved(cell);
  const auto [T, B, H] = check_common("gi", gi, G, h0, c0, w_hh, b_hh, w_hr, lengths, cell, algo);
  const bool lstm = cell == RNNFAST_LSTM;
  const auto f32 = gi.options().dtype(at::kFloat);
  at::Tensor y = at::empty({T, B, H}, gi.options());
  at::Tensor h_n = at::empty({B, H}, gi.options());
  at::Tensor c_n = lstm ? at::empty({B, H}, gi.options()) : at::empty({0}, gi.options());
  at::Tensor ws = need_ws ? at::empty({T, B, S * H}, f32) : at::empty({0}, f32);
  for (at::Tensor* t : {&y, &h_n, &c_n, &ws}) poison(*t);
  float* ws_ptr = need_ws && S > 0 ? ws.data_ptr<float>() : nullptr;
  const int64_t* len_ptr = lengths.has_value() ? lengths->data_ptr<int64_t>() : nullptr;
  const int dt = dtype_code(gi.scalar_type());
  if (T == 0 || B == 0 || H == 0) {
    h_n.copy_(h0);
    if (lstm) c_n.copy_(*c0);
    return {y, h_n, c_n, ws};
  }
  if (algo == kPersistent) {
    const rnnfast_plan plan = make_plan(cell, gi, B, H, false, tf32);
    at::Tensor work = at::empty({static_cast<int64_t>(rnnfast_fwd_workspace_bytes(dt, B, H))}, gi.options().dtype(at::kByte));
    at::Tensor barrier = at::zeros({1}, gi.options().dtype(at::kInt));
    check_cuda(rnnfast_fwd_persistent(static_cast<int>(cell), dt, T, B, H, reverse, gi.data_ptr(), h0.data_ptr(),
                                      opt_ptr(c0), w_hh.data_ptr(), opt_ptr(b_hh), len_ptr, y.data_ptr(),
                                      h_n.data_ptr(), lstm ? c_n.data_ptr() : nullptr, ws_ptr, work.data_ptr(),
                                      static_cast<unsigned*>(barrier.data_ptr()), &plan, as_stream(stream)),
               "persistent forward launch");
    return {y, h_n, c_n, ws};
  }
  // Stepwise: float32 state h and its copy hp in the data dtype, the GEMM's operand; one pointwise kernel
  // per step.
  at::Tensor h = at::empty({B, H}, f32);
  h.copy_(h0);
  at::Tensor hp = h0.clone();
  at::Tensor c = lstm ? at::empty({B, H}, f32) : at::empty({0}, f32);
  if (lstm) c.copy_(*c0);
  const at::Tensor w_t = dtype_gemm(hp) || gi.scalar_type() == at::kFloat ? w_hh.t() : w_hh.to(at::kFloat).t();
  at::Tensor gh = at::empty({B, G * H}, f32);
  for (int64_t s = 0; s < T; ++s) {
    const int64_t t = reverse ? T - 1 - s : s;
    gemm_f32(gh, hp, w_t);
    check_cuda(rnnfast_fwd_step(static_cast<int>(cell), dt, t, T, B, H, gi.data_ptr(), gh.data_ptr<float>(),
                                opt_ptr(b_hh), len_ptr, h.data_ptr<float>(), hp.data_ptr(),
                                lstm ? c.data_ptr<float>() : nullptr, y.data_ptr(), ws_ptr, as_stream(stream)),
               "stepwise forward launch");
  }
  h_n.copy_(h);
  if (lstm) c_n.copy_(c);
  return {y, h_n, c_n, ws};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> recurrence_bwd(
    const at::Tensor& grad_y, const at::Tensor& grad_hn, const std::optional<at::Tensor>& grad_cn,
    const at::Tensor& h0, const std::optional<at::Tensor>& c0, const at::Tensor& w_hh,
    const std::optional<at::Tensor>& b_hh, const std::optional<at::Tensor>& w_hr,
    const std::optional<at::Tensor>& lengths, const at::Tensor& y, const at::Tensor& ws, int64_t cell,
    bool reverse, int64_t algo, bool tf32, int64_t stream) {
  const int64_t G = gates(cell), S = saved(cell);
  const auto [T, B, H] = check_common("grad_y", grad_y, 1, h0, c0, w_hh, b_hh, w_hr, lengths, cell, algo);
  const bool lstm = cell == RNNFAST_LSTM;
  check_like("grad_hn", grad_hn, grad_y, {B, H});
  check_like("y", y, grad_y, {T, B, H});
  if (lstm) {
    TORCH_CHECK(grad_cn.has_value(), "grad_cn: required for the lstm cell");
    check_like("grad_cn", *grad_cn, grad_y, {B, H});
  }
  TORCH_CHECK(ws.device() == grad_y.device(), "ws: expected a tensor on ", grad_y.device(), ", got ", ws.device());
  TORCH_CHECK(ws.scalar_type() == at::kFloat, "ws: expected float32, got ", ws.scalar_type());
  TORCH_CHECK(ws.is_contiguous(), "ws: expected a contiguous tensor");
  TORCH_CHECK(ws.numel() == T * B * S * H, "ws: expected shape (", T, ", ", B, ", ", S * H,
              ") saved by the forward, got ", ws.sizes());
  const auto f32 = grad_y.options().dtype(at::kFloat);
  at::Tensor dgi = at::empty({T, B, G * H}, grad_y.options());
  at::Tensor dh0 = at::empty({B, H}, grad_y.options());
  at::Tensor dc0 = lstm ? at::empty({B, H}, grad_y.options()) : at::empty({0}, grad_y.options());
  const int dt = dtype_code(grad_y.scalar_type());
  const int64_t GHp = rnnfast_row(static_cast<int>(G * H), dt);
  at::Tensor dgh = at::empty({T, B, GHp}, grad_y.options());
  for (at::Tensor* t : {&dgi, &dh0, &dc0, &dgh}) poison(*t);
  if (T == 0 || B == 0 || H == 0) {
    dgi.zero_(), dgh.zero_();
    dh0.copy_(grad_hn);
    if (lstm) dc0.copy_(*grad_cn);
    return {dgi, dh0, dc0, dgh};
  }
  const int64_t* len_ptr = lengths.has_value() ? lengths->data_ptr<int64_t>() : nullptr;
  const float* ws_ptr = S > 0 ? ws.data_ptr<float>() : nullptr;
  if (algo == kPersistent) {
    const rnnfast_plan plan = make_plan(cell, grad_y, B, H, true, tf32);
    at::Tensor work = at::empty({static_cast<int64_t>(rnnfast_bwd_workspace_bytes(dt, B, H))}, f32.dtype(at::kByte));
    at::Tensor barrier = at::zeros({1}, grad_y.options().dtype(at::kInt));
    check_cuda(rnnfast_bwd_persistent(static_cast<int>(cell), dt, T, B, H, reverse, grad_y.data_ptr(),
                                      grad_hn.data_ptr(), opt_ptr(grad_cn), h0.data_ptr(), opt_ptr(c0),
                                      w_hh.data_ptr(), len_ptr, y.data_ptr(), ws_ptr, dgi.data_ptr(), dgh.data_ptr(),
                                      dh0.data_ptr(), lstm ? dc0.data_ptr() : nullptr, work.data_ptr(),
                                      static_cast<unsigned*>(barrier.data_ptr()), &plan, as_stream(stream)),
               "persistent backward launch");
    return {dgi, dh0, dc0, dgh};
  }
  // Stepwise: per step the pointwise kernel, then dh = carry + dgh[t]·W_hh (data-dtype GEMM, float32 out).
  at::Tensor dh = at::empty({B, H}, f32);
  dh.copy_(grad_hn);
  at::Tensor dc = lstm ? at::empty({B, H}, f32) : at::empty({0}, f32);
  if (lstm) dc.copy_(*grad_cn);
  at::Tensor carry = at::empty({B, H}, f32);
  at::Tensor prod = at::empty({B, H}, f32);
  const at::Tensor w = dtype_gemm(grad_y) || grad_y.scalar_type() == at::kFloat ? w_hh : w_hh.to(at::kFloat);
  for (int64_t s = 0; s < T; ++s) {
    const int64_t t = reverse ? s : T - 1 - s;
    check_cuda(rnnfast_bwd_step(static_cast<int>(cell), dt, t, T, B, H, reverse, grad_y.data_ptr(), h0.data_ptr(),
                                opt_ptr(c0), len_ptr, y.data_ptr(), ws_ptr, dh.data_ptr<float>(),
                                lstm ? dc.data_ptr<float>() : nullptr, dgi.data_ptr(), dgh.data_ptr(),
                                carry.data_ptr<float>(), as_stream(stream)),
               "stepwise backward launch");
    addgemm_f32(dh, prod, carry, dgh.select(0, t).narrow(1, 0, G * H), w);
  }
  dh0.copy_(dh);
  if (lstm) dc0.copy_(dc);
  return {dgi, dh0, dc0, dgh};
}

std::vector<int64_t> persistent_plan(int64_t cell, at::ScalarType dtype, bool tf32, int64_t B, int64_t H,
                                     bool backward, int64_t device) {
  TORCH_CHECK(cell >= 0 && cell <= 3, "cell: expected a code 0..3, got ", cell);
  TORCH_CHECK(B >= 0 && H >= 0 && B * H < std::numeric_limits<int>::max(), "B, H: expected B·H < 2^31, got B=", B,
              " H=", H);
  rnnfast_plan p{};
  check_cuda(rnnfast_persistent_plan(static_cast<int>(cell), dtype_code(dtype), mode_code(dtype, tf32),
                                     static_cast<int>(B), static_cast<int>(H), backward ? 1 : 0,
                                     static_cast<int>(device), &p),
             "persistent plan");
  return {p.ok, p.ctas, p.units, p.mode, p.k_chunk, p.k_chunks, p.split, p.prefetch, p.smem_bytes};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(rnnfast_C, m) {
  m.def(
      "cuda_recurrence_fwd(Tensor gi, Tensor h0, Tensor? c0, Tensor w_hh, Tensor? b_hh, Tensor? w_hr, "
      "Tensor? lengths, int cell, bool reverse, bool need_ws, int algo, bool tf32, int stream) "
      "-> (Tensor, Tensor, Tensor, Tensor)");
  m.def(
      "cuda_recurrence_bwd(Tensor grad_y, Tensor grad_hn, Tensor? grad_cn, Tensor h0, Tensor? c0, Tensor w_hh, "
      "Tensor? b_hh, Tensor? w_hr, Tensor? lengths, Tensor y, Tensor ws, int cell, bool reverse, int algo, "
      "bool tf32, int stream) -> (Tensor, Tensor, Tensor, Tensor)");
  m.def("cuda_persistent_plan(int cell, ScalarType dtype, bool tf32, int B, int H, bool backward, int device) -> int[]",
        &persistent_plan);
}

#ifndef RNNFAST_HOST_EMULATION
TORCH_LIBRARY_IMPL(rnnfast_C, CUDA, m) {
  m.impl("cuda_recurrence_fwd", &recurrence_fwd);
  m.impl("cuda_recurrence_bwd", &recurrence_bwd);
}
#else
// Test build only: linked against csrc/cuda/emulator/host_emulator.cu, which implements the C ABI on the
// host, the ops run on CPU tensors.
TORCH_LIBRARY_IMPL(rnnfast_C, CPU, m) {
  m.impl("cuda_recurrence_fwd", &recurrence_fwd);
  m.impl("cuda_recurrence_bwd", &recurrence_bwd);
}
#endif
