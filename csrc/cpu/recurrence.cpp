// CPU recurrence: one forward and one backward time loop, templated on the cell (cells.h).
//
// Op contract, saved-activation layout and lengths/reverse semantics: rnnfast/ops/recurrence/common.py.
// Dimensions: T time, B batch, H hidden, G gates, S saved per unit, N = P (projection) or H, the width
// of the state h and of the outputs y.
//
// Per step, forward: gh = h·W_hhᵀ (StepMatmul), then the cell's pointwise code per valid row, then the
// projection h = u·W_hrᵀ for an LSTM with proj_size. Backward walks the steps in the opposite order:
// pointwise gate gradients per row, dh_{t-1} = dgh·W_hh; dW_hh, db_hh and dW_hr are GEMMs after the loop.
// At small batch, with several threads, both loops instead run on a team of threads that stays
// together for the whole call, each thread owning a slice of the hidden units (team_parts()).
#include <torch/library.h>

#include <unistd.h>

#include <vector>

#include "cells.h"
#include "common.h"
#include "gemm.h"
#include "matmul.h"
#include "team.h"

namespace rnnfast {
namespace {

using at::Tensor;

// ---------------------------------------------------------------------------------------------
// Pointwise over the B rows of one step (ISA-cloned; the cell code is inlined into each clone).

template <typename Cell, typename scalar_t, bool Save>
RNNFAST_CLONES void forward_rows(int64_t b0, int64_t b1, int64_t H, int64_t u0, int64_t u1, const uint8_t* valid,
                                 const scalar_t* gi, const scalar_t* gh, const scalar_t* bh, const scalar_t* hp,
                                 int64_t ldh, scalar_t* c, scalar_t* hout, scalar_t* ws) {
  constexpr int64_t G = Cell::G, S = Cell::S;
  for (int64_t b = b0; b < b1; ++b) {
    scalar_t* wsb = Save ? ws + b * S * H : nullptr;
    if (valid != nullptr && !valid[b]) {
      // Not computed: the state stays frozen. Saved values are zeroed so that nothing downstream
      // can read uninitialised memory.
      if (Save) {
        for (int64_t k = 0; k < S; ++k) std::fill(wsb + k * H + u0, wsb + k * H + u1, scalar_t(0));
      }
      continue;
    }
    FwdRow<scalar_t> row{gi + b * G * H + u0, gh + b * G * H + u0, bh + u0, hp + b * ldh + u0,
                         c ? c + b * H + u0 : nullptr, hout + b * H + u0, Save ? wsb + u0 : nullptr};
    Cell::template forward<scalar_t, Save>(row, u1 - u0, H);
  }
}

template <typename Cell, typename scalar_t>
RNNFAST_CLONES void backward_rows(int64_t b0, int64_t b1, int64_t H, int64_t u0, int64_t u1, const uint8_t* valid,
                                  const scalar_t* dh, const scalar_t* ws, const scalar_t* y, int64_t ldy,
                                  const scalar_t* const* hp, const scalar_t* const* cp, scalar_t* dc, scalar_t* dgi,
                                  scalar_t* dgh, scalar_t* direct, scalar_t* u) {
  constexpr int64_t G = Cell::G, S = Cell::S;
  for (int64_t b = b0; b < b1; ++b) {
    scalar_t* dgib = dgi + b * G * H;
    scalar_t* dghb = dgh + b * G * H;
    scalar_t* ub = u ? u + b * H : nullptr;
    if (valid != nullptr && !valid[b]) {
      for (int64_t k = 0; k < G; ++k) {
        std::fill(dgib + k * H + u0, dgib + k * H + u1, scalar_t(0));
        if (dgh != dgi) std::fill(dghb + k * H + u0, dghb + k * H + u1, scalar_t(0));
      }
      if (ub) std::fill(ub + u0, ub + u1, scalar_t(0));
      continue;
    }
    BwdRow<scalar_t> row{dh + b * H + u0, ws ? ws + b * S * H + u0 : nullptr, y + b * ldy + u0, hp ? hp[b] + u0 : nullptr,
                         cp ? cp[b] + u0 : nullptr, dc ? dc + b * H + u0 : nullptr, dgib + u0, dghb + u0,
                         direct ? direct + b * H + u0 : nullptr, ub ? ub + u0 : nullptr};
    Cell::template backward<scalar_t>(row, u1 - u0, H);
  }
}

// Runs fn(b0, b1) over the B rows of a step, on all threads when the step has enough elements: from
// B·G·H = 16K (e.g. B=64, H=256 GRU: ~40 µs of pointwise per step, 20% of the step's GEMM on one thread).
template <typename F>
void for_rows(int64_t B, int64_t GH, const F& fn) {
  constexpr int64_t kParallelElems = 16384;
  if (B * GH >= kParallelElems && B > 1 && at::get_num_threads() > 1) {
    at::parallel_for(0, B, std::max<int64_t>(1, 4096 / GH), fn);
  } else {
    fn(0, B);
  }
}

// ---------------------------------------------------------------------------------------------
// Time loops.

struct Steps {
  int64_t T, B;
  bool reverse;
  std::vector<int64_t> len;  // empty: every step valid

