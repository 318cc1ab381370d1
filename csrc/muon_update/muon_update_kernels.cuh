// Torch-free device ops of the fused Muon update (run by the multi-tensor driver, one launch for a
// list of tensors). Arithmetic in fp32, or fp64 when the state (buf / param) is fp64, each operation
// rounded separately (no FMA contraction), as in the CPU kernels and the reference.
#pragma once

#include "common/multi_tensor.cuh"

namespace muonext {
namespace cuda {

// Operands: ptr[0] = buf (read-write), ptr[1] = grad, ptr[2] = out.  table.g0 = μ, table.flag = nesterov.
//   M ← μ·M + G;  out ← G + μ·M (Nesterov) or M
struct MomentumOp : AccByFirstOperand<MomentumOp> {
  template <typename Acc>
  __device__ __forceinline__ static void run(const mt::TensorDesc& d, const mt::LaunchTable& tb, const mt::ChunkSplit& s) {
    const Acc mu = static_cast<Acc>(tb.g0);
    const bool nesterov = tb.flag != 0;
    void* buf = d.ptr[0];
    const void* grad = d.ptr[1];
    void* out = d.ptr[2];
    const uint8_t bt = d.dtype[0], gt = d.dtype[1], ot = d.dtype[2];
    for_each_element(
        s,
        [&](int64_t i) {
          const Acc g = load1<Acc>(grad, gt, i);
          const Acc m = add_rn(mul_rn(mu, load1<Acc>(buf, bt, i)), g);
          store1<Acc>(buf, bt, i, m);
          store1<Acc>(out, ot, i, nesterov ? add_rn(g, mul_rn(mu, m)) : m);
        },
        [&](int64_t i) {
          Acc b[8], g[8];
          load8<Acc>(buf, bt, i, b);
          load8<Acc>(grad, gt, i, g);
#pragma unroll
          for (int j = 0; j < 8; ++j) {
            b[j] = add_rn(mul_rn(mu, b[j]), g[j]);
            g[j] = nesterov ? add_rn(g[j], mul_rn(mu, b[j])) : b[j];
          }
          store8<Acc>(buf, bt, i, b);
          store8<Acc>(out, ot, i, g);
        });
  }
};

// Operands: ptr[0] = param (read-write), ptr[1] = update.  s0 = decay (1 − η·λ), s1 = alpha (η·scale).
//   W ← W·decay − alpha·U
struct ApplyOp : AccByFirstOperand<ApplyOp> {
  template <typename Acc>
  __device__ __forceinline__ static void run(const mt::TensorDesc& d, const mt::LaunchTable&, const mt::ChunkSplit& s) {
    const Acc decay = static_cast<Acc>(d.s0), alpha = static_cast<Acc>(d.s1);
    void* param = d.ptr[0];
    const void* upd = d.ptr[1];
    const uint8_t pt = d.dtype[0], ut = d.dtype[1];
    for_each_element(
        s,
        [&](int64_t i) {
          store1<Acc>(param, pt, i, sub_rn(mul_rn(load1<Acc>(param, pt, i), decay), mul_rn(alpha, load1<Acc>(upd, ut, i))));
        },
        [&](int64_t i) {
          Acc p[8], u[8];
          load8<Acc>(param, pt, i, p);
          load8<Acc>(upd, ut, i, u);
#pragma unroll
          for (int j = 0; j < 8; ++j) p[j] = sub_rn(mul_rn(p[j], decay), mul_rn(alpha, u[j]));
          store8<Acc>(param, pt, i, p);
        });
  }
};

}  // namespace cuda
}  // namespace muonext
