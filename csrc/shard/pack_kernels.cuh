// Torch-free device op of pack / unpack_: a cast-copy of one element range per tensor, run by the
// multi-tensor driver (one launch for the whole list). Conversions go through fp32, or fp64 when the
// source is fp64, exactly as torch's CUDA casts, so the result is bitwise equal to `.to(dtype)`.
#pragma once

#include "common/multi_tensor.cuh"

namespace muonext {
namespace cuda {

// Operands: ptr[0] = source range, ptr[1] = destination range.
struct CastCopyOp : AccByFirstOperand<CastCopyOp> {
  template <typename Acc>
  __device__ __forceinline__ static void run(const mt::TensorDesc& d, const mt::LaunchTable&, const mt::ChunkSplit& s) {
    const void* src = d.ptr[0];
    void* dst = d.ptr[1];
    const uint8_t st = d.dtype[0], dt = d.dtype[1];
    for_each_element(
        s, [&](int64_t i) { store1<Acc>(dst, dt, i, load1<Acc>(src, st, i)); },
        [&](int64_t i) {
          Acc v[8];
          load8<Acc>(src, st, i, v);
          store8<Acc>(dst, dt, i, v);
        });
  }
};

}  // namespace cuda
}  // namespace muonext