  Steps(int64_t T_, int64_t B_, bool rev, const c10::optional<Tensor>& lengths) : T(T_), B(B_), reverse(rev) {
    if (lengths.has_value() && lengths->defined()) {
      Tensor l = lengths->to(at::kLong).contiguous();
      const int64_t* p = l.data_ptr<int64_t>();
      len.resize(B);
      for (int64_t b = 0; b < B; ++b) len[b] = std::min<int64_t>(std::max<int64_t>(p[b], 0), T);
    }
  }
  // The rows a step's products must cover: up to the last row still running at step t. Rows past it
  // are finished and their products would be discarded; with PackedSequence input (rows sorted by
  // length) this is the packed batch size of step t, so no time goes into the padding.
  int64_t rows(int64_t t) const {
    if (len.empty()) return B;
    int64_t r = B;
    while (r > 0 && len[r - 1] <= t) --r;
    return r;
  }
  bool ragged() const { return !len.empty(); }
  int64_t length(int64_t b) const { return len.empty() ? T : len[b]; }
  // Fills valid[b] for step t; returns nullptr when every row is valid.
  const uint8_t* mask(int64_t t, uint8_t* valid) const {
    if (len.empty()) return nullptr;
    bool all = true;
    for (int64_t b = 0; b < B; ++b) {
      valid[b] = t < len[b];
      all = all && valid[b];
    }
    return all ? nullptr : valid;
  }
};

// ---------------------------------------------------------------------------------------------
// Persistent team loops (team.h): the hidden units split into `parts` slices, one per thread for the
// whole call. Forward, a thread owns its units' gate columns of W_hh (packed once, kept in its L2),
// their cell state and their part of h; one barrier per step publishes the new h. Backward, it owns
// the same units' pointwise gradients and their columns of dh_{t-1} = dgh·W_hh, which need every
// unit's dgh: one barrier per step, between the two.

// How a loop is split over threads: a team (team_parts()), a row split (row_parts()) or the plain loop
// (1), from the call's sizes, the thread count, the vector width and L2 only; flags(path=...) forces one
// where it can run. Each constant's reason is beside it; the measurements behind them: docs/cpu.md,
// "Thresholds".

// Forced paths (Options): a forced path that cannot run a call leaves it to the plain loop.
inline bool path_is(PathChoice p) { return forced_path() == p; }
inline bool path_forced() { return forced_path() != PathChoice::kAuto; }

// Row split: with several threads and a W_hh that fits a core's L2, the plain loop runs on one thread per
// slice of the batch rows, each its own time loop from start to end: nothing crosses between cores and no
// thread waits for another. Each thread reads the whole of W_hh (its own copy in its L2) through the
// blocked kernel, which wants a copy of W_hh (kCopyMinSteps). A slice takes kRowSplitMinRows rows (from
// 16 rows: fewer lost to a team), or kRowSplitFewRows below that with a W_hh under a quarter of L2 (two
// threads' shares of a small W then cost less than a team's barrier per step).
constexpr int64_t kRowSplitMinRows = 8;
constexpr int64_t kRowSplitFewRows = 4;
// Whether weights of `bytes` take a split of fewer than 2·kRowSplitMinRows rows.
inline bool few_rows_split_fits(int64_t bytes) { return 4 * bytes < l2_bytes(); }

// Whether this process can split a loop over threads at all.
inline bool threads_to_split() { return at::get_num_threads() > 1 && !at::in_parallel_region(); }

template <typename scalar_t>
int64_t row_parts(int64_t T, int64_t B, int64_t G, int64_t H, int64_t N, bool proj) {
  if (path_forced()) {
    if (!path_is(PathChoice::kRows) || B < 2 || !threads_to_split()) return 1;
    return std::min<int64_t>({at::get_num_threads(), B, kMaxTeam});
  }
  if (T < kCopyMinSteps || B < 2 * kRowSplitFewRows || !threads_to_split()) return 1;
  const int64_t work = G * H * N, pwork = proj ? N * H : 0;
  if (work > small_max_work() || pwork > small_max_work()) return 1;
  const int64_t bytes = (work + pwork) * static_cast<int64_t>(sizeof(scalar_t));
  // From 2·blas_min_rows() rows the plain loop's products are GEMMs on all threads: the split only where
  // two copies of W fit a core's L2.
  if (bytes > l2_bytes() || (B >= 2 * blas_min_rows() && 2 * bytes > l2_bytes())) return 1;
  const bool few = B < 2 * kRowSplitMinRows;
  if (few && !few_rows_split_fits(bytes)) return 1;
  return std::min<int64_t>({at::get_num_threads(), B / (few ? kRowSplitFewRows : kRowSplitMinRows), kMaxTeam});
}

// The first row of slice p of `parts`: near p·B/parts, on a multiple of 4 (the blocked kernel's rows)
// where the slices have 8 rows or more, else evenly.
inline int64_t row_begin(int64_t B, int64_t parts, int64_t p) {
  if (p >= parts) return B;
  return B < 8 * parts ? B * p / parts : (B * p / parts + 2) / 4 * 4;
}

inline int64_t max_row_slice(int64_t B, int64_t parts) {
  int64_t most = 0;
  for (int64_t p = 0; p < parts; ++p) most = std::max(most, row_begin(B, parts, p + 1) - row_begin(B, parts, p));
  return most;
}

// f(b0, b1) on all B rows, or with parts > 1 on each slice of rows (row_begin()) on a thread of its own.
template <typename F>
void for_row_slices(int64_t B, int64_t parts, const F& f) {
  if (parts <= 1) return f(0, B);
  at::parallel_for(0, parts, 1, [&](int64_t p0, int64_t p1) {
    for (int64_t p = p0; p < p1; ++p) f(row_begin(B, parts, p), row_begin(B, parts, p + 1));
  });
}

// Teams. A team pays a barrier per step (~1 µs) and moves B·H values between cores; it wins where a step
// is a few µs to a few hundred and each member's slice of W_hh stays in its own L2:
// - kTeamMinWork multiply-adds a step at least, and G·H >= kTeamMinGates (an RNN of H=128 moves as many
//   values as it computes);
// - fewer than kTeamMaxRows rows (from there the plain loop's products are GEMMs on all threads), or up
//   to kTeamSmallWMaxRows with a W_hh of at most kTeamSmallW values;
// - with W_hh beyond the L2s, only 2 to team_beyond_l2_max_rows() rows (the slices stream from L3; the
//   plain loop's GEMMs re-read W no worse from there at more rows), and not from 16 rows where the plain
//   loop's products go to a library (G·H² > small_max_work());
// - no projection (it mixes every unit into every unit of h: a second barrier per step), and T >= 4
//   (packing the slices pays from a few steps).
constexpr int64_t kTeamMinWork = int64_t{1} << 15;
constexpr int64_t kTeamMinGates = 256;
constexpr int64_t kTeamMaxRows = 64;
constexpr int64_t kTeamSmallWMaxRows = 128;
constexpr int64_t kTeamSmallW = int64_t{1} << 16;
constexpr int64_t kTeamMinSteps = 4;
// With AVX2 the blocked kernel keeps the plain loop's products at any size, so slices beyond L2 stay
// ahead of it up to 32 rows; with AVX-512 up to 8.
inline int64_t team_beyond_l2_max_rows() { return isa_level() == 3 ? 32 : 8; }

// The panel width of the forward team's products over its slices: packed_width(), or half of it where a
// forced team needs two slices of an H below two whole panels. The backward's products run over all H
// columns and keep packed_width().
template <typename scalar_t>
int64_t team_panel_width(int64_t H) {
  const int64_t PW = packed_width<scalar_t>();
  return H < 2 * PW && path_is(PathChoice::kTeam) ? half_packed_width<scalar_t>() : PW;
}

template <typename scalar_t>
int64_t team_parts(int64_t T, int64_t B, int64_t G, int64_t H, bool proj) {
  if (proj || !team_available()) return 1;
  const int64_t parts = std::min<int64_t>({at::get_num_threads(), H / team_panel_width<scalar_t>(H), kMaxTeam});
  if (path_forced()) return path_is(PathChoice::kTeam) && parts >= 2 ? parts : 1;
  if (T < kTeamMinSteps || B * G * H * H < kTeamMinWork || G * H < kTeamMinGates || parts < 2) return 1;
  if (row_parts<scalar_t>(T, B, G, H, H, proj) > 1) return 1;  // the row split goes first
  if (B >= kTeamMaxRows && !(B <= kTeamSmallWMaxRows && G * H * H <= kTeamSmallW)) return 1;
  if (B >= 16 && G * H * H > small_max_work()) return 1;
  const bool beyond_l2 = G * H * H * static_cast<int64_t>(sizeof(scalar_t)) / parts > l2_bytes();
  if (beyond_l2 && (B < 2 || B > team_beyond_l2_max_rows())) return 1;
  return parts;
}

// The forward's team: as team_parts(), except for one row with a W_hh the matvec path takes (G·H² >=
// matvec_min_work()) over fewer than kTeamMatvecMinSteps steps, where packing the slices costs more than
// the team gains over matvec(), which reads W_hh in place on all threads. The backward keeps its team.
constexpr int64_t kTeamMatvecMinSteps = 128;

template <typename scalar_t>
int64_t forward_team_parts(int64_t T, int64_t B, int64_t G, int64_t H, bool proj) {
  if (!path_forced() && B == 1 && T < kTeamMatvecMinSteps && G * H * H >= matvec_min_work()) return 1;
  return team_parts<scalar_t>(T, B, G, H, proj);
}

// The backward's row split also from 2 rows, one or more a thread, in place of a team and with a W_hh
// below a quarter of L2 (as row_parts() below 16 rows): there it beat the team in the backward, though
// not in the forward.
template <typename scalar_t>
int64_t backward_row_parts(int64_t T, int64_t B, int64_t G, int64_t H, int64_t N, bool proj) {
  const int64_t parts = row_parts<scalar_t>(T, B, G, H, N, proj);
  if (path_forced() || parts > 1 || B < 2 || B >= 2 * kRowSplitFewRows) return parts;
  if (T < kCopyMinSteps) return 1;
  if (!few_rows_split_fits(G * H * N * static_cast<int64_t>(sizeof(scalar_t)))) return 1;
  if (team_parts<scalar_t>(T, B, G, H, proj) < 2) return 1;  // only in place of a team
  return std::min<int64_t>({at::get_num_threads(), B, kMaxTeam});
}

template <typename scalar_t>
int64_t backward_team_parts(int64_t T, int64_t B, int64_t G, int64_t H, bool proj) {
  return backward_row_parts<scalar_t>(T, B, G, H, H, proj) > 1 ? 1 : team_parts<scalar_t>(T, B, G, H, proj);
}
// Values of a 64-byte cache line.
template <typename scalar_t>
constexpr int64_t kLineUnits = 64 / static_cast<int64_t>(sizeof(scalar_t));

// The team's slices of H units: slice p of `parts` (parts <= H / PW) holds [u[p], u[p + 1]). A member's
// product costs its slice's panels of PW columns (a part-filled panel computes its zero columns too) and
// its pointwise pass and sums cost its units, and every step waits for the slowest member. The boundaries
// are the multiples of `align` units (a cache line, so that no two members write one line of h) nearest
// to p·H/parts, which even out the units; where that leaves a slice with more panels than the multiples
// of PW nearest to p·H/parts would (fewer panels, uneven units), those are taken instead (docs/cpu.md).
inline std::vector<int64_t> team_slices(int64_t H, int64_t parts, int64_t PW, int64_t align) {
  std::vector<int64_t> even(parts + 1), panels(parts + 1);
  for (int64_t p = 0; p <= parts; ++p) {
    even[p] = p == parts ? H : std::min(H, (H * p / parts + align / 2) / align * align);
    panels[p] = p == parts ? H : (H * p / parts + PW / 2) / PW * PW;
  }
  auto most_panels = [&](const std::vector<int64_t>& u) {
    int64_t most = 0;
    for (int64_t p = 0; p < parts; ++p) most = std::max(most, ceil_div(u[p + 1] - u[p], PW));
    return most;
  };
  bool ok = most_panels(even) <= most_panels(panels);
  for (int64_t p = 0; p < parts; ++p) ok = ok && even[p + 1] > even[p];
  return ok ? even : panels;
}

template <typename Cell, typename scalar_t>
std::tuple<Tensor, Tensor, Tensor, Tensor> forward_impl(const Tensor& gi, const Tensor& h0,
                                                        const c10::optional<Tensor>& c0, const Tensor& w_hh,
                                                        const c10::optional<Tensor>& b_hh,
                                                        const c10::optional<Tensor>& w_hr, const Steps& st,
                                                        bool need_ws) {
  constexpr int64_t G = Cell::G, S = Cell::S;
  constexpr bool kLSTM = std::is_same<Cell, LSTMCell>::value;
  const int64_t T = st.T, B = st.B, GH = gi.size(2), H = GH / G, N = h0.size(1);
  const bool proj = w_hr.has_value() && w_hr->defined();
  const bool save = need_ws && S > 0;
  const int64_t parts = forward_team_parts<scalar_t>(T, B, G, H, proj);
  auto opts = gi.options();

  Tensor y = new_output({T, B, N}, opts);
  Tensor h_n = new_output({B, N}, opts);
  Tensor c_n = kLSTM ? new_output({B, H}, opts) : new_output({0}, opts);
  Tensor ws = need_ws ? new_output({T, B, S * H}, opts) : new_output({0}, opts);

  const bool has_bias = b_hh.has_value() && b_hh->defined();
  const Tensor bias = has_bias ? b_hh->contiguous() : Tensor();
  // The state h (B, N), the cell state c (B, H), gh (B, G·H), hnew (B, H) before the projection, hproj
  // (B, P), zeros for a missing bias.
  Tensor scratch;
  const auto buf = scratch_arrays<scalar_t, 6>(
      scratch, {B * N, kLSTM ? B * H : 0, B * GH, B * H, proj ? B * N : 0, has_bias ? 0 : GH}, opts);
  scalar_t* h_p = buf[0];
  scalar_t* c_p = buf[1];
  scalar_t* gh_p = buf[2];
  scalar_t* hnew_p = buf[3];
  copy_rows(h0, h_p);
  if (kLSTM) copy_rows(*c0, c_p);

  const scalar_t* gi_p = gi.data_ptr<scalar_t>();
  const scalar_t* bias_p = has_bias ? bias.data_ptr<scalar_t>() : buf[5];
  scalar_t* y_p = y.data_ptr<scalar_t>();
  scalar_t* ws_p = need_ws ? ws.data_ptr<scalar_t>() : nullptr;

  // The cell over rows [b0, b1) and units [u0, u1) of step t: gh and the state hp in, the new state
  // in hout, the saved activations of step t in ws.
  auto cell_step = [&](int64_t t, int64_t b0, int64_t b1, int64_t u0, int64_t u1, const uint8_t* m,
                       const scalar_t* ghr, const scalar_t* hp, scalar_t* hout) {
    const scalar_t* git = gi_p + t * B * GH;
    if (save) {
      forward_rows<Cell, scalar_t, true>(b0, b1, H, u0, u1, m, git, ghr, bias_p, hp, N, c_p, hout,
                                         ws_p + t * B * S * H);
    } else {
      forward_rows<Cell, scalar_t, false>(b0, b1, H, u0, u1, m, git, ghr, bias_p, hp, N, c_p, hout, nullptr);
    }
  };
  // y[t] and the next state from hfin (B, N), units [u0, u1): a row past its length gets zeros in y
  // and keeps the state `state` had (copied from `prev` when they differ).
  auto emit = [&](int64_t t, const uint8_t* m, const scalar_t* hfin, const scalar_t* prev, scalar_t* state,
                  int64_t u0, int64_t u1, int64_t b0, int64_t b1) {
    scalar_t* yt = y_p + t * B * N;
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t o = b * N;
      if (m == nullptr || m[b]) {
        std::copy(hfin + o + u0, hfin + o + u1, yt + o + u0);
        if (state != hfin) std::copy(hfin + o + u0, hfin + o + u1, state + o + u0);
      } else {
        std::fill(yt + o + u0, yt + o + u1, scalar_t(0));
        if (state != prev) std::copy(prev + o + u0, prev + o + u1, state + o + u0);
      }
    }
  };

