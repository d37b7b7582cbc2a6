// SPINN encoder on CPU tensors: the planned thin-stack loop (rnnfast/ops/spinn/encoder.py) forward and
// in reverse, one op call per direction. Per step the gathers, one GEMM, the fused cell and the scatters
// run here, so the ~25 small ATen calls the Python loop makes per step (each a few µs of dispatch, ~1 ms
// a step at D=100) shrink to two GEMM calls and plain loops.
//
// Dimensions: T transitions, B batch, N leaves, H hidden, HT tracker hidden (0 without a tracker),
// K = 2H + HT, R rows reducing at a step, ΣR all reduces, RM = B·max(0, min(N − 1, ⌊(T − 1)/2⌋)) the
// most reduces a batch can hold (each reduce needs a shift more than the reduces before it), the size of
// the packed reduce rows: fixed by the shapes, so the outputs' shapes are too. LB = (1 + N)·B, P = LB + RM.
//
// Pool (P, H) of h and of c: rows [0, LB) slot·B + b, slot 0 the null, slots 1..N the leaves; row LB + j
// the state the packed reduce row j composes (step t's reduces are rows off[t] .. off[t+1] − 1; rows
// from ΣR on are zero). Every state is stored once. Saved for backward, all written here:
//   gates (RM, 5H)   reduce chunks activated: tanh(a), σ(i), σ(f1), σ(f2), σ(o) (rows from ΣR on zero)
//   acts (T, B, 4HT) activated tracker gates i, f, g, o;  cs, hs (T, B, HT) tracker c and h
// The GEMM inputs, gathered per step, live in scratch memory and are gathered again by the backward for
// the weight gradients (a gather is ~1% of the products' time; keeping them would add ~9 MB of outputs
// per batch at D=100):
//   xk (ΣR, K)       reduce rows [h_l, h_r, h_tracker]
//   xs (T, B, K)     tracker rows [stack top h, stack second h, previous tracker h]
// The buffer-top third of the tracker's input product runs once over all null+leaf rows before the loop.
#include <torch/library.h>

#include <ATen/Parallel.h>

#include <algorithm>
#include <vector>

#include "common.h"
#include "gemm.h"
#include "matmul.h"

