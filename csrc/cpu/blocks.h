// Large tensors (the ops' outputs and scratch) from a process-wide cache of freed blocks.
//
// glibc hands blocks of more than its mmap threshold (32 MiB at most) back to the system when they are
// freed, and the next call page-faults the same amount in again, zeroed by the kernel (GRU B=256 H=256
// T=50 forward+backward: ~110 ms of system time per call of ~450 ms; docs/cpu.md). Blocks of at least
// kMinBytes are therefore kept when their tensor dies, up to a limit (an eighth of the physical memory, at
// most 4 GiB, 512 MiB where the system does not say: it has to hold one call's large tensors), oldest
// dropped first, and handed to the next request they fit (at most twice its size), as in torch's CUDA
// caching allocator. New blocks are 2 MiB-aligned with MADV_HUGEPAGE, so that even their first use faults
// once per 2 MiB where the kernel allows transparent huge pages. torch.ops.rnnfast_C.cache_clear() frees
// the cached blocks, cache_info() says what is held, cache_limit() / cache_set_limit() how much may be.
#pragma once

#include <ATen/ATen.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <deque>
#include <mutex>
#include <tuple>

#if defined(__linux__)
#include <sys/mman.h>
#include <unistd.h>
#endif

namespace rnnfast {

class BlockCache {
 public:
  static constexpr int64_t kMinBytes = int64_t{1} << 20;

  static BlockCache& get() {
    // Never destroyed: tensors freed after static destruction at exit still return their blocks.
    static BlockCache* cache = new BlockCache();
    return *cache;
  }

  // An uninitialised tensor, from the cache when it is large enough.
  at::Tensor empty(at::IntArrayRef sizes, const at::TensorOptions& options) {
    const int64_t bytes = c10::multiply_integers(sizes) * static_cast<int64_t>(options.dtype().itemsize());
    if (bytes < kMinBytes || limit_ == 0 || options.device().type() != at::kCPU) {
      return at::empty(sizes, options);
    }
    size_t cap = 0;
    void* p = take(static_cast<size_t>(bytes), &cap);
    if (p == nullptr) return at::empty(sizes, options);
    return at::from_blob(
        p, sizes, [cap](void* q) { BlockCache::get().give(q, cap); }, options);
  }

  // Frees every cached block (blocks in use return later).
  void clear() {
    std::lock_guard<std::mutex> lock(mu_);
    for (const Block& b : free_) std::free(b.p);
    free_.clear();
    cached_ = 0;
  }

  // The most bytes the cache holds (default_limit() unless set).
  int64_t limit() {
    std::lock_guard<std::mutex> lock(mu_);
    return static_cast<int64_t>(limit_);
  }
  void set_limit(int64_t bytes) {
    std::lock_guard<std::mutex> lock(mu_);
    limit_ = static_cast<size_t>(bytes);
    while (cached_ > limit_ && !free_.empty()) {
      std::free(free_.front().p);
      cached_ -= free_.front().cap;
      free_.pop_front();
    }
  }

  // (bytes cached, blocks cached, blocks handed out from the cache so far).
  std::tuple<int64_t, int64_t, int64_t> info() {
    std::lock_guard<std::mutex> lock(mu_);
    return {static_cast<int64_t>(cached_), static_cast<int64_t>(free_.size()), reused_};
  }

 private:
  struct Block {
    void* p;
    size_t cap;
  };

  BlockCache() : limit_(default_limit()) {}

  static size_t default_limit() {
    size_t limit = size_t{512} << 20;
#if defined(_SC_PHYS_PAGES) && defined(_SC_PAGE_SIZE)
    const long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGE_SIZE);
    if (pages > 0 && page > 0) {
      limit = std::min(static_cast<size_t>(pages) * static_cast<size_t>(page) / 8, size_t{4} << 30);
    }
#endif
    return limit;
  }

  void* take(size_t bytes, size_t* cap) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      auto best = free_.end();
      for (auto it = free_.begin(); it != free_.end(); ++it) {
        if (it->cap >= bytes && it->cap <= 2 * bytes && (best == free_.end() || it->cap < best->cap)) best = it;
      }
      if (best != free_.end()) {
        void* p = best->p;
        *cap = best->cap;
        cached_ -= best->cap;
        free_.erase(best);
        ++reused_;
        return p;
      }
    }
    constexpr size_t kHuge = size_t{2} << 20;
    *cap = (bytes + kHuge - 1) / kHuge * kHuge;
    void* p = nullptr;
    if (posix_memalign(&p, kHuge, *cap) != 0) return nullptr;
#if defined(__linux__) && defined(MADV_HUGEPAGE)
    madvise(p, *cap, MADV_HUGEPAGE);  // a hint: refused where THP is off
#endif
    return p;
  }

  void give(void* p, size_t cap) {
    std::lock_guard<std::mutex> lock(mu_);
    if (cap > limit_) {
      std::free(p);
      return;
    }
    while (cached_ + cap > limit_ && !free_.empty()) {
      std::free(free_.front().p);
      cached_ -= free_.front().cap;
      free_.pop_front();
    }
    free_.push_back({p, cap});
    cached_ += cap;
  }

  std::mutex mu_;
  std::deque<Block> free_;  // oldest first
  size_t cached_ = 0;
  std::atomic<size_t> limit_{0};
  int64_t reused_ = 0;
};

}  // namespace rnnfast
