// CPU kernels of the per-row decode ops, each one pass (or two) over a row instead of 4–6 ATen ops:
//   rms_norm_rows(x, weight, eps)   x / sqrt(mean(x²) + eps) · weight, fp32, any number of rows
//   logsumexp_argmax(logits)        (logsumexp, first argmax) of each row of (B, V) logits, NaN-aware
// fp32 on x86-64 with AVX-512F; the Python layer uses them only where muonext.ops.cpu_fast_kernels().
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <limits>
#include <tuple>

#include "common/check.h"
#include "common/avx512_math.h"
#include "skinny_gemm/skinny_gemm.h"

namespace muonext {
namespace {

#ifdef MX_AVX512_OK
using namespace avx512;

MX_AVX512 void rms_norm_row(const float* x, const float* w, float* y, int64_t D, float eps) {
  __m512 ss = _mm512_setzero_ps();
  for (int64_t i = 0; i < D; i += 16) {
    const __m512 v = _mm512_maskz_loadu_ps(tail(D - i), x + i);
    ss = _mm512_fmadd_ps(v, v, ss);
  }
  const __m512 inv = _mm512_set1_ps(1.0f / std::sqrt(_mm512_reduce_add_ps(ss) / static_cast<float>(D) + eps));
  for (int64_t i = 0; i < D; i += 16) {
    const __mmask16 m = tail(D - i);
    // (x · inv) · w, the order of transformers' DeepseekV3RMSNorm
    _mm512_mask_storeu_ps(y + i, m, _mm512_mul_ps(_mm512_mul_ps(_mm512_maskz_loadu_ps(m, x + i), inv),
                                                  _mm512_maskz_loadu_ps(m, w + i)));
  }
}

// (logsumexp, argmax) of one row. A NaN anywhere gives (NaN, index of the first NaN), as torch.argmax.
MX_AVX512 std::pair<float, int64_t> lse_argmax_row(const float* x, int64_t V) {
  const float ninf = -std::numeric_limits<float>::infinity();
  __m512 best = _mm512_set1_ps(ninf);
  __m512i best_idx = _mm512_setzero_si512();
  __m512i idx = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  const __m512i step = _mm512_set1_epi32(16);
  for (int64_t i = 0; i < V; i += 16) {
    const __mmask16 m = tail(V - i);
    const __m512 v = _mm512_mask_loadu_ps(_mm512_set1_ps(ninf), m, x + i);
    if (_mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q)) {
      for (int64_t j = i;; ++j)
        if (std::isnan(x[j])) return {std::numeric_limits<float>::quiet_NaN(), j};
    }
    const __mmask16 gt = _mm512_cmp_ps_mask(v, best, _CMP_GT_OQ);  // strict: each lane keeps its first max
    best = _mm512_mask_mov_ps(best, gt, v);
    best_idx = _mm512_mask_mov_epi32(best_idx, gt, idx);
    idx = _mm512_add_epi32(idx, step);
  }
  const float mx = _mm512_reduce_max_ps(best);
  // the smallest index among the lanes holding the maximum = the first maximum of the row
  const __mmask16 at_max = _mm512_cmp_ps_mask(best, _mm512_set1_ps(mx), _CMP_EQ_OQ);
  const int64_t arg = _mm512_mask_reduce_min_epi32(at_max, best_idx);
  if (mx == ninf) return {ninf, arg};  // every entry −inf
  if (mx == std::numeric_limits<float>::infinity()) return {mx, arg};
  const __m512 mxv = _mm512_set1_ps(mx);
  __m512 sum = _mm512_setzero_ps();
  for (int64_t i = 0; i < V; i += 16) {
    const __mmask16 m = tail(V - i);
    sum = _mm512_add_ps(sum, _mm512_maskz_mov_ps(m, exp16(_mm512_sub_ps(_mm512_maskz_loadu_ps(m, x + i), mxv))));
  }
  return {mx + std::log(_mm512_reduce_add_ps(sum)), arg};
}
#endif

void check_fp32_cpu(const char* op, const at::Tensor& t, const char* name) {
  MX_CHECK_TYPE(t.scalar_type() == at::kFloat, op, ": ", name, " must be float32, got ", t.scalar_type());
  MX_CHECK_VALUE(t.device().is_cpu(), op, ": ", name, " must be on the CPU, got ", t.device());
  MX_CHECK(skinny::cpu_supported(), op, ": needs a CPU with AVX-512F (check muonext.ops.cpu_fast_kernels())");
}

at::Tensor rms_norm_rows_cpu(const at::Tensor& x, const at::Tensor& weight, double eps) {
  check_fp32_cpu("rms_norm_rows", x, "x");
  check_fp32_cpu("rms_norm_rows", weight, "weight");
  MX_CHECK_VALUE(x.dim() >= 1 && weight.dim() == 1 && weight.size(0) == x.size(-1),
                 "rms_norm_rows: weight must be 1-D with x's last dimension, got x ", x.sizes(), " and weight ",
                 weight.sizes());
  const at::Tensor xc = x.contiguous(), wc = weight.contiguous();
  at::Tensor y = at::empty_like(xc);
  const int64_t D = x.size(-1), rows = D ? x.numel() / D : 0;
#ifdef MX_AVX512_OK
  const float *xp = xc.data_ptr<float>(), *wp = wc.data_ptr<float>();
  float* yp = y.data_ptr<float>();
  at::parallel_for(0, rows, 16, [&](int64_t lo, int64_t hi) {
    for (int64_t i = lo; i < hi; ++i) rms_norm_row(xp + i * D, wp, yp + i * D, D, static_cast<float>(eps));
  });
#endif
  return y;
}

std::tuple<at::Tensor, at::Tensor> logsumexp_argmax_cpu(const at::Tensor& logits) {
  check_fp32_cpu("logsumexp_argmax", logits, "logits");
  MX_CHECK_VALUE(logits.dim() == 2 && logits.size(1) > 0, "logsumexp_argmax: logits must be (B, V) with V > 0, got ",
                 logits.sizes());
  const at::Tensor lc = logits.contiguous();
  const int64_t B = lc.size(0), V = lc.size(1);
  at::Tensor lse = at::empty({B}, lc.options());
  at::Tensor arg = at::empty({B}, lc.options().dtype(at::kLong));
#ifdef MX_AVX512_OK
  const float* lp = lc.data_ptr<float>();
  float* lse_p = lse.data_ptr<float>();
  int64_t* arg_p = arg.data_ptr<int64_t>();
  at::parallel_for(0, B, 1, [&](int64_t lo, int64_t hi) {
    for (int64_t b = lo; b < hi; ++b) std::tie(lse_p[b], arg_p[b]) = lse_argmax_row(lp + b * V, V);
  });
#endif
  return {lse, arg};
}

}  // namespace

TORCH_LIBRARY_IMPL(muonext, CPU, m) {
  m.impl("rms_norm_rows", &rms_norm_rows_cpu);
  m.impl("logsumexp_argmax", &logsumexp_argmax_cpu);
}

}  // namespace muonext
