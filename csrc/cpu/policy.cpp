// The kernels' forced choices and limits, set from Python (rnnfast/backends/cpu.py: flags(), and the
// block cache's limit); nothing here is read from the environment.
#include <torch/library.h>

#include <tuple>

#include "blocks.h"
#include "common.h"

TORCH_LIBRARY_FRAGMENT(rnnfast_C, m) {
  // path: 0 the defaults, 1 the plain loop, 2 a row split, 3 a team; gemm: 0 the defaults, 1 ATen, 2 oneDNN,
  // 3 the blocked kernel (common.h, Options).
  m.def("set_options(int path, int gemm) -> ()", [](int64_t path, int64_t gemm) {
    TORCH_CHECK(path >= 0 && path <= 3, "set_options: path must be 0-3, got ", path);
    TORCH_CHECK(gemm >= 0 && gemm <= 3, "set_options: gemm must be 0-3, got ", gemm);
    rnnfast::Options::get().path.store(static_cast<int>(path));
    rnnfast::Options::get().gemm.store(static_cast<int>(gemm));
  });
  m.def("get_options() -> (int, int)", [] {
    const auto& o = rnnfast::Options::get();
    return std::make_tuple(static_cast<int64_t>(o.path.load()), static_cast<int64_t>(o.gemm.load()));
  });
  // The most bytes the block cache keeps (0 turns it off); blocks beyond it are freed.
  m.def("cache_set_limit(int bytes) -> ()", [](int64_t bytes) {
    TORCH_CHECK(bytes >= 0, "cache_set_limit: bytes must be >= 0, got ", bytes);
    rnnfast::BlockCache::get().set_limit(bytes);
  });
}