  const scalar_t* h_last = h_p;  // where the final state is
  // Without a projection or lengths the new state of step t is y[t] itself: the cell writes it there
  // and step t + 1 reads it back, with no copies from a state buffer into y and back. On a 2-core Zen 5
  // EPYC (float32, T=50, op alone, paired rounds of benchmarks/cpu_env_ab.py against the copies, B=4-256,
  // H=64-512, all three cells): inference 1.00-1.38x (RNN B=256 H=128 1.38, GRU B=256 H=64 1.15, LSTM
  // B=256 H=64 1.09), training 0.98-1.10x (benchmarks/results/cpu-avx512-zen5-direct-y-ab-9259223-dirty.json).
  const bool direct = !proj && !st.ragged();
  // The state step s reads (h0 at the first step) and the one it writes.
  auto y_step = [&](int64_t s) { return y_p + (st.reverse ? T - 1 - s : s) * B * N; };
  auto state_in = [&](int64_t s) -> const scalar_t* { return s == 0 ? h_p : y_step(s - 1); };
  if (direct) h_last = y_step(T - 1);
  if (parts > 1) {
    // Slice p's factor for gate g: W_hh[g·H + u0 : g·H + u1, :]ᵀ (H, u1 - u0), in panels.
    const int64_t PW = team_panel_width<scalar_t>(H);
    const std::vector<int64_t> u = team_slices(H, parts, PW, kLineUnits<scalar_t>);
    std::vector<int64_t> off(parts + 1, 0);
    for (int64_t p = 0; p < parts; ++p) off[p + 1] = off[p] + G * ceil_div(u[p + 1] - u[p], PW) * H * PW;
    Tensor wpack = at::empty({off[parts]}, opts);
    scalar_t* wpack_p = wpack.data_ptr<scalar_t>();
    const scalar_t* w_p = w_hh.data_ptr<scalar_t>();
    std::vector<uint8_t> valid(parts * B);
    // h_p and hnew_p take turns as the state read and the state written.
    run_team(parts, [&](int64_t p0, int64_t p1, TeamMember& member) {
      for (int64_t p = p0; p < p1; ++p) {
        const int64_t gstride = ceil_div(u[p + 1] - u[p], PW) * H * PW;
        for (int64_t g = 0; g < G; ++g) {
          pack_panels(w_p + (g * H + u[p]) * H, 1, H, H, u[p + 1] - u[p], wpack_p + off[p] + g * gstride, PW);
        }
      }
      for (int64_t s = 0; s < T; ++s) {
        const int64_t t = st.reverse ? T - 1 - s : s;
        const scalar_t* cur = direct ? state_in(s) : s % 2 == 0 ? h_p : hnew_p;
        scalar_t* nxt = direct ? y_step(s) : s % 2 == 0 ? hnew_p : h_p;
        const uint8_t* m = st.mask(t, valid.data() + p0 * B);
        const int64_t rows = st.rows(t);
        for (int64_t p = p0; p < p1; ++p) {
          const int64_t np = ceil_div(u[p + 1] - u[p], PW);
          for (int64_t g = 0; g < G; ++g) {
            packed_mm_of_width<scalar_t>(PW, rows, H, cur, H, wpack_p + off[p] + g * np * H * PW, gh_p + g * H + u[p],
                                         GH, u[p + 1] - u[p], 0, np);
          }
        }
        cell_step(t, 0, B, u[p0], u[p1], m, gh_p, cur, nxt);
        if (!direct) emit(t, m, nxt, cur, nxt, u[p0], u[p1], 0, B);
        member.sync();
      }
    });
    if (!direct) h_last = T % 2 == 0 ? h_p : hnew_p;
  } else {
    // One loop over all rows, or (row_parts()) one per slice of rows on its own thread.
    const int64_t rparts = row_parts<scalar_t>(T, B, G, H, N, proj);
    const bool split = rparts > 1;
    const int64_t mrows = split ? max_row_slice(B, rparts) : B;  // the most rows of a slice
    StepMatmul<scalar_t> mm_hh(w_hh.t(), mrows, T, split);
    c10::optional<StepMatmul<scalar_t>> mm_hr;
    if (proj) mm_hr.emplace(w_hr->t(), mrows, T, split);
    scalar_t* hfin_p = proj ? buf[4] : hnew_p;
    auto run_rows = [&](int64_t b0, int64_t b1) {
      std::vector<uint8_t> valid(B);
      at::Tensor keep;  // the step product's buffer when it is not gh (StepMatmul::apply)
      for (int64_t s = 0; s < T; ++s) {
        const int64_t t = st.reverse ? T - 1 - s : s;
        const uint8_t* m = st.mask(t, valid.data());
        const int64_t rows = std::min(std::max(st.rows(t), b0), b1) - b0;
        const scalar_t* cur = direct ? state_in(s) : h_p;
        scalar_t* out = direct ? y_step(s) : hnew_p;
        if (split) {
          mm_hh.apply(cur + b0 * N, N, gh_p + b0 * GH, GH, rows);
          cell_step(t, b0, b1, 0, H, m, gh_p, cur, out);
        } else {
          const scalar_t* ghr = mm_hh.apply(cur, N, gh_p, GH, rows, &keep);
          // With lengths and without a projection each row's output and state copies follow its cell
          // on the same thread (the product has read h_p already): at B=256, H=256-512, 1.03-1.08x in
          // inference.
          for_rows(B, GH, [&](int64_t r0, int64_t r1) {
            cell_step(t, r0, r1, 0, H, m, ghr, cur, out);
            if (!proj && !direct) emit(t, m, hfin_p, h_p, h_p, 0, N, r0, r1);
          });
        }
        if (proj) mm_hr->apply(hnew_p + b0 * H, H, hfin_p + b0 * N, N, rows);
        if (!direct && (split || proj)) emit(t, m, hfin_p, h_p, h_p, 0, N, b0, b1);
      }
    };
    for_row_slices(B, rparts, run_rows);
  }
  std::copy(h_last, h_last + B * N, h_n.data_ptr<scalar_t>());
  if (kLSTM) std::copy(c_p, c_p + B * H, c_n.data_ptr<scalar_t>());
  return {y, h_n, c_n, ws};
}

template <typename Cell, typename scalar_t>
std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> backward_impl(
    const Tensor& grad_y, const Tensor& grad_hn, const c10::optional<Tensor>& grad_cn, const Tensor& h0,
    const c10::optional<Tensor>& c0, const Tensor& w_hh, const c10::optional<Tensor>& b_hh,
    const c10::optional<Tensor>& w_hr, const Tensor& y, const Tensor& ws, const Steps& st) {
  constexpr int64_t G = Cell::G, S = Cell::S;
  constexpr bool kLSTM = std::is_same<Cell, LSTMCell>::value;
  constexpr bool kGRU = std::is_same<Cell, GRUCell>::value;
  const int64_t T = st.T, B = st.B, GH = w_hh.size(0), H = GH / G, N = h0.size(1);
  const bool proj = w_hr.has_value() && w_hr->defined();
  const bool has_bias = b_hh.has_value() && b_hh->defined();
  auto opts = y.options();

  Tensor dgi = new_output({T, B, GH}, opts);
  Tensor dh0 = new_output({B, N}, opts);
  Tensor dc0 = kLSTM ? new_output({B, H}, opts) : new_output({0}, opts);
  Tensor dw_hh = new_output({GH, N}, opts);
  Tensor db_hh = has_bias ? new_output({GH}, opts) : new_output({0}, opts);
  Tensor dw_hr = proj ? new_output({N, H}, opts) : new_output({0}, opts);

  // Gradients w.r.t. W_hh·h + b_hh: the same as dgi except for the GRU's n gate (r·dn).
  Tensor dgh = kGRU ? BlockCache::get().empty({T, B, GH}, opts) : dgi;
  const int64_t parts = backward_team_parts<scalar_t>(T, B, G, H, proj);

  // dh (B, N), dc (B, H), dht (B, N) = dh incl. grad_y[t], du (B, H) after W_hr (dht without a
  // projection), the GRU's direct term (B, H), dhp (B, N) = dgh·W_hh.
  Tensor scratch;
  const auto buf = scratch_arrays<scalar_t, 6>(
      scratch, {B * N, kLSTM ? B * H : 0, B * N, proj ? B * H : 0, kGRU ? B * H : 0, B * N}, opts);
  copy_rows(grad_hn, buf[0]);
  if (kLSTM && grad_cn.has_value() && grad_cn->defined()) copy_rows(*grad_cn, buf[1]);
  Tensor d_hr = proj ? at::zeros({T, B, N}, opts) : Tensor();                       // dL/dh_t per step
  Tensor u = proj ? at::zeros({T, B, H}, opts) : Tensor();                          // o·tanh(c) per step

  const scalar_t* gy_p = grad_y.data_ptr<scalar_t>();
  const scalar_t* y_p = y.data_ptr<scalar_t>();
  const scalar_t* ws_p = ws.numel() ? ws.data_ptr<scalar_t>() : nullptr;
  const scalar_t* h0_p = h0.data_ptr<scalar_t>();
  const scalar_t* c0_p = kLSTM ? c0->data_ptr<scalar_t>() : nullptr;
  scalar_t* dh_p = buf[0];
  scalar_t* dc_p = buf[1];
  scalar_t* dht_p = buf[2];
  scalar_t* du_p = proj ? buf[3] : dht_p;
  scalar_t* direct_p = buf[4];
  scalar_t* dhp_p = buf[5];
  scalar_t* dgi_p = dgi.data_ptr<scalar_t>();
  scalar_t* dgh_p = dgh.data_ptr<scalar_t>();

  // The state step t started from, per row: the previous valid step's output, or h0 (c0) at a row's
  // first step.
  auto prev_states = [&](int64_t t, const scalar_t** hp, const scalar_t** cp, int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      const bool first = st.reverse ? t + 1 >= st.length(b) : t == 0;
      const int64_t tp = st.reverse ? t + 1 : t - 1;
      hp[b] = first ? h0_p + b * N : y_p + (tp * B + b) * N;
      if (kLSTM) cp[b] = first ? c0_p + b * H : ws_p + (tp * B + b) * S * H + 4 * H;
    }
  };
  // dht = dh + grad_y[t] on the valid rows, units [u0, u1).
  auto add_grad_y = [&](int64_t t, const uint8_t* m, int64_t u0, int64_t u1, int64_t b0, int64_t b1) {
    const scalar_t* gyt = gy_p + t * B * N;
    for (int64_t b = b0; b < b1; ++b) {
      if (m != nullptr && !m[b]) continue;
      for (int64_t j = u0; j < u1; ++j) dht_p[b * N + j] = dh_p[b * N + j] + gyt[b * N + j];
    }
  };
  // The pointwise gradients of step t over rows [b0, b1) and units [u0, u1).
  auto cell_step = [&](int64_t t, int64_t b0, int64_t b1, int64_t u0, int64_t u1, const uint8_t* m,
                       const scalar_t* const* hp, const scalar_t* const* cp, scalar_t* u_t) {
    backward_rows<Cell, scalar_t>(b0, b1, H, u0, u1, m, du_p, ws_p ? ws_p + t * B * S * H : nullptr,
                                  y_p + t * B * N, N, hp, kLSTM ? cp : nullptr, dc_p, dgi_p + t * B * GH,
                                  dgh_p + t * B * GH, direct_p, u_t);
  };
  // dh_{t-1} on the valid rows, units [u0, u1): the product dgh·W_hh (dhpr), plus dh·z for the GRU.
  auto carry = [&](const uint8_t* m, const scalar_t* dhpr, int64_t u0, int64_t u1, int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      if (m != nullptr && !m[b]) continue;
      scalar_t* d = dh_p + b * N;
      const scalar_t* p = dhpr + b * N;
      if (kGRU) {
        const scalar_t* q = direct_p + b * H;
        for (int64_t j = u0; j < u1; ++j) d[j] = p[j] + q[j];
      } else {
        std::copy(p + u0, p + u1, d + u0);
      }
    }
  };

  if (parts > 1) {
    // A member owning units [u0, u1) multiplies its own columns of dgh, gathered gate after gate
    // into x (B, G·n), n = u1 - u0, by the matching rows of W_hh (G·n, H) into a partial dh_{t-1}
    // (B, H) of its own; after the barrier each member sums every partial over its units. Per row
    // and step H·(members − 1)/members values cross between cores, where splitting the columns of
    // the product instead would move every other unit's dgh (G times as many).
    const int64_t PW = packed_width<scalar_t>();
    const int64_t HP = ceil_div(H, PW) * PW;  // columns of the packed factor, padded to panels
    // the forward's slices (its panels may be narrower than this product's)
    const std::vector<int64_t> us = team_slices(H, parts, team_panel_width<scalar_t>(H), kLineUnits<scalar_t>);
    Tensor wpack = at::empty({G * H * HP}, opts);              // members' factors, at G·u0·HP
    Tensor xg = at::empty({B * GH}, opts);                     // members' gathered dgh, at B·G·u0
    Tensor partial = at::empty({2, parts, B, H}, opts);        // by step parity and member
    scalar_t* wpack_p = wpack.data_ptr<scalar_t>();
    scalar_t* xg_p = xg.data_ptr<scalar_t>();
    scalar_t* partial_p = partial.data_ptr<scalar_t>();
    const scalar_t* w_p = w_hh.data_ptr<scalar_t>();
    std::vector<uint8_t> valid(parts * B);
    std::vector<const scalar_t*> hp(parts * B), cp(parts * B);
    run_team(parts, [&](int64_t p0, int64_t p1, TeamMember& member) {
      const int64_t u0 = us[p0], u1 = us[p1], n = u1 - u0, K = G * n;
      // The factor's row g·n + j is W_hh[g·H + u0 + j, :], in panels of PW columns.
      scalar_t* wm = wpack_p + G * u0 * HP;
      for (int64_t c0 = 0; c0 < HP; c0 += PW) {
        const int64_t cols = std::min(PW, H - c0);
        scalar_t* panel = wm + c0 * K;
        for (int64_t g = 0; g < G; ++g) {
          for (int64_t j = 0; j < n; ++j) {
            const scalar_t* src = w_p + (g * H + u0 + j) * H + c0;
            scalar_t* dst = panel + (g * n + j) * PW;
            std::copy(src, src + cols, dst);
            std::fill(dst + cols, dst + PW, scalar_t(0));
          }
        }
      }
      scalar_t* xm = xg_p + B * G * u0;
      const scalar_t** hpm = hp.data() + p0 * B;
      const scalar_t** cpm = cp.data() + p0 * B;
      const int64_t members = member.count();
      for (int64_t s = T - 1; s >= 0; --s) {
        const int64_t t = st.reverse ? T - 1 - s : s;
        const uint8_t* m = st.mask(t, valid.data() + p0 * B);
        const int64_t rows = st.rows(t);
        prev_states(t, hpm, cpm, 0, B);
        add_grad_y(t, m, u0, u1, 0, B);
        cell_step(t, 0, B, u0, u1, m, hpm, cpm, nullptr);
        const scalar_t* dgt = dgh_p + t * B * GH;
        for (int64_t b = 0; b < rows; ++b) {
          for (int64_t g = 0; g < G; ++g) {
            std::copy(dgt + b * GH + g * H + u0, dgt + b * GH + g * H + u1, xm + b * K + g * n);
          }
        }
        scalar_t* part = partial_p + (s % 2) * parts * B * H;
        packed_mm<scalar_t>(rows, K, xm, K, wm, part + member.id() * B * H, H, H, 0, HP / PW);
        member.sync();  // every member's partial of this step is written
        for (int64_t b = 0; b < B; ++b) {
          if (m != nullptr && !m[b]) continue;
          scalar_t* d = dh_p + b * N;
          for (int64_t j = u0; j < u1; ++j) d[j] = kGRU ? direct_p[b * H + j] : scalar_t(0);
          for (int64_t k = 0; k < members; ++k) {
            const scalar_t* q = part + (k * B + b) * H;
            for (int64_t j = u0; j < u1; ++j) d[j] += q[j];
          }
        }
      }
    });
  } else {
    // One loop over all rows, or (row_parts()) one per slice of rows on its own thread.
    const int64_t rparts = backward_row_parts<scalar_t>(T, B, G, H, N, proj);
    const bool split = rparts > 1;
    const int64_t mrows = split ? max_row_slice(B, rparts) : B;  // the most rows of a slice
    StepMatmul<scalar_t> mm_hh(w_hh, mrows, T, split, /*backward=*/true);  // dh_{t-1} = dgh·W_hh
    c10::optional<StepMatmul<scalar_t>> mm_hr;
    if (proj) mm_hr.emplace(*w_hr, mrows, T, split);    // d(o·tanh c) = dh·W_hr
    auto run_rows = [&](int64_t b0, int64_t b1) {
      std::vector<uint8_t> valid(B);
      std::vector<const scalar_t*> hp(B), cp(B);
      at::Tensor keep;  // the step product's buffer when it is not dhp (StepMatmul::apply)
      for (int64_t s = T - 1; s >= 0; --s) {
        const int64_t t = st.reverse ? T - 1 - s : s;
        const uint8_t* m = st.mask(t, valid.data());
        const int64_t rows = std::min(std::max(st.rows(t), b0), b1) - b0;
        prev_states(t, hp.data(), cp.data(), b0, b1);
        add_grad_y(t, m, 0, N, b0, b1);
        if (proj) {
          scalar_t* dhr_t = d_hr.data_ptr<scalar_t>() + t * B * N;
          for (int64_t b = b0; b < b1; ++b) {
            if (m == nullptr || m[b]) {
              std::copy(dht_p + b * N, dht_p + (b + 1) * N, dhr_t + b * N);
            } else {
              std::fill(dhr_t + b * N, dhr_t + (b + 1) * N, scalar_t(0));
            }
          }
          mm_hr->apply(dht_p + b0 * N, N, du_p + b0 * H, H, rows);
        }
        scalar_t* u_t = proj ? u.data_ptr<scalar_t>() + t * B * H : nullptr;
        const scalar_t* dgt = dgh_p + t * B * GH;
        if (split) {
          cell_step(t, b0, b1, 0, H, m, hp.data(), cp.data(), u_t);
          mm_hh.apply(dgt + b0 * GH, GH, dhp_p + b0 * N, N, rows);
          carry(m, dhp_p, 0, N, b0, b1);
        } else {
          for_rows(B, GH, [&](int64_t r0, int64_t r1) { cell_step(t, r0, r1, 0, H, m, hp.data(), cp.data(), u_t); });
          carry(m, mm_hh.apply(dgt, GH, dhp_p, N, rows, &keep), 0, N, 0, B);
        }
      }
    };
    for_row_slices(B, rparts, run_rows);
  }
  std::copy(dh_p, dh_p + B * N, dh0.data_ptr<scalar_t>());
  if (kLSTM) std::copy(dc_p, dc_p + B * H, dc0.data_ptr<scalar_t>());

  // dW_hh = Σ_t dgh[t]ᵀ·h_prev[t]. h_prev[t] is y at the neighbouring step (zero where that step is
  // invalid, and there dgh is zero too), except at each row's first step where it is h0: one GEMM over
  // the shifted outputs plus one over the first-step rows.
  Tensor first = at::zeros({B, GH}, opts);  // dgh at each row's first step
  {
    scalar_t* f = first.data_ptr<scalar_t>();
    for (int64_t b = 0; b < B; ++b) {
      const int64_t L = st.length(b);
      if (L == 0) continue;
      const int64_t tf = st.reverse ? L - 1 : 0;
      std::copy(dgh_p + (tf * B + b) * GH, dgh_p + (tf * B + b + 1) * GH, f + b * GH);
    }
  }
  mm_tn(dw_hh, first, h0.contiguous());
  if (T > 1) {
    Tensor g = st.reverse ? dgh.narrow(0, 0, T - 1) : dgh.narrow(0, 1, T - 1);
    Tensor hprev = st.reverse ? y.narrow(0, 1, T - 1) : y.narrow(0, 0, T - 1);
    mm_tn(dw_hh, g.reshape({-1, GH}), hprev.reshape({-1, N}), /*accumulate=*/true);
  }
  if (has_bias) at::sum_out(db_hh, dgh.reshape({-1, GH}), {0});
  if (proj) mm_tn(dw_hr, d_hr.reshape({-1, N}), u.reshape({-1, H}));
  return {dgi, dh0, dc0, dw_hh, db_hh, dw_hr};
}

