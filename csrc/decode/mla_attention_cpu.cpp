// CPU kernel of mla_decode_attention: one new token per sequence attends to its MLA latent cache
// with kv_b_proj absorbed (the math of MLAttention.decode's absorbed branch, muonext/models/attention.py),
// in one op instead of ~25 small ATen ops per layer and step. Per (sequence, head):
//   q_lat = W_UK[h]ᵀ·q_nope          (r)          scores_s = (q_lat·c_s + q_rope·k_rope_s)·scale + mask_s
//   p = softmax(scores)              (S)          out = W_UV[h]·(Σ_s p_s c_s)      (V)
// fp32 on x86-64 with AVX-512F (vectorised loops and exp); the Python layer uses it only there
// (muonext.ops.cpu_fast_kernels()) and keeps the bmm path for everything else.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "common/check.h"
#include "decode/avx512_math.h"
#include "skinny_gemm/skinny_gemm.h"


namespace muonext {
namespace {

#ifdef MX_AVX512_OK
using namespace avx512;

struct Shapes {
  int64_t H, Qn, R, r, V, S;
};

// One (sequence, head). q_nope (Qn), q_rope (R), cache rows (S × (r+R), row stride r+R), mask (S),
// w (H·(Qn+V), r) = kv_b_proj.weight, out (V). work: (r + R) + r + S floats.
MX_AVX512 void attend_one(const float* q_nope, const float* q_rope, const float* cache, const float* mask,
                          const float* w, int64_t h, const Shapes& d, float scale, float* work, float* out) {
  const int64_t lat = d.r + d.R;
  float* q = work;  // [W_UKᵀ·q_nope | q_rope]: one dot with each cache row [c | k_rope] gives the score
  float* o_lat = work + lat;
  float* p = work + lat + d.r;
  const float* w_uk = w + h * (d.Qn + d.V) * d.r;  // rows qn = 0..Qn-1 of head h, each r wide
  const float* w_uv = w_uk + d.Qn * d.r;            // rows v = 0..V-1
  std::fill(q, q + d.r, 0.f);
  for (int64_t i = 0; i < d.Qn; ++i) axpy(q_nope[i], w_uk + i * d.r, q, d.r);
  std::copy(q_rope, q_rope + d.R, q + d.r);
  float max_score = -std::numeric_limits<float>::infinity();
  for (int64_t s = 0; s < d.S; ++s) {
    p[s] = dot(q, cache + s * lat, lat) * scale + mask[s];
    max_score = std::max(max_score, p[s]);
  }
  __m512 sum = _mm512_setzero_ps();
  const __m512 mx = _mm512_set1_ps(max_score);
  for (int64_t s = 0; s < d.S; s += 16) {
    const __mmask16 m = tail(d.S - s);
    const __m512 e = _mm512_maskz_mov_ps(m, exp16(_mm512_sub_ps(_mm512_maskz_loadu_ps(m, p + s), mx)));
    _mm512_mask_storeu_ps(p + s, m, e);
    sum = _mm512_add_ps(sum, e);
  }
  const float inv = 1.0f / _mm512_reduce_add_ps(sum);
  std::fill(o_lat, o_lat + d.r, 0.f);
  for (int64_t s = 0; s < d.S; ++s) axpy(p[s] * inv, cache + s * lat, o_lat, d.r);
  for (int64_t v = 0; v < d.V; ++v) out[v] = dot(w_uv + v * d.r, o_lat, d.r);
}
#endif

void check_strided_rows(const at::Tensor& t, const char* name, int64_t dim) {
  MX_CHECK_VALUE(t.dim() == dim, "mla_decode_attention: ", name, " must be ", dim, "-D, got shape ", t.sizes());
  MX_CHECK_TYPE(t.scalar_type() == at::kFloat, "mla_decode_attention: ", name, " must be float32, got ",
                t.scalar_type());
  MX_CHECK_VALUE(t.device().is_cpu(), "mla_decode_attention: ", name, " must be on the CPU, got ", t.device());
}

at::Tensor mla_decode_attention_cpu(const at::Tensor& q_nope, const at::Tensor& q_rope, const at::Tensor& cache,
                                    const at::Tensor& kv_b_weight, const at::Tensor& mask, double scale) {
  check_strided_rows(q_nope, "q_nope", 3);
  check_strided_rows(q_rope, "q_rope", 3);
  check_strided_rows(cache, "cache", 3);
  check_strided_rows(kv_b_weight, "kv_b_weight", 2);
  check_strided_rows(mask, "mask", 2);
  const int64_t B = q_nope.size(0), H = q_nope.size(1), Qn = q_nope.size(2), R = q_rope.size(2);
  const int64_t S = cache.size(1), r = cache.size(2) - R;
  MX_CHECK_VALUE(q_rope.size(0) == B && q_rope.size(1) == H, "mla_decode_attention: q_rope must be (", B, ", ", H,
                 ", R) like q_nope, got ", q_rope.sizes());
  MX_CHECK_VALUE(cache.size(0) == B && r > 0, "mla_decode_attention: cache must be (", B, ", S, r + ", R,
                 ") with r > 0, got ", cache.sizes());
  MX_CHECK_VALUE(kv_b_weight.size(1) == r && kv_b_weight.size(0) % H == 0 && kv_b_weight.size(0) / H > Qn,
                 "mla_decode_attention: kv_b_weight must be (", H, "·(", Qn, " + V), ", r, "), got ",
                 kv_b_weight.sizes());
  MX_CHECK_VALUE(mask.size(0) == B && mask.size(1) == S, "mla_decode_attention: mask must be (", B, ", ", S,
                 "), got ", mask.sizes());
  MX_CHECK_VALUE(S > 0, "mla_decode_attention: the cache is empty (S = 0)");
  const int64_t V = kv_b_weight.size(0) / H - Qn;
  MX_CHECK(skinny::cpu_supported(), "mla_decode_attention: needs a CPU with AVX-512F (check "
           "muonext.ops.cpu_fast_kernels() and use the bmm path otherwise)");
  at::Tensor out = at::empty({B, H * V}, q_nope.options());
#ifdef MX_AVX512_OK
  // rows of the cache must be contiguous (Lat floats); sequences may be strided (a slice of a longer cache)
  const at::Tensor qn = q_nope.contiguous(), qr = q_rope.contiguous(), w = kv_b_weight.contiguous();
  const at::Tensor m = mask.contiguous();
  const at::Tensor c = (cache.stride(2) == 1 && cache.stride(1) == r + R) ? cache : cache.contiguous();
  const Shapes d{H, Qn, R, r, V, S};
  const float f_scale = static_cast<float>(scale);
  const float *qn_p = qn.data_ptr<float>(), *qr_p = qr.data_ptr<float>(), *c_p = c.data_ptr<float>();
  const float *w_p = w.data_ptr<float>(), *m_p = m.data_ptr<float>();
  float* out_p = out.data_ptr<float>();
  const int64_t c_stride = c.stride(0);
  at::parallel_for(0, B * H, 1, [&](int64_t lo, int64_t hi) {
    std::vector<float> work(2 * r + R + S);
    for (int64_t i = lo; i < hi; ++i) {
      const int64_t b = i / H, h = i % H;
      attend_one(qn_p + i * Qn, qr_p + i * R, c_p + b * c_stride, m_p + b * S, w_p, h, d, f_scale, work.data(),
                 out_p + b * H * V + h * V);
    }
  });
#endif
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(muonext, CPU, m) { m.impl("mla_decode_attention", &mla_decode_attention_cpu); }

}  // namespace muonext