namespace rnnfast {
namespace {

using at::Tensor;

constexpr int64_t kShift = 3, kReduce = 2, kPad = 1;

// ---------------------------------------------------------------------------------------------
// Products go through gemm.h: oneDNN for float32 products big enough to pay its call overhead (every
// per-step product here at B=128, H=100 is), ATen's GEMM otherwise. The per-step weights are packed once
// per call (LinearNT) and each product is taken as a new tensor that the pointwise code or the scatter
// after it reads directly (copying it into a preallocated buffer cost ~2 ms per batch at D=100). The
// weight gradients (aᵀ·b) go through ATen, which takes the transposed operand as it is.
//
// Per-step products below 2^24 multiply-adds go to ATen, which has no ~25 µs primitive lookup per call
// (2-core AVX-512 machine, B=128, D=100: ATen 14% ahead; D=300, above it, even: docs/spinn.md).
inline int64_t step_dnnl_min_work() { return int64_t{1} << 24; }

// ---------------------------------------------------------------------------------------------
// The plan: every pointer of the loop, from the transitions alone (the C++ twin of build_plan).

struct Plan {
  int64_t T = 0, B = 0, N = 0;
  std::vector<int64_t> buf;                 // (T·B) pool row of the buffer top
  std::vector<int64_t> stk;                 // (T·B·2) pool rows of stack top and second
  std::vector<int64_t> off;                 // (T + 1) step t reduces packed rows [off[t], off[t+1])
  std::vector<int64_t> ex, left, right;     // (ΣR) example, pool rows of the left and right child
  std::vector<int64_t> root;                // (B) pool row of the final stack top
  int64_t total() const { return off.back(); }
  int64_t out(int64_t j) const { return (1 + N) * B + j; }  // pool row of packed reduce row j
  int64_t mean_rows() const {  // over the steps that reduce
    int64_t steps = 0;
    for (int64_t t = 0; t < T; ++t) steps += off[t + 1] > off[t];
    return steps > 0 ? total() / steps : 0;
  }
};

int64_t max_reduce_rows(int64_t T, int64_t B, int64_t N) {
  const int64_t per_example = T > 0 ? std::min(N - 1, (T - 1) / 2) : 0;
  return B * std::max<int64_t>(0, per_example);
}

// Validates as encoder.check_transitions does (same messages, raised as ValueError), then plans.
Plan make_plan(const Tensor& transitions, int64_t N) {
  TORCH_CHECK_TYPE(transitions.scalar_type() == at::kLong && transitions.dim() == 2 && transitions.device().is_cpu(),
                   "transitions: expected a 2-D int64 CPU tensor (T, B), got ", transitions.scalar_type(), " ",
                   transitions.sizes(), " on ", transitions.device());
  const Tensor tr = transitions.contiguous();
  const int64_t* a = tr.data_ptr<int64_t>();
  Plan p;
  p.T = tr.size(0);
  p.B = tr.size(1);
  p.N = N;
  const int64_t T = p.T, B = p.B;
  for (int64_t i = 0; i < T * B; ++i) {
    TORCH_CHECK_VALUE(a[i] == kShift || a[i] == kReduce || a[i] == kPad, "transitions: unknown code ", a[i],
                      " at step ", i / B, ", example ", i % B, "; expected SHIFT=3, REDUCE=2 or PAD=1");
  }
  std::vector<int64_t> shifts(B, 0);
  for (int64_t i = 0; i < T * B; ++i) shifts[i % B] += a[i] == kShift;
  if (B > 0) {
    const int64_t b = std::max_element(shifts.begin(), shifts.end()) - shifts.begin();
    TORCH_CHECK_VALUE(shifts[b] <= N, "transitions: example ", b, " shifts ", shifts[b],
                      " times but buffers holds only N=", N, " leaves");
  }
  p.buf.resize(T * B);
  p.stk.resize(2 * T * B);
  p.off.resize(T + 1);
  p.root.resize(B);
  const int64_t depth = T + 2;
  std::vector<int64_t> stack(B * depth), sp(B, 2), bp(B, 0);  // pool rows; two null bottoms
  for (int64_t b = 0; b < B; ++b) stack[b * depth] = stack[b * depth + 1] = b;
  for (int64_t t = 0; t < T; ++t) {
    p.off[t] = static_cast<int64_t>(p.ex.size());
    for (int64_t b = 0; b < B; ++b) {
      const int64_t i = t * B + b;
      int64_t* s = stack.data() + b * depth;
      const int64_t top = s[sp[b] - 1], second = s[sp[b] - 2];
      p.buf[i] = (bp[b] < shifts[b] ? bp[b] + 1 : 0) * B + b;
      p.stk[2 * i] = top;
      p.stk[2 * i + 1] = second;
      if (a[i] == kShift) {
        s[sp[b]++] = ++bp[b] * B + b;
      } else if (a[i] == kReduce) {
        const int64_t have = sp[b] - 2;
        TORCH_CHECK_VALUE(have >= 2, "transitions: step ", t, ", example ", b, " reduces with ", have,
                          have == 1 ? " entry" : " entries", " on the stack; a reduce needs 2");
        sp[b] -= 2;
        s[sp[b]++] = p.out(static_cast<int64_t>(p.ex.size()));
        p.ex.push_back(b);
        p.left.push_back(second);
        p.right.push_back(top);
      }
    }
  }
  p.off[T] = static_cast<int64_t>(p.ex.size());
  for (int64_t b = 0; b < B; ++b) {
    // A complete parse leaves exactly one tree: none or several has no root.
    const int64_t left = sp[b] - 2;
    TORCH_CHECK_VALUE(left != 0, "transitions: example ", b, " shifts no leaf in its ", T,
                      " steps, so no tree is left on the stack at the end; a parse needs at least one SHIFT");
    TORCH_CHECK_VALUE(left == 1, "transitions: example ", b, " leaves ", left,
                      " entries on the stack after its last step ", T - 1, "; a complete parse leaves 1 tree (",
                      shifts[b], " shifts need ", shifts[b] - 1, " reduces, got ", shifts[b] - left, ")");
    p.root[b] = stack[b * depth + sp[b] - 1];
  }
  return p;
}

// ---------------------------------------------------------------------------------------------
// Pointwise rows. float uses the vectorisable exp/tanh of common.h; double keeps libm.

// Tree-LSTM (chunks a, i, f1, f2, o): c = tanh(a)σ(i) + σ(f1)c_l + σ(f2)c_r, h = σ(o)tanh(c).
// in (5H) the product without bias, bias (5H); g (5H) gets the activated chunks tanh(a), σ(i), σ(f1),
// σ(f2), σ(o) (the backward needs only those: 5 of its 6 transcendentals saved); in and g may alias.
template <typename scalar_t>
RNNFAST_CLONES void reduce_fwd_row(int64_t H, const scalar_t* in, const scalar_t* bias, scalar_t* g,
                                   const scalar_t* cl, const scalar_t* cr, scalar_t* h, scalar_t* c) {
  RNNFAST_IVDEP
  for (int64_t j = 0; j < H; ++j) {
    const scalar_t ta = tanh_fast(in[j] + bias[j]), si = sigmoid_fast(in[H + j] + bias[H + j]),
                   sf1 = sigmoid_fast(in[2 * H + j] + bias[2 * H + j]),
                   sf2 = sigmoid_fast(in[3 * H + j] + bias[3 * H + j]),
                   so = sigmoid_fast(in[4 * H + j] + bias[4 * H + j]);
    const scalar_t cv = ta * si + sf1 * cl[j] + sf2 * cr[j];
    g[j] = ta;
    g[H + j] = si;
    g[2 * H + j] = sf1;
    g[3 * H + j] = sf2;
    g[4 * H + j] = so;
    c[j] = cv;
    h[j] = so * tanh_fast(cv);
  }
}

// Gradient of the row above: d (5H) w.r.t. the pre-activations; dcl, dcr (H) accumulated into the
// children; g (5H) the activated chunks.
template <typename scalar_t>
RNNFAST_CLONES void reduce_bwd_row(int64_t H, const scalar_t* gh, const scalar_t* gc, const scalar_t* g,
                                   const scalar_t* cl, const scalar_t* cr, const scalar_t* c, scalar_t* d,
                                   scalar_t* dcl, scalar_t* dcr) {
  RNNFAST_IVDEP
  for (int64_t j = 0; j < H; ++j) {
    const scalar_t ta = g[j], si = g[H + j], sf1 = g[2 * H + j], sf2 = g[3 * H + j], so = g[4 * H + j];
    const scalar_t tc = tanh_fast(c[j]);
    const scalar_t dc = gc[j] + gh[j] * so * (1 - tc * tc);
    d[j] = dc * si * (1 - ta * ta);
    d[H + j] = dc * ta * si * (1 - si);
    d[2 * H + j] = dc * cl[j] * sf1 * (1 - sf1);
    d[3 * H + j] = dc * cr[j] * sf2 * (1 - sf2);
    d[4 * H + j] = gh[j] * tc * so * (1 - so);
    dcl[j] += dc * sf1;
    dcr[j] += dc * sf2;
  }
}

// LSTMCell (gates i, f, g, o, as torch.nn.LSTMCell): in (4HT) holds x·W_stkᵀ + h·W_hhᵀ from the GEMM;
// gb the buffer top's precomputed part; bias b_ih + b_hh; c_prev zeros at the first step.
// Writes the activated gates to g (may be in).
template <typename scalar_t>
RNNFAST_CLONES void tracker_fwd_row(int64_t HT, const scalar_t* in, const scalar_t* gb, const scalar_t* bias,
                                    const scalar_t* c_prev, scalar_t* g, scalar_t* c, scalar_t* h) {
  RNNFAST_IVDEP
  for (int64_t j = 0; j < HT; ++j) {
    scalar_t v[4];
    for (int k = 0; k < 4; ++k) v[k] = in[k * HT + j] + gb[k * HT + j] + bias[k * HT + j];
    const scalar_t i = sigmoid_fast(v[0]), f = sigmoid_fast(v[1]), gg = tanh_fast(v[2]), o = sigmoid_fast(v[3]);
    const scalar_t cv = f * c_prev[j] + i * gg;
    g[j] = i;
    g[HT + j] = f;
    g[2 * HT + j] = gg;
    g[3 * HT + j] = o;
    c[j] = cv;
    h[j] = o * tanh_fast(cv);
  }
}

// Its gradient: dh (HT) the total gradient of h; dc (HT) in: of c from the next step, out: of c_prev.
template <typename scalar_t>
RNNFAST_CLONES void tracker_bwd_row(int64_t HT, const scalar_t* dh, scalar_t* dc, const scalar_t* act,
                                    const scalar_t* c, const scalar_t* c_prev, scalar_t* dg) {
  RNNFAST_IVDEP
  for (int64_t j = 0; j < HT; ++j) {
    const scalar_t i = act[j], f = act[HT + j], gg = act[2 * HT + j], o = act[3 * HT + j];
    const scalar_t tc = tanh_fast(c[j]);
    const scalar_t dct = dc[j] + dh[j] * o * (1 - tc * tc);
    const scalar_t cp = c_prev[j];
    dg[j] = dct * gg * i * (1 - i);
    dg[HT + j] = dct * cp * f * (1 - f);
    dg[2 * HT + j] = dct * i * (1 - gg * gg);
    dg[3 * HT + j] = dh[j] * tc * o * (1 - o);
    dc[j] = dct * f;
  }
}

template <typename scalar_t>
RNNFAST_INLINE void add_row(int64_t n, scalar_t* dst, const scalar_t* src) {
  RNNFAST_IVDEP
  for (int64_t j = 0; j < n; ++j) dst[j] += src[j];
}

// The scatters of the backward: for source rows r in [r0, r1) (row stride lds) and parts q < P (width n
// each, side by side), dst row rows[r·P + q] += src[r, q·n : (q+1)·n]. Cloned per ISA like the cells
// (the build's baseline is SSE2).
template <typename scalar_t, int P>
RNNFAST_CLONES void scatter_add(int64_t r0, int64_t r1, int64_t n, scalar_t* dst, const int64_t* rows,
                                const scalar_t* src, int64_t lds) {
  for (int64_t r = r0; r < r1; ++r) {
    for (int q = 0; q < P; ++q) add_row(n, dst + rows[r * P + q] * n, src + r * lds + q * n);
  }
}

template <typename scalar_t>
RNNFAST_INLINE void copy_row(int64_t n, scalar_t* dst, const scalar_t* src) {
  std::memcpy(dst, src, n * sizeof(scalar_t));
}

// Rows per task: enough elements (~16K) that a thread's share outweighs waking it.
int64_t grain(int64_t width) { return std::max<int64_t>(1, 16384 / std::max<int64_t>(width, 1)); }
// The gathers and scatters split finer (4K elements per task): at D=100, B=128, 2 threads, forward+backward
// took 41 ms (best of 30) against 43 ms with 16K per task.
int64_t copy_grain(int64_t width) { return std::max<int64_t>(1, 4096 / std::max<int64_t>(width, 1)); }

// ---------------------------------------------------------------------------------------------
// Scratch memory of one call, carved from one block of the block cache (blocks.h): fresh temporaries of
// this size (~40 MB per batch at B=128, D=100) were handed back to the system by glibc when freed and
// page-faulted in again by the next batch (measured 3-11K page faults and 6-29 ms of kernel time per
// forward+backward, 10-25% of it).

class Workspace {
 public:
  // sizes: the element counts of the tensors to carve, in order, each of `dtype`.
  Workspace(std::initializer_list<int64_t> sizes, at::ScalarType dtype) : dtype_(dtype) {
    const int64_t item = c10::elementSize(dtype);
    int64_t bytes = 0;
    for (int64_t n : sizes) bytes += round_up(n * item);
    block_ = BlockCache::get().empty({std::max<int64_t>(bytes, 1)}, at::TensorOptions().dtype(at::kByte));
  }
  Workspace(const Workspace&) = delete;
  Workspace& operator=(const Workspace&) = delete;