// ---------------------------------------------------------------------------------------------
// Op entry points: checks, dtype and cell dispatch.

enum CellCode : int64_t { kRnnTanh = 0, kRnnRelu = 1, kGru = 2, kLstm = 3 };

int64_t gates(int64_t cell) {
  TORCH_CHECK(cell >= kRnnTanh && cell <= kLstm,
              "rnnfast_C: cell: expected a code 0..3 (rnn_tanh, rnn_relu, gru, lstm), got ", cell);
  return cell == kGru ? 3 : cell == kLstm ? 4 : 1;
}

template <typename F>
auto dispatch_cell(int64_t cell, F&& f) {
  switch (cell) {
    case kRnnTanh: return f(RNNCell<false>{});
    case kRnnRelu: return f(RNNCell<true>{});
    case kGru: return f(GRUCell{});
    default: return f(LSTMCell{});  // codes were validated by gates()
  }
}

// f(cell, scalar) for the cell type of `cell` and the scalar type of `dtype` (float or double, checked
// by the callers): the entry points' dispatch to forward_impl / backward_impl.
template <typename F>
auto with_cell(at::ScalarType dtype, int64_t cell, F&& f) {
  return AT_DISPATCH_FLOATING_TYPES(dtype, "recurrence", [&] {
    return dispatch_cell(cell, [&](auto c) { return f(c, scalar_t{}); });
  });
}

