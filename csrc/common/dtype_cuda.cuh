// Torch-free device loads/stores of the storage types named by mt::DType codes, with the same
// conversions as torch's CUDA casts: bf16 → fp32 exact; fp32 → bf16 round-to-nearest-even
// (cvt.rn.bf16.f32, as c10::BFloat16 on sm_80+); fp64 → bf16 through fp32, as c10 does.
#pragma once

#include <cuda_bf16.h>

#include <cstdint>

#include "common/multi_tensor_plan.h"

namespace muonext {
namespace cuda {

__device__ __forceinline__ float bf16_bits_to_float(uint16_t b) { return __uint_as_float(static_cast<uint32_t>(b) << 16); }

__device__ __forceinline__ uint16_t float_to_bf16_bits(float f) { return __bfloat16_as_ushort(__float2bfloat16_rn(f)); }

// Round-to-nearest arithmetic without FMA contraction, so results match the unfused torch reference.
__device__ __forceinline__ float mul_rn(float a, float b) { return __fmul_rn(a, b); }
__device__ __forceinline__ double mul_rn(double a, double b) { return __dmul_rn(a, b); }
__device__ __forceinline__ float add_rn(float a, float b) { return __fadd_rn(a, b); }
__device__ __forceinline__ double add_rn(double a, double b) { return __dadd_rn(a, b); }
__device__ __forceinline__ float sub_rn(float a, float b) { return __fsub_rn(a, b); }
__device__ __forceinline__ double sub_rn(double a, double b) { return __dsub_rn(a, b); }

// Element i of a buffer of storage type `dt`, converted to Acc (float or double).
template <typename Acc>
__device__ __forceinline__ Acc load1(const void* p, uint8_t dt, int64_t i) {
  if (dt == mt::kBF16) return static_cast<Acc>(bf16_bits_to_float(static_cast<const uint16_t*>(p)[i]));
  if (dt == mt::kF64) return static_cast<Acc>(static_cast<const double*>(p)[i]);
  return static_cast<Acc>(static_cast<const float*>(p)[i]);
}

template <typename Acc>
__device__ __forceinline__ void store1(void* p, uint8_t dt, int64_t i, Acc v) {
  if (dt == mt::kBF16) {
    static_cast<uint16_t*>(p)[i] = float_to_bf16_bits(static_cast<float>(v));
  } else if (dt == mt::kF64) {
    static_cast<double*>(p)[i] = static_cast<double>(v);
  } else {
    static_cast<float*>(p)[i] = static_cast<float>(v);
  }
}

// kVec (= 8) elements starting at element i, whose address is 16-byte aligned (the caller's peel
// guarantees it): one 16 B access for bf16, two for fp32, four for fp64.
template <typename Acc>
__device__ __forceinline__ void load8(const void* p, uint8_t dt, int64_t i, Acc (&v)[8]) {
  if (dt == mt::kBF16) {
    const uint4 u = *reinterpret_cast<const uint4*>(static_cast<const uint16_t*>(p) + i);
    const uint32_t w[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      v[2 * j] = static_cast<Acc>(__uint_as_float(w[j] << 16));
      v[2 * j + 1] = static_cast<Acc>(__uint_as_float(w[j] & 0xffff0000u));
    }
  } else if (dt == mt::kF64) {
    const double2* q = reinterpret_cast<const double2*>(static_cast<const double*>(p) + i);
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const double2 d = q[j];
      v[2 * j] = static_cast<Acc>(d.x);
      v[2 * j + 1] = static_cast<Acc>(d.y);
    }
  } else {
    const float4* q = reinterpret_cast<const float4*>(static_cast<const float*>(p) + i);
#pragma unroll
    for (int j = 0; j < 2; ++j) {
      const float4 f = q[j];
      v[4 * j] = static_cast<Acc>(f.x);
      v[4 * j + 1] = static_cast<Acc>(f.y);
      v[4 * j + 2] = static_cast<Acc>(f.z);
      v[4 * j + 3] = static_cast<Acc>(f.w);
    }
  }
}

template <typename Acc>
__device__ __forceinline__ void store8(void* p, uint8_t dt, int64_t i, const Acc (&v)[8]) {
  if (dt == mt::kBF16) {
    uint32_t w[4];
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      w[j] = static_cast<uint32_t>(float_to_bf16_bits(static_cast<float>(v[2 * j]))) |
             (static_cast<uint32_t>(float_to_bf16_bits(static_cast<float>(v[2 * j + 1]))) << 16);
    }
    *reinterpret_cast<uint4*>(static_cast<uint16_t*>(p) + i) = make_uint4(w[0], w[1], w[2], w[3]);
  } else if (dt == mt::kF64) {
    double2* q = reinterpret_cast<double2*>(static_cast<double*>(p) + i);
#pragma unroll
    for (int j = 0; j < 4; ++j) q[j] = make_double2(static_cast<double>(v[2 * j]), static_cast<double>(v[2 * j + 1]));
  } else {
    float4* q = reinterpret_cast<float4*>(static_cast<float*>(p) + i);
#pragma unroll
    for (int j = 0; j < 2; ++j) {
      q[j] = make_float4(static_cast<float>(v[4 * j]), static_cast<float>(v[4 * j + 1]), static_cast<float>(v[4 * j + 2]),
                         static_cast<float>(v[4 * j + 3]));
    }
  }
}

}  // namespace cuda
}  // namespace muonext
