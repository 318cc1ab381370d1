// AVX-512 building blocks of the CPU decode kernels: e^x, tail masks, dot, axpy. Each function carries
// its own target attribute; callers run them only where skinny::cpu_supported() (AVX-512F at run time).
#pragma once

#include <cstdint>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define MX_AVX512_OK 1
#define MX_AVX512 __attribute__((target("avx512f")))

namespace muonext::avx512 {

// e^x for 16 lanes: x = n·ln2 + t, e^t by the Cephes degree-6 polynomial (|t| ≤ ln2/2), scaled by 2^n.
// Relative error ≈ 2 ulp; e^x = 0 below −87.3 (masked positions carry −inf).
MX_AVX512 inline __m512 exp16(__m512 x) {
  const __m512 lo = _mm512_set1_ps(-87.33654f);
  const __mmask16 underflow = _mm512_cmp_ps_mask(x, lo, _CMP_LT_OQ);
  x = _mm512_min_ps(_mm512_max_ps(x, lo), _mm512_set1_ps(88.37626f));
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 t = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);  // ln2 in two parts: t exact
  t = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), t);
  __m512 p = _mm512_set1_ps(1.9875691500e-4f);
  p = _mm512_fmadd_ps(p, t, _mm512_set1_ps(1.3981999507e-3f));
  p = _mm512_fmadd_ps(p, t, _mm512_set1_ps(8.3334519073e-3f));
  p = _mm512_fmadd_ps(p, t, _mm512_set1_ps(4.1665795894e-2f));
  p = _mm512_fmadd_ps(p, t, _mm512_set1_ps(1.6666665459e-1f));
  p = _mm512_fmadd_ps(p, t, _mm512_set1_ps(5.0000001201e-1f));
  p = _mm512_fmadd_ps(_mm512_mul_ps(p, t), t, _mm512_add_ps(t, _mm512_set1_ps(1.0f)));
  return _mm512_maskz_mov_ps(static_cast<__mmask16>(~underflow), _mm512_scalef_ps(p, n));
}

// Lanes [0, min(left, 16)).
MX_AVX512 inline __mmask16 tail(int64_t left) {
  return left >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << left) - 1);
}

MX_AVX512 inline float dot(const float* a, const float* b, int64_t n) {
  __m512 acc = _mm512_setzero_ps();
  for (int64_t i = 0; i < n; i += 16) {
    const __mmask16 m = tail(n - i);
    acc = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, a + i), _mm512_maskz_loadu_ps(m, b + i), acc);
  }
  return _mm512_reduce_add_ps(acc);
}

// y[0, n) += a·x[0, n)
MX_AVX512 inline void axpy(float a, const float* x, float* y, int64_t n) {
  const __m512 av = _mm512_set1_ps(a);
  for (int64_t i = 0; i < n; i += 16) {
    const __mmask16 m = tail(n - i);
    _mm512_mask_storeu_ps(y + i, m,
                          _mm512_fmadd_ps(av, _mm512_maskz_loadu_ps(m, x + i), _mm512_maskz_loadu_ps(m, y + i)));
  }
}

}  // namespace muonext::avx512

#endif
