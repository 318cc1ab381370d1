// Torch-free cast-copy used by pack/unpack: flattening many tensors (or element ranges of them)
// into one communication buffer and back.
#pragma once

#include <cstdint>

#include "common/bf16.h"

namespace muonext {

template <typename Src, typename Dst>
void cast_copy_span(const Src* src, Dst* dst, int64_t n) {
  using acc_t = decltype(load(src, 0));
  for (int64_t i = 0; i < n; ++i) store(dst, i, static_cast<decltype(load(dst, 0))>(static_cast<acc_t>(load(src, i))));
}

}  // namespace muonext
