// Large float32 products through oneDNN, with ATen's GEMM as the fallback.
//
// oneDNN is what torch.nn.LSTM's CPU path uses, with the weight packed once into its blocked layout; on some
// machines it runs well ahead of ATen's GEMM (figures: docs/cpu.md). The extension reaches it through the
// `mkldnn::` operators torch registers (`_reorder_linear_weight` packs, `_linear_pointwise` multiplies):
// torch does not export oneDNN's own symbols. A call costs ~25 µs of fixed overhead (primitive lookup), so
// only products of at least kDnnlMinWork multiply-adds go there. flags(gemm="aten") turns it off; any
// failure of a oneDNN call (a torch built without it, an unexpected layout) falls back to at::mm for good.
#pragma once

#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include <atomic>
#include <optional>

#include "common.h"

namespace rnnfast {

// Below ~2M multiply-adds the oneDNN call overhead eats the gain (measured: 16x256x1024, 4.2M, 69 µs vs
// 86 µs through MKL; 4x256x1024, 1M, 27 µs vs 20 µs for the register-blocked kernel of matmul.h).
constexpr int64_t kDnnlMinWork = int64_t{1} << 21;

class Dnnl {
 public:
  static Dnnl& get() {
    static Dnnl d;
    return d;
  }
  bool usable() const { return ok_.load(std::memory_order_relaxed) && forced_gemm() != GemmChoice::kAten; }
  void disable(const char* why) {
    if (ok_.exchange(false)) {
      TORCH_WARN_ONCE("rnnfast: oneDNN products disabled, using at::mm (", why, ")");
    }
  }

  // w (N, K) float32 contiguous -> oneDNN-blocked copy for products with about m rows.
  at::Tensor pack(const at::Tensor& w, int64_t m) const {
    torch::jit::Stack s{w, m};
    reorder_->callBoxed(&s);
    return s[0].toTensor();
  }
  // x (M, K) · wᵀ (+ bias (N)) with w from pack() or a plain (N, K) tensor -> new (M, N).
  at::Tensor linear(const at::Tensor& x, const at::Tensor& w, const at::Tensor& bias = at::Tensor()) const {
    torch::jit::Stack s{x, w, bias.defined() ? c10::IValue(bias) : c10::IValue(), std::string("none"),
                        c10::List<std::optional<at::Scalar>>(), c10::IValue()};
    linear_->callBoxed(&s);
    return s[0].toTensor();
  }

 private:
  Dnnl() {
    auto& d = c10::Dispatcher::singleton();
    auto lin = d.findSchema({"mkldnn::_linear_pointwise", ""});
    auto reo = d.findSchema({"mkldnn::_reorder_linear_weight", ""});
    if (at::hasMKLDNN() && lin.has_value() && reo.has_value()) {
      linear_ = *lin;
      reorder_ = *reo;
      ok_ = true;
    }
  }
  std::optional<c10::OperatorHandle> linear_, reorder_;
  std::atomic<bool> ok_{false};
};

inline bool dnnl_pays(const at::Tensor& w, int64_t m, int64_t min_work = kDnnlMinWork) {
  return w.scalar_type() == at::kFloat && m * w.size(0) * w.size(1) >= min_work && Dnnl::get().usable();
}

// y (M, N) = x (M, K) · wᵀ (+ y when accumulate), as torch.nn.functional.linear without bias.
// y may be a view with strided rows (stride(1) == 1).
inline void mm_nt(at::Tensor& y, const at::Tensor& x, const at::Tensor& w, bool accumulate = false) {
  if (dnnl_pays(w, x.size(0))) {
    try {
      at::Tensor r = Dnnl::get().linear(x.contiguous(), w.contiguous());
      if (accumulate) {
        y.add_(r);
      } else {
        y.copy_(r);
      }
      return;
    } catch (const std::exception& e) {
      Dnnl::get().disable(e.what());
    }
  }
  if (accumulate) {
    y.addmm_(x, w.t());
  } else {
    at::mm_out(y, x, w.t());
  }
}

// A weight applied at every step of a loop: packed once for oneDNN when the products are big enough.
class LinearNT {
 public:
  // w (N, K) float32/float64, contiguous or a transposed view; m_hint: the rows of the products to
  // come; uses: how many products will be taken. min_work: the multiply-adds per product from which
  // oneDNN takes them. Packing costs two to five products (docs/cpu.md) and a transposed view a copy as
  // much again, so a contiguous weight is packed from kPackMinUses products, a transposed one from
  // kPackCopyMinUses; below that it runs unpacked, a transposed one through ATen, which reads it in place.
  static constexpr int64_t kPackMinUses = 8, kPackCopyMinUses = 16;
  LinearNT(const at::Tensor& w, int64_t m_hint, int64_t uses = kPackMinUses, int64_t min_work = kDnnlMinWork)
      : w_(w) {
    const bool copy = !w.is_contiguous();
    if (!dnnl_pays(w, m_hint, min_work) || (copy && uses < kPackCopyMinUses)) return;
    try {
      w_ = contiguous_2d(w);
      packed_ = uses >= kPackMinUses ? Dnnl::get().pack(w_, m_hint) : w_;
    } catch (const std::exception& e) {
      Dnnl::get().disable(e.what());
    }
  }
  bool uses_dnnl() const { return packed_.defined(); }

  // x (M, K) · wᵀ as a new (M, N) tensor.
  at::Tensor product(const at::Tensor& x) const {
    if (packed_.defined() && Dnnl::get().usable()) {
      try {
        return Dnnl::get().linear(x.contiguous(), packed_);
      } catch (const std::exception& e) {
        Dnnl::get().disable(e.what());
      }
    }
    return at::mm(x, w_.t());
  }

  // y (M, N) = x (M, K) · wᵀ (+ y when accumulate).
  void apply(const at::Tensor& x, at::Tensor& y, bool accumulate = false) const {
    at::Tensor r = product(x);
    if (accumulate) {
      y.add_(r);
    } else {
      y.copy_(r);
    }
  }

 private:
  at::Tensor w_, packed_;  // packed_: the weight oneDNN gets (packed, or w_ itself); undefined: ATen
};

}  // namespace rnnfast
