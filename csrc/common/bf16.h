// Torch-free bfloat16 storage type with round-to-nearest-even conversion, bit-compatible with
// c10::BFloat16 so the glue code can reinterpret ATen buffers. Used by the CPU kernels and the
// standalone C++ tests.
#pragma once

#include <cstdint>
#include <cstring>

namespace muonext {

struct bf16_t {
  uint16_t bits;
};

inline float bf16_to_float(bf16_t v) {
  uint32_t u = static_cast<uint32_t>(v.bits) << 16;
  float f;
  std::memcpy(&f, &u, sizeof(f));
  return f;
}

inline bf16_t float_to_bf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof(u));
  if ((u & 0x7fffffffu) > 0x7f800000u) return bf16_t{0x7fc0};  // any NaN -> canonical quiet NaN
  u += 0x7fffu + ((u >> 16) & 1u);                               // round to nearest, ties to even
  return bf16_t{static_cast<uint16_t>(u >> 16)};
}

// Load/store through the compute type; overloads keep the kernels generic over storage types.
inline float load(const float* p, int64_t i) { return p[i]; }
inline double load(const double* p, int64_t i) { return p[i]; }
inline float load(const bf16_t* p, int64_t i) { return bf16_to_float(p[i]); }
inline void store(float* p, int64_t i, float v) { p[i] = v; }
inline void store(double* p, int64_t i, double v) { p[i] = v; }
inline void store(bf16_t* p, int64_t i, float v) { p[i] = float_to_bf16(v); }

}  // namespace muonext