void check_like(const char* name, const Tensor& t, const Tensor& ref, at::IntArrayRef shape) {
  TORCH_CHECK(t.device().is_cpu(), "rnnfast_C: ", name, ": expected a CPU tensor, got ", t.device());
  TORCH_CHECK(t.scalar_type() == ref.scalar_type(), "rnnfast_C: ", name, ": expected dtype ", ref.scalar_type(),
              ", got ", t.scalar_type());
  TORCH_CHECK(t.sizes() == shape, "rnnfast_C: ", name, ": expected shape ", shape, ", got ", t.sizes());
}

void check_opt(const char* name, const c10::optional<Tensor>& t, const Tensor& ref, at::IntArrayRef shape) {
  if (t.has_value() && t->defined()) check_like(name, *t, ref, shape);
}

std::tuple<Tensor, Tensor, Tensor, Tensor> recurrence_fwd(const Tensor& gi, const Tensor& h0,
                                                          const c10::optional<Tensor>& c0, const Tensor& w_hh,
                                                          const c10::optional<Tensor>& b_hh,
                                                          const c10::optional<Tensor>& w_hr,
                                                          const c10::optional<Tensor>& lengths, int64_t cell,
                                                          bool reverse, bool need_ws) {
  TORCH_CHECK(gi.dim() == 3, "rnnfast_C: gi: expected (T, B, G·H), got ", gi.sizes());
  TORCH_CHECK(gi.scalar_type() == at::kFloat || gi.scalar_type() == at::kDouble,
              "rnnfast_C: gi: expected float32 or float64, got ", gi.scalar_type());
  const int64_t G = gates(cell), T = gi.size(0), B = gi.size(1), GH = gi.size(2), H = GH / G;
  TORCH_CHECK(GH % G == 0, "rnnfast_C: gi: last dimension ", GH, " is not a multiple of ", G);
  const bool proj = w_hr.has_value() && w_hr->defined();
  TORCH_CHECK(!proj || cell == kLstm, "rnnfast_C: w_hr: a projection exists only for the lstm cell");
  const int64_t N = proj ? w_hr->size(0) : H;
  check_like("h0", h0, gi, {B, N});
  check_like("w_hh", w_hh, gi, {GH, N});
  check_opt("b_hh", b_hh, gi, {GH});
  if (cell == kLstm) {
    TORCH_CHECK(c0.has_value() && c0->defined(), "rnnfast_C: c0: required for the lstm cell");
    check_like("c0", *c0, gi, {B, H});
  }
  if (proj) check_like("w_hr", *w_hr, gi, {N, H});
  Steps st(T, B, reverse, lengths);
  Tensor g = gi.contiguous();
  return with_cell(gi.scalar_type(), cell, [&](auto c, auto s) {
    return forward_impl<decltype(c), decltype(s)>(g, h0, c0, w_hh.contiguous(), b_hh, w_hr, st, need_ws);
  });
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> recurrence_bwd(
    const Tensor& grad_y, const Tensor& grad_hn, const c10::optional<Tensor>& grad_cn, const Tensor& h0,
    const c10::optional<Tensor>& c0, const Tensor& w_hh, const c10::optional<Tensor>& b_hh,
    const c10::optional<Tensor>& w_hr, const c10::optional<Tensor>& lengths, const Tensor& y, const Tensor& ws,
    int64_t cell, bool reverse) {
  TORCH_CHECK(y.dim() == 3, "rnnfast_C: y: expected (T, B, N), got ", y.sizes());
  TORCH_CHECK(y.scalar_type() == at::kFloat || y.scalar_type() == at::kDouble,
              "rnnfast_C: y: expected float32 or float64, got ", y.scalar_type());
  const int64_t G = gates(cell), T = y.size(0), B = y.size(1), N = y.size(2), GH = w_hh.size(0), H = GH / G;
  const bool proj = w_hr.has_value() && w_hr->defined();
  TORCH_CHECK(!proj || cell == kLstm, "rnnfast_C: w_hr: a projection exists only for the lstm cell");
  const int64_t S = cell == kGru ? 4 : cell == kLstm ? 5 : 0;
  check_like("grad_y", grad_y, y, {T, B, N});
  check_like("grad_hn", grad_hn, y, {B, N});
  check_like("h0", h0, y, {B, N});
  check_like("w_hh", w_hh, y, {GH, N});
  check_opt("b_hh", b_hh, y, {GH});
  if (S > 0) check_like("ws", ws, y, {T, B, S * H});
  if (cell == kLstm) {
    TORCH_CHECK(c0.has_value() && c0->defined(), "rnnfast_C: c0: required for the lstm cell");
    check_like("c0", *c0, y, {B, H});
    check_opt("grad_cn", grad_cn, y, {B, H});
  }
  if (proj) check_like("w_hr", *w_hr, y, {N, H});
  Steps st(T, B, reverse, lengths);
  c10::optional<Tensor> c0c = c0.has_value() && c0->defined() ? c10::optional<Tensor>(c0->contiguous()) : c0;
  c10::optional<Tensor> w_hrc = proj ? c10::optional<Tensor>(w_hr->contiguous()) : w_hr;
  return with_cell(y.scalar_type(), cell, [&](auto c, auto s) {
    return backward_impl<decltype(c), decltype(s)>(grad_y.contiguous(), grad_hn, grad_cn, h0.contiguous(), c0c,
                                                   w_hh.contiguous(), b_hh, w_hrc, y.contiguous(), ws.contiguous(),
                                                   st);
  });
}

// Which path a float32 per-step product x (m, k) · W (k, n) of the time loops takes over `steps` steps:
// "onednn", "aten" (MKL), "blocked" (small_mm), "packed" (packed_mm) or "matvec". For `rnnfast info` and
// the tests.
std::string gemm_path(int64_t m, int64_t k, int64_t n, int64_t steps) {
  // As the forward loop builds it: W_hhᵀ, a transposed view.
  StepMatmul<float> mm(at::empty({n, k}, at::kFloat).t(), m, steps);
  return mm.path();
}

// How many threads share the backward (forward: the forward) time loop of a call of these sizes and
// dtype (float32 or float64), on this thread count (1: the plain loop). For `rnnfast info` and the tests.
int64_t team_parts_op(int64_t T, int64_t B, int64_t cell, int64_t H, bool proj, at::ScalarType dtype,
                      bool forward) {
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kDouble, "rnnfast_C: dtype: expected float32 or float64, got ",
              dtype);
  const int64_t G = gates(cell);
  if (forward) {
    return dtype == at::kFloat ? forward_team_parts<float>(T, B, G, H, proj)
                               : forward_team_parts<double>(T, B, G, H, proj);
  }
  return dtype == at::kFloat ? backward_team_parts<float>(T, B, G, H, proj)
                             : backward_team_parts<double>(T, B, G, H, proj);
}