  // The next tensor of `sizes` (uninitialised), carved in the order the constructor was given.
  Tensor take(at::IntArrayRef sizes) {
    const int64_t n = c10::multiply_integers(sizes) * c10::elementSize(dtype_);
    Tensor t = block_.narrow(0, used_, n).view(dtype_).view(sizes);
    used_ += round_up(n);
    return t;
  }

 private:
  static int64_t round_up(int64_t bytes) { return (bytes + 63) / 64 * 64; }
  at::ScalarType dtype_;
  Tensor block_;
  int64_t used_ = 0;
};

// ---------------------------------------------------------------------------------------------
// Checks.

void check_float(const char* name, const Tensor& t, const Tensor& ref) {
  TORCH_CHECK(t.device().is_cpu(), "rnnfast_C: ", name, ": expected a CPU tensor, got ", t.device());
  TORCH_CHECK_TYPE(t.scalar_type() == ref.scalar_type(), "rnnfast_C: ", name, ": expected dtype ",
                   ref.scalar_type(), ", got ", t.scalar_type());
}

void check_shape(const char* name, const Tensor& t, const Tensor& ref, at::IntArrayRef shape) {
  check_float(name, t, ref);
  TORCH_CHECK_VALUE(t.sizes() == shape, "rnnfast_C: ", name, ": expected shape ", shape, ", got ", t.sizes());
}

struct Weights {
  int64_t H = 0, HT = 0;
  bool tracker = false;
  Tensor wk;     // (5H, K) [w_l w_r w_t]
  Tensor w_buf;  // (4HT, H) buffer-top columns of w_ih
  Tensor wtr;    // (4HT, K) [stack columns of w_ih, w_hh]
};

Weights weights(const Tensor& ref, int64_t H, const Tensor& w_l, const Tensor& w_r, const std::optional<Tensor>& w_t,
                const std::optional<Tensor>& w_ih, const std::optional<Tensor>& w_hh) {
  Weights w;
  w.H = H;
  w.tracker = w_ih.has_value();
  TORCH_CHECK_VALUE(w_t.has_value() == w.tracker && w_hh.has_value() == w.tracker,
                    "rnnfast_C: w_t, w_ih, w_hh: a tracker needs all three");
  check_shape("w_l", w_l, ref, {5 * H, H});
  check_shape("w_r", w_r, ref, {5 * H, H});
  if (w.tracker) {
    w.HT = w_hh->size(-1);
    const int64_t HT = w.HT;
    check_shape("w_t", *w_t, ref, {5 * H, HT});
    check_shape("w_ih", *w_ih, ref, {4 * HT, 3 * H});
    check_shape("w_hh", *w_hh, ref, {4 * HT, HT});
    w.wk = at::cat({w_l, w_r, *w_t}, 1);
    w.w_buf = w_ih->narrow(1, 0, H).contiguous();
    w.wtr = at::cat({w_ih->narrow(1, H, 2 * H), *w_hh}, 1);
  } else {
    w.wk = at::cat({w_l, w_r}, 1);
  }
  return w;
}

// ---------------------------------------------------------------------------------------------
// Forward.

// Step t's tracker rows x (B, K): [stack top h, stack second h, previous tracker h (zeros at t = 0)].
template <typename scalar_t>
void gather_tracker(const Plan& p, int64_t t, int64_t H, int64_t HT, const scalar_t* h_pool, const scalar_t* hs,
                    scalar_t* x) {
  const int64_t B = p.B, K = 2 * H + HT;
  const scalar_t* h_prev = t > 0 ? hs + (t - 1) * B * HT : nullptr;
  at::parallel_for(0, B, copy_grain(K), [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t i = t * B + b;
      copy_row(H, x + b * K, h_pool + p.stk[2 * i] * H);
      copy_row(H, x + b * K + H, h_pool + p.stk[2 * i + 1] * H);
      if (h_prev != nullptr) {
        copy_row(HT, x + b * K + 2 * H, h_prev + b * HT);
      } else {
        std::fill_n(x + b * K + 2 * H, HT, scalar_t(0));
      }
    }
  });
}

// Step t's reduce rows x (R, K), the packed rows from off[t]: [h_l, h_r, tracker h (hs null: none)].
template <typename scalar_t>
void gather_reduce(const Plan& p, int64_t t, int64_t H, int64_t HT, const scalar_t* h_pool, const scalar_t* hs,
                   scalar_t* x) {
  const int64_t B = p.B, K = 2 * H + HT, o = p.off[t], R = p.off[t + 1] - o;
  const scalar_t* h_trk = hs != nullptr ? hs + t * B * HT : nullptr;
  at::parallel_for(0, R, copy_grain(K), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      copy_row(H, x + r * K, h_pool + p.left[o + r] * H);
      copy_row(H, x + r * K + H, h_pool + p.right[o + r] * H);
      if (h_trk != nullptr) copy_row(HT, x + r * K + 2 * H, h_trk + p.ex[o + r] * HT);
    }
  });
}

