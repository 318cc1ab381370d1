// Torch-free element kernels of the Muon update, over any storage types (float, double, bf16_t).
// Each works on the element span [begin, end) of one tensor; the caller spreads spans over threads.
// Arithmetic is in float (double when the state is double).
#pragma once

#include <cstdint>

#include "common/bf16.h"

namespace muonext {

struct MomentumArgs {
  double momentum;  // μ
  bool nesterov;
};

// Sum-form momentum (Moonlight):  M ← μ·M + G;  out ← G + μ·M (Nesterov) or M.
template <typename Buf, typename Grad, typename Out>
void momentum_span(Buf* buf, const Grad* grad, Out* out, int64_t begin, int64_t end, MomentumArgs args) {
  using acc_t = decltype(load(buf, 0));
  const acc_t mu = static_cast<acc_t>(args.momentum);
  for (int64_t i = begin; i < end; ++i) {
    const acc_t g = static_cast<acc_t>(load(grad, i));
    const acc_t m = mu * load(buf, i) + g;
    store(buf, i, m);
    store(out, i, static_cast<decltype(load(out, 0))>(args.nesterov ? g + mu * m : m));
  }
}

struct ApplyArgs {
  double decay;  // 1 − η·λ   (decoupled weight decay with the unscaled learning rate)
  double alpha;  // η·s(A, B) (the scaled learning rate)
};

// W ← W·(1 − η·λ) − η·s·U
template <typename Param, typename Update>
void apply_span(Param* param, const Update* update, int64_t begin, int64_t end, ApplyArgs args) {
  using acc_t = decltype(load(param, 0));
  const acc_t decay = static_cast<acc_t>(args.decay);
  const acc_t alpha = static_cast<acc_t>(args.alpha);
  for (int64_t i = begin; i < end; ++i) {
    store(param, i, load(param, i) * decay - alpha * static_cast<acc_t>(load(update, i)));
  }
}

}  // namespace muonext