// How many slices of rows the plain forward (backward: backward) time loop of a call splits into
// (row_parts(), backward_row_parts(); 1: none) where no team runs; P is the projection size, 0 for none,
// T the steps. For `rnnfast info` and the tests.
int64_t row_parts_op(int64_t B, int64_t cell, int64_t H, int64_t P, at::ScalarType dtype, int64_t T,
                     bool backward) {
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kDouble, "rnnfast_C: dtype: expected float32 or float64, got ",
              dtype);
  const int64_t G = gates(cell), N = P > 0 ? P : H;
  if (backward) {
    return dtype == at::kFloat ? backward_row_parts<float>(T, B, G, H, N, P > 0)
                               : backward_row_parts<double>(T, B, G, H, N, P > 0);
  }
  return dtype == at::kFloat ? row_parts<float>(T, B, G, H, N, P > 0) : row_parts<double>(T, B, G, H, N, P > 0);
}

// y = op(a)·b (+ bias) in the blocked kernel (gemm_blocked(), whose operands it must take, see
// gemm_blocked_takes()): op(a) = a, or aᵀ with a_t; b (R, N) any strides; into y where given, else a
// new output.
Tensor blocked_product(const Tensor& a, bool a_t, const Tensor& b, const c10::optional<Tensor>& bias,
                       Tensor y = Tensor()) {
  if (!y.defined()) y = new_output({a.size(a_t ? 1 : 0), b.size(1)}, a.options());
  const Tensor bc = bias.has_value() ? bias->contiguous() : Tensor();
  AT_DISPATCH_FLOATING_TYPES(a.scalar_type(), "blocked_product", [&] {
    gemm_blocked<scalar_t>(y, a, a_t, b, bc.defined() ? bc.data_ptr<scalar_t>() : nullptr, false);
  });
  return y;
}

// op(a)·b (+ bias) in the blocked kernel (gemm_blocked(); ATen for other dtypes), into a block of the
// cache: op(a) = a (M, R), or aᵀ with a_t (a (R, M)); b (R, N), any strides; bias (N). The modules'
// input projection, its dX and its dW (rnnfast/ops/linear.py).
Tensor gemm_op(const Tensor& a, const Tensor& b, const c10::optional<Tensor>& bias, bool a_t) {
  TORCH_CHECK(a.dim() == 2 && b.dim() == 2 && a.size(a_t ? 0 : 1) == b.size(0), "rnnfast_C::gemm: a, b: expected ",
              a_t ? "(R, M) and (R, N)" : "(M, R) and (R, N)", ", got ", a.sizes(), " and ", b.sizes());
  TORCH_CHECK(a.scalar_type() == b.scalar_type(), "rnnfast_C::gemm: b: expected dtype ", a.scalar_type(), ", got ",
              b.scalar_type());
  const int64_t M = a.size(a_t ? 1 : 0), N = b.size(1);
  if (bias.has_value()) {
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == N && bias->scalar_type() == a.scalar_type(),
                "rnnfast_C::gemm: bias: expected (", N, ",) of dtype ", a.scalar_type(), ", got ", bias->sizes(),
                " of ", bias->scalar_type());
  }
  const Tensor ac = a.contiguous();
  Tensor y = new_output({M, N}, a.options());
  if (!gemm_blocked_takes(y, ac, b)) {
    const Tensor op_a = a_t ? ac.t() : ac;
    if (bias.has_value()) return at::addmm_out(y, *bias, op_a, b);
    return at::mm_out(y, op_a, b);
  }
  return blocked_product(ac, a_t, b, bias, y);
}

// ---------------------------------------------------------------------------------------------
// A module's whole layer stack in one call: forward, per layer and direction, the input projection and
// the time loop; backward the reverse, with the projection's gradients. The cpu backend's modules
// (rnnfast.nn.rnn) run every call through it: PackedSequence rows, dropout masks between layers,
// float16/bfloat16 through float32; one op per direction of autograd keeps a short call's overhead low.

// The input projection's library (chosen by rnnfast/ops/linear.py, library()): the products of at least
// kProjectMinWork multiply-adds (below, a library's fixed cost is most of the product) go to ATen, the
// blocked kernel (a float32 forward of fewer than kProjectBlockedMinRows rows to oneDNN, where torch has
// it: packing W_ihᵀ at every call does not pay there), or oneDNN (float32 forward, and dX from
// kProjectDnnlDxMinRows rows, where its transposed copy of W pays; dW ATen). ATen's results go into
// blocks of the cache (new_output): a fresh large result is page-faulted in at every call.
enum ProjectLib : int64_t { kLibAten = 0, kLibBlocked = 1, kLibOnednn = 2 };
constexpr int64_t kProjectMinWork = int64_t{1} << 21, kProjectBlockedMinRows = 768, kProjectDnnlDxMinRows = 128;

// oneDNN's x·wᵀ (+ bias) for float32, else undefined (not there, or it failed and is disabled).
Tensor dnnl_product(const Tensor& x, const Tensor& w, const c10::optional<Tensor>& bias) {
  if (x.scalar_type() != at::kFloat || !Dnnl::get().usable()) return Tensor();
  try {
    return Dnnl::get().linear(x.contiguous(), w.contiguous(), bias.has_value() ? *bias : Tensor());
  } catch (const std::exception& e) {
    Dnnl::get().disable(e.what());
    return Tensor();
  }
}

// gi (rows, G·H) = x (rows, I)·W_ihᵀ + b_ih, by `lib`.
Tensor project(const Tensor& x, const Tensor& w, const c10::optional<Tensor>& b, int64_t lib) {
  const int64_t rows = x.size(0);
  if (rows * w.size(0) * w.size(1) >= kProjectMinWork && lib != kLibAten) {
    const bool f32 = x.scalar_type() == at::kFloat;
    if (lib == kLibOnednn || (f32 && rows < kProjectBlockedMinRows && Dnnl::get().usable())) {
      Tensor y = dnnl_product(x, w, b);
      if (y.defined()) return y;
    }
    if (lib == kLibBlocked) return blocked_product(x, false, w.t(), b);
  }
  Tensor y = new_output({rows, w.size(0)}, x.options());
  return b.has_value() ? at::addmm_out(y, *b, x, w.t()) : at::mm_out(y, x, w.t());
}

// The projection's gradients from g (rows, G·H) = dgi: into dw (G·H, I) the sum gᵀ·x, and with need_dx
// dX (rows, I) = g·W_ih (else undefined).
Tensor project_backward(const Tensor& g, const Tensor& x, const Tensor& w, int64_t lib, Tensor& dw, bool need_dx) {
  const int64_t rows = g.size(0);
  const bool big = rows * w.size(0) * w.size(1) >= kProjectMinWork;
  if (big && lib == kLibBlocked) {
    dw = blocked_product(g, true, x, c10::nullopt);
    return need_dx ? blocked_product(g, false, w, c10::nullopt) : Tensor();
  }
  dw = at::mm(g.t(), x);
  if (!need_dx) return Tensor();
  if (big && lib == kLibOnednn && rows >= kProjectDnnlDxMinRows) {
    Tensor dx = dnnl_product(g, w.t(), c10::nullopt);
    if (dx.defined()) return dx;
  }
  Tensor dx = new_output({rows, w.size(1)}, g.options());
  return at::mm_out(dx, g, w);
}

// The arguments shared by the forward and the backward of a module call. With batch_sizes (a
// PackedSequence's) x and y hold the packed rows (ΣL, ·), rows sorted by length, and every layer's input
// projection runs on those rows only; the time loops take them padded to (T, B, ·) with the lengths.
struct ModuleArgs {
  int64_t cell, G, L, D, per, T, B, H, N, rows;
  bool bias, proj, packed;
  const Tensor* weights;  // per layer and direction: w_ih, w_hh, then b_ih, b_hh (bias), then w_hr (proj)
  std::vector<int64_t> step_rows;  // packed: the rows of each step (batch_sizes)
  Tensor lengths;                  // packed: (B,) int64, the steps of each row; else undefined

  const Tensor* w(int64_t k) const { return weights + k * per; }
  c10::optional<Tensor> b_hh(int64_t k) const {
    return bias ? c10::optional<Tensor>(w(k)[3].contiguous()) : c10::nullopt;
  }
  c10::optional<Tensor> w_hr(int64_t k) const {
    return proj ? c10::optional<Tensor>(w(k)[per - 1].contiguous()) : c10::nullopt;
  }
  c10::optional<Tensor> lens() const { return packed ? c10::optional<Tensor>(lengths) : c10::nullopt; }
};