template <typename scalar_t>
void forward_loop(const Plan& p, const Weights& w, const Tensor& b_l, const Tensor& bias_trk, Tensor& ph, Tensor& pc,
                  Tensor& xk, Tensor& gates, Tensor& xs, Tensor& acts, Tensor& cs, Tensor& hs) {
  const int64_t T = p.T, B = p.B, N = p.N, H = w.H, HT = w.HT, K = 2 * H + HT;
  scalar_t* h_pool = ph.data_ptr<scalar_t>();
  scalar_t* c_pool = pc.data_ptr<scalar_t>();
  const scalar_t* bl = b_l.data_ptr<scalar_t>();
  const LinearNT reduce_mm(w.wk, p.mean_rows(), /*uses=*/p.T, step_dnnl_min_work());
  std::optional<LinearNT> tracker_mm;
  Tensor g_buf;
  const scalar_t* bt = nullptr;
  Tensor c0;  // the tracker's initial c
  if (w.tracker) {
    tracker_mm.emplace(w.wtr, B, /*uses=*/p.T, step_dnnl_min_work());
    // Buffer-top part of every tracker step at once: the buffer top is always a null or leaf row.
    g_buf = LinearNT(w.w_buf, (1 + N) * B, /*uses=*/1).product(ph.narrow(0, 0, (1 + N) * B));
    bt = bias_trk.data_ptr<scalar_t>();
    c0 = at::zeros({B, HT}, ph.options());
  }
  for (int64_t t = 0; t < T; ++t) {
    if (w.tracker) {
      gather_tracker<scalar_t>(p, t, H, HT, h_pool, hs.data_ptr<scalar_t>(), xs.data_ptr<scalar_t>() + t * B * K);
      Tensor g = acts[t];
      const Tensor pre = tracker_mm->product(xs[t]);
      const scalar_t* pp = pre.data_ptr<scalar_t>();
      scalar_t* gp = g.data_ptr<scalar_t>();
      const scalar_t* gb = g_buf.data_ptr<scalar_t>();
      const scalar_t* c_prev = t > 0 ? cs.data_ptr<scalar_t>() + (t - 1) * B * HT : c0.data_ptr<scalar_t>();
      scalar_t* c = cs.data_ptr<scalar_t>() + t * B * HT;
      scalar_t* h = hs.data_ptr<scalar_t>() + t * B * HT;
      at::parallel_for(0, B, grain(4 * HT), [&](int64_t b0, int64_t b1) {
        for (int64_t b = b0; b < b1; ++b) {
          tracker_fwd_row<scalar_t>(HT, pp + b * 4 * HT, gb + p.buf[t * B + b] * 4 * HT, bt,
                                    c_prev + b * HT, gp + b * 4 * HT, c + b * HT, h + b * HT);
        }
      });
    }
    const int64_t o = p.off[t], R = p.off[t + 1] - o;
    if (R > 0) {
      gather_reduce<scalar_t>(p, t, H, HT, h_pool, w.tracker ? hs.data_ptr<scalar_t>() : nullptr,
                              xk.data_ptr<scalar_t>() + o * K);
      Tensor gr = gates.narrow(0, o, R);
      const Tensor pre = reduce_mm.product(xk.narrow(0, o, R));
      const scalar_t* pp = pre.data_ptr<scalar_t>();
      scalar_t* lp = gr.data_ptr<scalar_t>();
      at::parallel_for(0, R, grain(5 * H), [&](int64_t r0, int64_t r1) {
        for (int64_t r = r0; r < r1; ++r) {
          const int64_t out = p.out(o + r);
          reduce_fwd_row<scalar_t>(H, pp + r * 5 * H, bl, lp + r * 5 * H, c_pool + p.left[o + r] * H,
                                   c_pool + p.right[o + r] * H, h_pool + out * H, c_pool + out * H);
        }
      });
    }
  }
}

