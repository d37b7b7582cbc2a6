// A team of threads that stays together for a whole time loop, meeting at a spin barrier each step.
//
// At small batch a step's work is a few µs, and an OpenMP region per step (fork, join, and the cold
// caches of a thread that slept) costs about as much, so the per-step loops ran on one thread below
// 2^22 multiply-adds a step. A team instead splits the hidden units once per call: each thread keeps
// its slice of W in its own L2 for the whole loop and only h (or dh) crosses between cores, once per
// step, through the barrier.
#pragma once

#include <ATen/Parallel.h>

#include <atomic>
#include <thread>

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#define RNNFAST_PAUSE() _mm_pause()
#else
#define RNNFAST_PAUSE() std::this_thread::yield()
#endif

namespace rnnfast {

// The step barrier of a team of at most kMaxTeam threads that all run at once (the members of one
// OpenMP team). Each member publishes how many steps it has finished in a cache line of its own and
// waits until every other member has finished as many: one line crosses between two cores per
// member and step, where a shared counter passes a line back and forth for every arrival (measured,
// a two-thread LSTM step at B=1, H=32: 0.93 µs with a shared counter). Spins, then yields, so that a
// machine with more runnable threads than cores still progresses.
constexpr int kMaxTeam = 16;

class TeamBarrier {
 public:
  void set_count(int n) { n_ = n; }  // before anyone waits
  int count() const { return n_; }

  // Member `id` has finished its `step`-th step (1, 2, ...); returns once every member has.
  void wait(int id, int64_t step) {
    done_[id].v.store(step, std::memory_order_release);
    for (int k = 0; k < n_; ++k) {
      if (k == id) continue;
      for (int spins = 0; done_[k].v.load(std::memory_order_acquire) < step; ++spins) {
        if (spins < 2000) {
          RNNFAST_PAUSE();
        } else {
          std::this_thread::yield();
        }
      }
    }
  }

 private:
  struct alignas(64) Line {
    std::atomic<int64_t> v{0};
  };
  int n_ = 1;
  Line done_[kMaxTeam];
};

// One member's handle on the barrier: sync() ends its current step.
class TeamMember {
 public:
  TeamMember(TeamBarrier& barrier, int id) : barrier_(barrier), id_(id) {}
  void sync() { barrier_.wait(id_, ++steps_); }
  int id() const { return id_; }
  int count() const { return barrier_.count(); }

 private:
  TeamBarrier& barrier_;
  int id_;
  int64_t steps_ = 0;
};

// Whether a team of `parts` threads can run here: an OpenMP build of ATen (its parallel_for runs every
// chunk on its own team thread at once; the native thread pool may queue them, and a barrier between
// queued chunks never opens), more than one thread, and not already inside a parallel region (which
// would run the chunks one after the other).
inline bool team_available() {
#if AT_PARALLEL_OPENMP
  return at::get_num_threads() > 1 && !at::in_parallel_region();
#else
  return false;
#endif
}

// Runs fn(p0, p1, member) once per team member, the member taking the parts [p0, p1) of
// 0..parts-1 (parts <= kMaxTeam; one each when the team has `parts` threads, a smaller team gives
// some members several), and member.sync() ending each of its steps. fn must not throw once it may
// have reached sync(): the other members would wait for it forever.
template <typename F>
void run_team(int64_t parts, const F& fn) {
  TeamBarrier barrier;
  std::atomic<int64_t> chunk{0};
  at::parallel_for(0, parts, 1, [&](int64_t p0, int64_t p1) {
    // parallel_for gives every member the same chunk size but the last; the first member's chunk
    // is whole, so it counts the members and sets up the barrier before anyone uses it.
    if (p0 == 0) {
      barrier.set_count(static_cast<int>((parts + p1 - 1) / p1));
      chunk.store(p1, std::memory_order_release);
    }
    int64_t c;
    while ((c = chunk.load(std::memory_order_acquire)) == 0) RNNFAST_PAUSE();
    TeamMember member(barrier, static_cast<int>(p0 / c));
    fn(p0, p1, member);
  });
}

}  // namespace rnnfast