ModuleArgs module_args(const Tensor& x, const c10::optional<Tensor>& batch_sizes, at::TensorList weights,
                       at::TensorList masks, int64_t cell, int64_t num_layers, bool bidirectional, bool has_bias,
                       bool has_proj) {
  ModuleArgs a{};
  a.cell = cell;
  a.G = gates(cell);
  a.L = num_layers;
  a.D = bidirectional ? 2 : 1;
  a.per = 2 + 2 * has_bias + has_proj;
  a.bias = has_bias;
  a.proj = has_proj;
  a.packed = batch_sizes.has_value() && batch_sizes->defined();
  a.weights = weights.data();
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble,
              "rnnfast_C: x: expected float32 or float64, got ", x.scalar_type());
  TORCH_CHECK(num_layers >= 1 && static_cast<int64_t>(weights.size()) == num_layers * a.D * a.per,
              "rnnfast_C: weights: expected ", num_layers * a.D * a.per, " tensors for ", num_layers,
              " layers, got ", weights.size());
  TORCH_CHECK(!has_proj || cell == kLstm, "rnnfast_C: has_proj: a projection exists only for the lstm cell");
  if (a.packed) {
    const Tensor& bs = *batch_sizes;
    TORCH_CHECK(x.dim() == 2, "rnnfast_C: x: expected packed rows (ΣL, I) with batch_sizes, got ", x.sizes());
    TORCH_CHECK(bs.dim() == 1 && bs.size(0) > 0 && bs.device().is_cpu() && bs.scalar_type() == at::kLong,
                "rnnfast_C: batch_sizes: expected a non-empty 1-D int64 CPU tensor, got ", bs.sizes(), " ",
                bs.scalar_type(), " on ", bs.device());
    const Tensor bc = bs.contiguous();
    const int64_t* p = bc.data_ptr<int64_t>();
    a.step_rows.assign(p, p + bc.numel());
    a.T = bc.numel();
    a.B = a.step_rows[0];
    int64_t total = 0;
    for (int64_t t = 0; t < a.T; ++t) {
      TORCH_CHECK(a.step_rows[t] > 0 && (t == 0 || a.step_rows[t] <= a.step_rows[t - 1]),
                  "rnnfast_C: batch_sizes: expected positive, non-increasing sizes, got ", bs);
      total += a.step_rows[t];
    }
    TORCH_CHECK(total == x.size(0), "rnnfast_C: x: expected ", total, " packed rows (the sum of batch_sizes), got ",
                x.size(0));
    a.lengths = at::zeros({a.B}, at::kLong);
    int64_t* len = a.lengths.data_ptr<int64_t>();
    for (int64_t t = 0; t < a.T; ++t) {
      for (int64_t b = 0; b < a.step_rows[t]; ++b) ++len[b];
    }
    a.rows = total;
  } else {
    TORCH_CHECK(x.dim() == 3, "rnnfast_C: x: expected (T, B, I), got ", x.sizes());
    a.T = x.size(0);
    a.B = x.size(1);
    a.rows = a.T * a.B;
  }
  a.H = weights[0].size(0) / a.G;
  a.N = has_proj ? weights[a.per - 1].size(0) : a.H;
  TORCH_CHECK(a.T > 0 && a.H > 0 && weights[0].size(0) % a.G == 0,
              "rnnfast_C: x, weights: expected at least one step and G·H rows of w_ih, got T = ", a.T, " and ",
              weights[0].size(0), " rows for ", a.G, " gates");
  const int64_t I = x.size(x.dim() - 1);
  for (int64_t k = 0; k < num_layers * a.D; ++k) {
    const Tensor* w = a.w(k);
    check_like("w_ih", w[0], x, {a.G * a.H, k < a.D ? I : a.D * a.N});
    check_like("w_hh", w[1], x, {a.G * a.H, a.N});
    if (has_bias) {
      check_like("b_ih", w[2], x, {a.G * a.H});
      check_like("b_hh", w[3], x, {a.G * a.H});
    }
    if (has_proj) check_like("w_hr", w[a.per - 1], x, {a.N, a.H});
  }
  TORCH_CHECK(masks.empty() || static_cast<int64_t>(masks.size()) == num_layers - 1,
              "rnnfast_C: masks: expected none or one per layer but the last (", num_layers - 1, "), got ",
              masks.size());
  for (const Tensor& m : masks) {
    TORCH_CHECK(m.numel() == a.rows * a.D * a.N, "rnnfast_C: masks: expected ", a.rows * a.D * a.N,
                " elements each (a layer's output), got ", m.sizes());
    check_like("masks", m, x, m.sizes());
  }
  return a;
}

// Row k (B, width) of the initial state s (L·D, B, width), or of `zeros` (made once) without one.
Tensor initial_state(const c10::optional<Tensor>& s, int64_t k, int64_t width, const char* name,
                     const ModuleArgs& a, const Tensor& x, Tensor& zeros) {
  if (!s.has_value() || !s->defined()) {
    if (!zeros.defined()) zeros = at::zeros({a.B, std::max(a.N, a.H)}, x.options());
    return zeros.narrow(1, 0, width).contiguous();
  }
  check_like(name, *s, x, {a.L * a.D, a.B, width});
  return s->select(0, k).contiguous();
}

// Row k of the (K, ...) tensor dst from src (same element count per row), by memcpy.
void put_row(Tensor& dst, const Tensor& src, int64_t k) {
  const int64_t bytes = static_cast<int64_t>(src.element_size()) * src.numel();
  std::memcpy(static_cast<char*>(dst.data_ptr()) + k * bytes, src.contiguous().data_ptr(), bytes);
}

// Packed rows (ΣL, C) -> (T, B, C) with zeros past each row's length, and back. Identity (a view)
// without batch_sizes.
Tensor pad_rows(const Tensor& src, const ModuleArgs& a) {
  const int64_t C = src.size(1);
  if (!a.packed) return src.contiguous().view({a.T, a.B, C});
  const Tensor s = src.contiguous();
  Tensor out = at::zeros({a.T, a.B, C}, s.options());
  const int64_t row = C * static_cast<int64_t>(s.element_size());
  const char* in = static_cast<const char*>(s.data_ptr());
  char* dst = static_cast<char*>(out.data_ptr());
  for (int64_t t = 0, off = 0; t < a.T; off += a.step_rows[t++]) {
    std::memcpy(dst + t * a.B * row, in + off * row, a.step_rows[t] * row);
  }
  return out;
}

Tensor pack_rows(const Tensor& src, const ModuleArgs& a) {
  const int64_t C = src.size(2);
  if (!a.packed) return src.contiguous().view({a.rows, C});
  const Tensor s = src.contiguous();
  Tensor out = new_output({a.rows, C}, s.options());
  const int64_t row = C * static_cast<int64_t>(s.element_size());
  const char* in = static_cast<const char*>(s.data_ptr());
  char* dst = static_cast<char*>(out.data_ptr());
  for (int64_t t = 0, off = 0; t < a.T; off += a.step_rows[t++]) {
    std::memcpy(dst + off * row, in + t * a.B * row, a.step_rows[t] * row);
  }
  return out;
}

// x (T, B, I) seq-first, or packed rows (ΣL, I) with batch_sizes (T,); h0, c0 (L·D, B, N / H) or none
// (zeros); masks none or one per layer but the last, multiplying its output (dropout: 0 or 1/(1-p), the
// output's shape); weights as ModuleArgs; lib the input projection's library (ProjectLib) -> y (T, B, D·N)
// or packed (ΣL, D·N), h_n (L·D, B, N), c_n (L·D, B, H) (empty but for the LSTM), and with need_ws what
// module_bwd needs: per layer its input as rows (empty where it is the caller's x or the previous layer's
// only output) and per direction its outputs (T, B, N; empty where it is y itself, with keep_y false) and
// saved activations. No output aliases another.
std::tuple<Tensor, Tensor, Tensor, std::vector<Tensor>> module_fwd_impl(
    const Tensor& x, const c10::optional<Tensor>& h0, const c10::optional<Tensor>& c0, at::TensorList weights,
    at::TensorList masks, const c10::optional<Tensor>& batch_sizes, int64_t cell, int64_t num_layers,
    bool bidirectional, bool has_bias, bool has_proj, int64_t lib, bool need_ws, bool keep_y) {
  const ModuleArgs a =
      module_args(x, batch_sizes, weights, masks, cell, num_layers, bidirectional, has_bias, has_proj);
  const bool lstm = cell == kLstm;
  const auto opts = x.options();
  Tensor zeros;
  Tensor h_n = new_output({a.L * a.D, a.B, a.N}, opts);
  Tensor c_n = lstm ? new_output({a.L * a.D, a.B, a.H}, opts) : new_output({0}, opts);
  const Steps fwd(a.T, a.B, false, a.lens()), rev(a.T, a.B, true, a.lens());
  std::vector<Tensor> saved;
  const auto empty = [&] { return at::empty({0}, opts); };  // one each: no output aliases another
  Tensor in2 = x.contiguous().view({a.rows, x.size(x.dim() - 1)});
  Tensor y;
  bool in_is_y = false;  // in2 is a view of the previous layer's only output (saved as that)
  for (int64_t layer = 0; layer < a.L; ++layer) {
    if (need_ws) saved.push_back(layer == 0 || in_is_y ? empty() : in2);
    std::vector<Tensor> outs;
    for (int64_t d = 0; d < a.D; ++d) {
      const int64_t k = layer * a.D + d;
      const Tensor* w = a.w(k);
      const c10::optional<Tensor> b_ih = a.bias ? c10::optional<Tensor>(w[2]) : c10::nullopt;
      const Tensor gi = pad_rows(project(in2, w[0], b_ih, lib), a);
      const Tensor hk = initial_state(h0, k, a.N, "h0", a, x, zeros);
      c10::optional<Tensor> ck;
      if (lstm) ck = initial_state(c0, k, a.H, "c0", a, x, zeros);
      const Steps& st = d == 1 ? rev : fwd;
      auto res = with_cell(x.scalar_type(), cell, [&](auto c, auto s) {
        return forward_impl<decltype(c), decltype(s)>(gi, hk, ck, w[1].contiguous(), a.b_hh(k), a.w_hr(k), st,
                                                      need_ws);
      });
      put_row(h_n, std::get<1>(res), k);
      if (lstm) put_row(c_n, std::get<2>(res), k);
      outs.push_back(std::get<0>(res));
      if (need_ws) {
        const bool is_y = layer == a.L - 1 && a.D == 1 && !a.packed && !keep_y;
        saved.push_back(is_y ? empty() : std::get<0>(res));
        saved.push_back(std::get<3>(res));
      }
    }
    const Tensor out = a.D == 1 ? outs[0] : at::cat(outs, 2);
    if (layer == a.L - 1) {
      y = a.packed ? pack_rows(out, a) : out;
    } else {
      in2 = pack_rows(out, a);
      in_is_y = a.D == 1 && !a.packed;
      if (!masks.empty()) {
        in2 = in2 * masks[layer].view({a.rows, a.D * a.N});
        in_is_y = false;
      }
    }
  }
  return {y, h_n, c_n, saved};
}