using Outputs10 = std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor>;

using Outputs8 = std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor>;

// Returns (h, c (B, H), hs (T, B, HT), ph, pc (P, H), gates (RM, 5H), acts (T, B, 4HT), cs (T, B, HT));
// without a tracker hs, acts, cs are empty (0,).
Outputs8 spinn_fwd(const Tensor& buffers, const Tensor& null, const Tensor& transitions, const Tensor& w_l,
                    const std::optional<Tensor>& b_l, const Tensor& w_r, const std::optional<Tensor>& w_t,
                    const std::optional<Tensor>& w_ih, const std::optional<Tensor>& w_hh,
                    const std::optional<Tensor>& b_ih, const std::optional<Tensor>& b_hh) {
  TORCH_CHECK_VALUE(buffers.dim() == 3 && buffers.size(2) % 2 == 0,
                    "rnnfast_C: buffers: expected shape (B, N, 2·H), got ", buffers.sizes());
  TORCH_CHECK_TYPE(buffers.scalar_type() == at::kFloat || buffers.scalar_type() == at::kDouble,
                   "rnnfast_C: buffers: expected float32 or float64, got ", buffers.scalar_type());
  check_float("buffers", buffers, buffers);
  const int64_t B = buffers.size(0), N = buffers.size(1), H = buffers.size(2) / 2;
  check_shape("null", null, buffers, {B, 2 * H});
  TORCH_CHECK_VALUE(transitions.dim() == 2 && transitions.size(1) == B, "rnnfast_C: transitions: expected (T, B=", B,
                    "), got ", transitions.sizes());
  const Plan p = make_plan(transitions, N);
  const Weights w = weights(buffers, H, w_l, w_r, w_t, w_ih, w_hh);
  const int64_t T = p.T, HT = w.HT, K = 2 * H + HT, RM = max_reduce_rows(T, B, N), P = (1 + N) * B + RM;
  // Absent biases are zeros here: the pointwise loops then have no branch.
  Tensor bias_l = at::zeros({5 * H}, buffers.options());
  if (b_l.has_value()) {
    check_shape("b_l", *b_l, buffers, {5 * H});
    bias_l = b_l->contiguous();
  }
  Tensor bias_trk = at::zeros({4 * HT}, buffers.options());
  TORCH_CHECK_VALUE(b_ih.has_value() == b_hh.has_value(), "rnnfast_C: b_ih, b_hh: expected both or neither");
  if (w.tracker && b_ih.has_value()) {
    check_shape("b_ih", *b_ih, buffers, {4 * HT});
    check_shape("b_hh", *b_hh, buffers, {4 * HT});
    bias_trk = (*b_ih + *b_hh).contiguous();
  }
  const auto opts = buffers.options();
  Tensor ph = new_output({P, H}, opts), pc = new_output({P, H}, opts);
  {
    const Tensor leaves = buffers.transpose(0, 1);  // (N, B, 2H)
    ph.narrow(0, 0, B).copy_(null.narrow(1, 0, H));
    pc.narrow(0, 0, B).copy_(null.narrow(1, H, H));
    ph.narrow(0, B, N * B).view({N, B, H}).copy_(leaves.narrow(2, 0, H));
    pc.narrow(0, B, N * B).view({N, B, H}).copy_(leaves.narrow(2, H, H));
  }
  Tensor gates = new_output({RM, 5 * H}, opts);
  // Custom-op outputs may not alias one another: a fresh empty tensor per absent output.
  Tensor acts = at::empty({0}, opts), cs = at::empty({0}, opts), hs = at::empty({0}, opts);
  Workspace ws({p.total() * K, w.tracker ? T * B * K : 0}, buffers.scalar_type());
  Tensor xk = ws.take({p.total(), K}), xs = ws.take({w.tracker ? T * B * K : 0});
  if (w.tracker) {
    xs = xs.view({T, B, K});
    acts = new_output({T, B, 4 * HT}, opts);
    cs = new_output({T, B, HT}, opts);
    hs = new_output({T, B, HT}, opts);
  }
  AT_DISPATCH_FLOATING_TYPES(buffers.scalar_type(), "spinn_fwd", [&] {
    forward_loop<scalar_t>(p, w, bias_l, bias_trk, ph, pc, xk, gates, xs, acts, cs, hs);
  });
  gates.narrow(0, p.total(), RM - p.total()).zero_();  // rows no reduce writes: every element defined
  ph.narrow(0, p.out(p.total()), RM - p.total()).zero_();
  pc.narrow(0, p.out(p.total()), RM - p.total()).zero_();
  const Tensor root = at::from_blob(const_cast<int64_t*>(p.root.data()), {B}, at::kLong);
  Tensor h = new_output({B, H}, opts), c = new_output({B, H}, opts);
  at::index_select_out(h, ph, 0, root);
  at::index_select_out(c, pc, 0, root);
  return {h, c, hs, ph, pc, gates, acts, cs};
}

// ---------------------------------------------------------------------------------------------
// Backward.

template <typename scalar_t>
void backward_loop(const Plan& p, const Weights& w, const Tensor& pc, const Tensor& gates, const Tensor& acts,
                   const Tensor& cs, Tensor& dph, Tensor& dpc, Tensor& d_all, Tensor& dhs, Tensor& dg) {
  const int64_t T = p.T, B = p.B, H = w.H, HT = w.HT, K = 2 * H + HT;
  scalar_t* dh_pool = dph.data_ptr<scalar_t>();
  scalar_t* dc_pool = dpc.data_ptr<scalar_t>();
  const scalar_t* c_pool = pc.data_ptr<scalar_t>();
  const scalar_t* li = gates.data_ptr<scalar_t>();
  // The NN products d·W run as x·(Wᵀ)ᵀ with Wᵀ copied contiguous once.
  const LinearNT reduce_mm(contiguous_2d(w.wk.t()), p.mean_rows(), /*uses=*/p.T, step_dnnl_min_work());
  std::optional<LinearNT> tracker_mm;
  Tensor dh, dc, c0;
  if (w.tracker) {
    tracker_mm.emplace(contiguous_2d(w.wtr.t()), B, /*uses=*/p.T, step_dnnl_min_work());
    c0 = at::zeros({B, HT}, dph.options());
    dh = at::zeros({B, HT}, dph.options());
    dc = at::zeros({B, HT}, dph.options());
  }
  for (int64_t t = T - 1; t >= 0; --t) {
    const int64_t o = p.off[t], R = p.off[t + 1] - o;
    if (R > 0) {
      scalar_t* d = d_all.data_ptr<scalar_t>() + o * 5 * H;
      at::parallel_for(0, R, grain(5 * H), [&](int64_t r0, int64_t r1) {
        for (int64_t r = r0; r < r1; ++r) {
          const int64_t out = p.out(o + r), l = p.left[o + r], rr = p.right[o + r];
          reduce_bwd_row<scalar_t>(H, dh_pool + out * H, dc_pool + out * H, li + (o + r) * 5 * H, c_pool + l * H,
                                   c_pool + rr * H, c_pool + out * H, d + r * 5 * H, dc_pool + l * H,
                                   dc_pool + rr * H);
        }
      });
      const Tensor dxr = reduce_mm.product(d_all.narrow(0, o, R));
      const scalar_t* dxp = dxr.data_ptr<scalar_t>();
      scalar_t* dht = w.tracker ? dhs.data_ptr<scalar_t>() + t * B * HT : nullptr;
      // Rows are distinct within a step (each example's own): the scatters run in parallel.
      at::parallel_for(0, R, copy_grain(K), [&](int64_t r0, int64_t r1) {
        scatter_add<scalar_t, 1>(r0, r1, H, dh_pool, p.left.data() + o, dxp, K);
        scatter_add<scalar_t, 1>(r0, r1, H, dh_pool, p.right.data() + o, dxp + H, K);
        if (dht != nullptr) scatter_add<scalar_t, 1>(r0, r1, HT, dht, p.ex.data() + o, dxp + 2 * H, K);
      });
    }
    if (w.tracker) {
      scalar_t* dhp = dh.data_ptr<scalar_t>();
      scalar_t* dcp = dc.data_ptr<scalar_t>();
      const scalar_t* dht = dhs.data_ptr<scalar_t>() + t * B * HT;
      const scalar_t* act = acts.data_ptr<scalar_t>() + t * B * 4 * HT;
      const scalar_t* c = cs.data_ptr<scalar_t>() + t * B * HT;
      const scalar_t* c_prev = t > 0 ? cs.data_ptr<scalar_t>() + (t - 1) * B * HT : c0.data_ptr<scalar_t>();
      Tensor dgt = dg[t];
      scalar_t* dgp = dgt.data_ptr<scalar_t>();
      at::parallel_for(0, B, grain(4 * HT), [&](int64_t b0, int64_t b1) {
        for (int64_t b = b0; b < b1; ++b) {
          add_row(HT, dhp + b * HT, dht + b * HT);
          tracker_bwd_row<scalar_t>(HT, dhp + b * HT, dcp + b * HT, act + b * 4 * HT, c + b * HT,
                                    c_prev + b * HT, dgp + b * 4 * HT);
        }
      });
      const Tensor dxt = tracker_mm->product(dgt);
      const scalar_t* dxp = dxt.data_ptr<scalar_t>();
      at::parallel_for(0, B, copy_grain(K), [&](int64_t b0, int64_t b1) {
        // stk interleaves top and second per example, as the product's row b holds them side by side.
        scatter_add<scalar_t, 2>(b0, b1, H, dh_pool, p.stk.data() + 2 * t * B, dxp, K);
        for (int64_t b = b0; b < b1; ++b) copy_row(HT, dhp + b * HT, dxp + b * K + 2 * H);
      });
    }
  }
}