// The gradients of module_fwd's call: grad_y, grad_hn, grad_cn as its outputs; x, h0, c0, weights, masks,
// batch_sizes, lib as the forward got them, saved and y as it returned them -> dx (as x; empty without
// need_dx: the first layer's dX product is skipped), dh0, dc0 (as h0, c0; empty without them), and the
// weights' gradients in their order.
std::tuple<Tensor, Tensor, Tensor, std::vector<Tensor>> module_bwd_impl(
    const Tensor& grad_y, const Tensor& grad_hn, const c10::optional<Tensor>& grad_cn, const Tensor& x,
    const c10::optional<Tensor>& h0, const c10::optional<Tensor>& c0, at::TensorList weights, at::TensorList masks,
    const c10::optional<Tensor>& batch_sizes, at::TensorList saved, const Tensor& y, int64_t cell,
    int64_t num_layers, bool bidirectional, bool has_bias, bool has_proj, int64_t lib, bool need_dx) {
  const ModuleArgs a =
      module_args(x, batch_sizes, weights, masks, cell, num_layers, bidirectional, has_bias, has_proj);
  const bool lstm = cell == kLstm;
  const int64_t per_layer = 1 + 2 * a.D;
  TORCH_CHECK(static_cast<int64_t>(saved.size()) == a.L * per_layer, "rnnfast_C: saved: expected ",
              a.L * per_layer, " tensors from module_fwd, got ", saved.size());
  if (a.packed) {
    check_like("grad_y", grad_y, x, {a.rows, a.D * a.N});
  } else {
    check_like("grad_y", grad_y, x, {a.T, a.B, a.D * a.N});
  }
  check_like("grad_hn", grad_hn, x, {a.L * a.D, a.B, a.N});
  if (lstm) {
    TORCH_CHECK(grad_cn.has_value() && grad_cn->defined(), "rnnfast_C: grad_cn: required for the lstm cell");
    check_like("grad_cn", *grad_cn, x, {a.L * a.D, a.B, a.H});
  }
  const auto opts = x.options();
  const bool has_h0 = h0.has_value() && h0->defined(), has_c0 = c0.has_value() && c0->defined();
  Tensor zeros;
  Tensor dh0 = has_h0 ? new_output({a.L * a.D, a.B, a.N}, opts) : new_output({0}, opts);
  Tensor dc0 = has_c0 ? new_output({a.L * a.D, a.B, a.H}, opts) : new_output({0}, opts);
  std::vector<Tensor> dw(weights.size());
  const Steps fwd(a.T, a.B, false, a.lens()), rev(a.T, a.B, true, a.lens());
  Tensor g = grad_y.contiguous().view({a.rows, a.D * a.N});  // the gradient of the current layer's output rows
  for (int64_t layer = a.L - 1; layer >= 0; --layer) {
    const int64_t base = layer * per_layer;
    Tensor in2;
    if (layer == 0) {
      in2 = x.contiguous().view({a.rows, x.size(x.dim() - 1)});
    } else {
      in2 = saved[base].numel() > 0 ? saved[base] : saved[base - per_layer + 1].view({a.rows, a.N});
    }
    Tensor dx;
    for (int64_t d = 0; d < a.D; ++d) {
      const int64_t k = layer * a.D + d;
      const Tensor* w = a.w(k);
      const Tensor& yk = saved[base + 1 + 2 * d].numel() > 0 ? saved[base + 1 + 2 * d] : y;
      const Tensor& ws = saved[base + 2 + 2 * d];
      const Tensor gy = pad_rows(a.D == 1 ? g : g.narrow(1, d * a.N, a.N), a);
      const Tensor hk = initial_state(h0, k, a.N, "h0", a, x, zeros);
      c10::optional<Tensor> ck, gck;
      if (lstm) {
        ck = initial_state(c0, k, a.H, "c0", a, x, zeros);
        gck = grad_cn->select(0, k).contiguous();
      }
      const Steps& st = d == 1 ? rev : fwd;
      auto r = with_cell(x.scalar_type(), cell, [&](auto c, auto s) {
        return backward_impl<decltype(c), decltype(s)>(gy, grad_hn.select(0, k).contiguous(), gck, hk, ck,
                                                       w[1].contiguous(), a.b_hh(k), a.w_hr(k), yk.contiguous(),
                                                       ws, st);
      });
      const Tensor dgi = pack_rows(std::get<0>(r), a);
      Tensor* dwk = dw.data() + k * a.per;
      const Tensor dxk = project_backward(dgi, in2, w[0], lib, dwk[0], layer > 0 || need_dx);
      if (dxk.defined()) dx = d == 0 ? dxk : dx.add_(dxk);
      dwk[1] = std::get<3>(r);
      if (a.bias) {
        dwk[2] = dgi.sum(0);
        dwk[3] = std::get<4>(r);
      }
      if (a.proj) dwk[a.per - 1] = std::get<5>(r);
      if (has_h0) put_row(dh0, std::get<1>(r), k);
      if (has_c0) put_row(dc0, std::get<2>(r), k);
    }
    if (layer > 0 && !masks.empty()) dx = dx * masks[layer - 1].view({a.rows, a.D * a.N});
    g = dx;
  }
  Tensor gx = at::empty({0}, opts);
  if (g.defined()) gx = a.packed ? g : g.view({a.T, a.B, x.size(2)});
  return {gx, dh0, dc0, dw};
}

// float16 and bfloat16 run through float32: the arguments are converted on entry, the results back to
// the caller's dtype; the saved activations stay float32.
bool half_type(const Tensor& t) { return t.scalar_type() == at::kHalf || t.scalar_type() == at::kBFloat16; }

c10::optional<Tensor> to_float(const c10::optional<Tensor>& t) {
  return t.has_value() && t->defined() ? c10::optional<Tensor>(t->to(at::kFloat)) : t;
}

std::vector<Tensor> to_float(at::TensorList ts) {
  std::vector<Tensor> out;
  out.reserve(ts.size());
  for (const Tensor& t : ts) out.push_back(t.to(at::kFloat));
  return out;
}

// The tensors of a half-precision call must all have x's dtype before they are converted.
void check_dtypes(const Tensor& x, std::initializer_list<std::pair<const char*, const c10::optional<Tensor>*>> opt,
                  at::TensorList weights) {
  for (const auto& [name, t] : opt) {
    if (t->has_value() && (*t)->defined()) {
      TORCH_CHECK((*t)->scalar_type() == x.scalar_type(), "rnnfast_C: ", name, ": expected dtype ",
                  x.scalar_type(), ", got ", (*t)->scalar_type());
    }
  }
  for (const Tensor& w : weights) {
    TORCH_CHECK(w.scalar_type() == x.scalar_type(), "rnnfast_C: weights: expected dtype ", x.scalar_type(),
                ", got ", w.scalar_type());
  }
}

std::tuple<Tensor, Tensor, Tensor, std::vector<Tensor>> module_fwd(
    const Tensor& x, const c10::optional<Tensor>& h0, const c10::optional<Tensor>& c0, at::TensorList weights,
    at::TensorList masks, const c10::optional<Tensor>& batch_sizes, int64_t cell, int64_t num_layers,
    bool bidirectional, bool has_bias, bool has_proj, int64_t lib, bool need_ws) {
  if (!half_type(x)) {
    return module_fwd_impl(x, h0, c0, weights, masks, batch_sizes, cell, num_layers, bidirectional, has_bias,
                           has_proj, lib, need_ws, false);
  }
  check_dtypes(x, {{"h0", &h0}, {"c0", &c0}}, weights);
  const auto dt = x.scalar_type();
  auto [y, h_n, c_n, saved] =
      module_fwd_impl(x.to(at::kFloat), to_float(h0), to_float(c0), to_float(weights), to_float(masks),
                      batch_sizes, cell, num_layers, bidirectional, has_bias, has_proj, lib, need_ws, true);
  return {y.to(dt), h_n.to(dt), c_n.to(dt), saved};
}

std::tuple<Tensor, Tensor, Tensor, std::vector<Tensor>> module_bwd(
    const Tensor& grad_y, const Tensor& grad_hn, const c10::optional<Tensor>& grad_cn, const Tensor& x,
    const c10::optional<Tensor>& h0, const c10::optional<Tensor>& c0, at::TensorList weights, at::TensorList masks,
    const c10::optional<Tensor>& batch_sizes, at::TensorList saved, const Tensor& y, int64_t cell,
    int64_t num_layers, bool bidirectional, bool has_bias, bool has_proj, int64_t lib, bool need_dx) {
  if (!half_type(x)) {
    return module_bwd_impl(grad_y, grad_hn, grad_cn, x, h0, c0, weights, masks, batch_sizes, saved, y, cell,
                           num_layers, bidirectional, has_bias, has_proj, lib, need_dx);
  }
  check_dtypes(x, {{"h0", &h0}, {"c0", &c0}}, weights);
  const auto dt = x.scalar_type();
  auto [dx, dh0, dc0, dw] = module_bwd_impl(
      grad_y.to(at::kFloat), grad_hn.to(at::kFloat), to_float(grad_cn), x.to(at::kFloat), to_float(h0), to_float(c0),
      to_float(weights), to_float(masks), batch_sizes, saved, y.to(at::kFloat), cell, num_layers, bidirectional,
      has_bias, has_proj, lib, need_dx);
  for (Tensor& g : dw) g = g.to(dt);
  return {dx.to(dt), dh0.to(dt), dc0.to(dt), dw};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(rnnfast_C, m) {
  m.impl("gemm_path", &gemm_path);
  m.impl("isa_level", [] { return static_cast<int64_t>(isa_level()); });
  m.impl("team_parts", &team_parts_op);
  m.impl("row_parts", &row_parts_op);
}

TORCH_LIBRARY_IMPL(rnnfast_C, CPU, m) {
  m.impl("recurrence_fwd", &recurrence_fwd);
  m.impl("recurrence_bwd", &recurrence_bwd);
  m.impl("gemm", &gemm_op);
  m.impl("module_fwd", &module_fwd);
  m.impl("module_bwd", &module_bwd);
}

}  // namespace rnnfast