// Returns (d_buffers (B, N, 2H), d_null (B, 2H), dw_l, db_l, dw_r, dw_t, dw_ih, dw_hh, db_ih, db_hh); absent
// parameters get empty (0,) tensors. grad_hs (T, B, HT): the gradient of the tracker's h outputs, or none.
Outputs10 spinn_bwd(const Tensor& grad_h, const Tensor& grad_c, const std::optional<Tensor>& grad_hs,
                    const Tensor& transitions, const Tensor& ph, const Tensor& pc, const Tensor& gates,
                    const Tensor& acts, const Tensor& cs, const Tensor& hs, const Tensor& w_l, bool has_b_l,
                    const Tensor& w_r, const std::optional<Tensor>& w_t, const std::optional<Tensor>& w_ih,
                    const std::optional<Tensor>& w_hh, bool has_b_ih) {
  TORCH_CHECK_VALUE(grad_h.dim() == 2, "rnnfast_C: grad_h: expected (B, H), got ", grad_h.sizes());
  TORCH_CHECK_TYPE(ph.scalar_type() == at::kFloat || ph.scalar_type() == at::kDouble,
                   "rnnfast_C: ph: expected float32 or float64, got ", ph.scalar_type());
  const int64_t B = grad_h.size(0), H = grad_h.size(1);
  TORCH_CHECK_VALUE(transitions.dim() == 2 && transitions.size(1) == B, "rnnfast_C: transitions: expected (T, B=", B,
                    "), got ", transitions.sizes());
  const int64_t T = transitions.size(0);
  TORCH_CHECK_VALUE(gates.dim() == 2, "rnnfast_C: gates: expected (RM, 5·H), got ", gates.sizes());
  const int64_t RM = gates.size(0), P = ph.size(0);
  TORCH_CHECK_VALUE(ph.dim() == 2 && B > 0 && (P - RM) % B == 0 && P - RM >= B,
                    "rnnfast_C: ph: expected ((1 + N)·B + RM, H), got ", ph.sizes());
  const int64_t N = (P - RM) / B - 1;
  TORCH_CHECK_VALUE(RM == max_reduce_rows(T, B, N), "rnnfast_C: gates: expected ", max_reduce_rows(T, B, N),
                    " rows for T=", T, ", B=", B, ", N=", N, ", got ", RM);
  const Plan p = make_plan(transitions, N);
  const Weights w = weights(ph, H, w_l, w_r, w_t, w_ih, w_hh);
  const int64_t HT = w.HT, K = 2 * H + HT, TB = w.tracker ? T * B : 0, LB = (1 + N) * B;
  check_shape("grad_h", grad_h, ph, {B, H});
  check_shape("grad_c", grad_c, ph, {B, H});
  check_shape("ph", ph, ph, {P, H});
  check_shape("pc", pc, ph, {P, H});
  check_shape("gates", gates, ph, {RM, 5 * H});
  const auto opts = ph.options();
  const Tensor h_pool = ph.contiguous(), li = gates.contiguous(), p_c = pc.contiguous();
  Tensor a, c_s, h_s;
  if (w.tracker) {
    check_shape("acts", acts, ph, {T, B, 4 * HT});
    check_shape("cs", cs, ph, {T, B, HT});
    check_shape("hs", hs, ph, {T, B, HT});
    a = acts.contiguous();
    c_s = cs.contiguous();
    h_s = hs.contiguous();
  }
  const int64_t R = p.total();
  Workspace ws({P * H, P * H, R * 5 * H, R * K, TB * HT, TB * 4 * HT, TB * K, w.tracker ? LB * 4 * HT : 0},
               ph.scalar_type());
  Tensor dph = ws.take({P, H}).zero_(), dpc = ws.take({P, H}).zero_();
  Tensor d_all = ws.take({R, 5 * H}), xk = ws.take({R, K});
  Tensor dhs = ws.take({TB * HT}), dg = ws.take({TB * 4 * HT}), xs = ws.take({TB * K});
  Tensor dg_buf = ws.take({w.tracker ? LB * 4 * HT : 0});
  const Tensor root = at::from_blob(const_cast<int64_t*>(p.root.data()), {B}, at::kLong);
  dph.index_add_(0, root, grad_h);
  dpc.index_add_(0, root, grad_c);
  if (w.tracker) {
    dhs = dhs.view({T, B, HT});
    dg = dg.view({T, B, 4 * HT});
    xs = xs.view({T, B, K});
    if (grad_hs.has_value()) {
      check_shape("grad_hs", *grad_hs, ph, {T, B, HT});
      dhs.copy_(*grad_hs);
    } else {
      dhs.zero_();
    }
  }
  AT_DISPATCH_FLOATING_TYPES(ph.scalar_type(), "spinn_bwd", [&] {
    backward_loop<scalar_t>(p, w, p_c, li, a, c_s, dph, dpc, d_all, dhs, dg);
    // The products' inputs again, for the weight gradients.
    const scalar_t* hp = h_pool.data_ptr<scalar_t>();
    const scalar_t* hsp = w.tracker ? h_s.data_ptr<scalar_t>() : nullptr;
    for (int64_t t = 0; t < T; ++t) {
      if (w.tracker) gather_tracker<scalar_t>(p, t, H, HT, hp, hsp, xs.data_ptr<scalar_t>() + t * B * K);
      if (p.off[t + 1] > p.off[t]) gather_reduce<scalar_t>(p, t, H, HT, hp, hsp, xk.data_ptr<scalar_t>() + p.off[t] * K);
    }
  });
  // Weight gradients: one GEMM each over all rows.
  auto none = [&] { return at::empty({0}, opts); };
  Tensor dwk = at::empty({5 * H, K}, opts);
  mm_tn(dwk, d_all, xk);
  Tensor dw_l = dwk.narrow(1, 0, H).contiguous(), dw_r = dwk.narrow(1, H, H).contiguous();
  Tensor db_l = has_b_l ? d_all.sum(0) : none();
  Tensor dw_t = none(), dw_ih = none(), dw_hh = none(), db_ih = none(), db_hh = none();
  if (w.tracker) {
    dw_t = dwk.narrow(1, 2 * H, HT).contiguous();
    const Tensor dg_all = dg.view({T * B, 4 * HT});
    // The buffer-top part: gate gradients summed per null/leaf row, then one GEMM each way.
    dg_buf = dg_buf.view({LB, 4 * HT}).zero_();
    AT_DISPATCH_FLOATING_TYPES(ph.scalar_type(), "spinn_bwd_buf", [&] {
      scalar_t* dst = dg_buf.data_ptr<scalar_t>();
      const scalar_t* src = dg_all.data_ptr<scalar_t>();
      // An example's buffer tops are its own rows (slot·B + b): parallel over examples.
      at::parallel_for(0, B, copy_grain(T * 4 * HT), [&](int64_t b0, int64_t b1) {
        for (int64_t t = 0; t < T; ++t) {
          scatter_add<scalar_t, 1>(t * B + b0, t * B + b1, 4 * HT, dst, p.buf.data(), src, 4 * HT);
        }
      });
    });
    Tensor d_leaves = dph.narrow(0, 0, LB);
    mm_nt(d_leaves, dg_buf, w.w_buf.t().contiguous(), /*accumulate=*/true);
    Tensor dwtr = at::empty({4 * HT, K}, opts), dw_buf = at::empty({4 * HT, H}, opts);
    mm_tn(dwtr, dg_all, xs.view({T * B, K}));
    mm_tn(dw_buf, dg_buf, h_pool.narrow(0, 0, LB));
    dw_ih = at::cat({dw_buf, dwtr.narrow(1, 0, 2 * H)}, 1);
    dw_hh = dwtr.narrow(1, 2 * H, HT).contiguous();
    if (has_b_ih) {
      db_ih = dg_all.sum(0);
      db_hh = db_ih.clone();
    }
  }
  Tensor d_buffers = new_output({B, N, 2 * H}, opts), d_null = new_output({B, 2 * H}, opts);
  {
    Tensor dl = d_buffers.transpose(0, 1);  // (N, B, 2H)
    dl.narrow(2, 0, H).copy_(dph.narrow(0, B, N * B).view({N, B, H}));
    dl.narrow(2, H, H).copy_(dpc.narrow(0, B, N * B).view({N, B, H}));
    d_null.narrow(1, 0, H).copy_(dph.narrow(0, 0, B));
    d_null.narrow(1, H, H).copy_(dpc.narrow(0, 0, B));
  }
  return {d_buffers, d_null, dw_l, db_l, dw_r, dw_t, dw_ih, dw_hh, db_ih, db_hh};
}

}  // namespace

TORCH_LIBRARY_IMPL(rnnfast_C, CPU, m) {
  m.impl("spinn_fwd", &spinn_fwd);
  m.impl("spinn_bwd", &spinn_bwd);
}

}  // namespace rnnfast
