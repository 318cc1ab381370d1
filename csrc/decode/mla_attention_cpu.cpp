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
#include <limits>
#include <vector>

#include "common/check.h"
#include "common/avx512_math.h"
#include "skinny_gemm/skinny_gemm.h"

namespace muonext {
namespace {

#ifdef MX_AVX512_OK
using namespace avx512;

struct Shapes {
  int64_t H, Qn, R, r, V, S;
};

constexpr int64_t kHeadBlock = 8;  // heads whose o_lat accumulators share one load of a cache row

// Floats of scratch one sequence needs (attend_seq's work).
int64_t work_floats(const Shapes& d) {
  return d.H * (d.r + d.R) + d.H * d.S + d.H * d.r + skinny::packed_floats(d.H, d.r + d.R);
}

// One sequence, all heads. q_nope (H × Qn), q_rope (H × R), cache rows (S × (r+R), row stride r+R),
// mask (S), w (H·(Qn+V), r) = kv_b_proj.weight, out (H × V). The cache is read twice (scores, then
// the weighted sum of c), each time once for all heads.
MX_AVX512 void attend_seq(const float* q_nope, const float* q_rope, const float* cache, const float* mask,
                          const float* w, const Shapes& d, float scale, float* work, float* out) {
  const int64_t H = d.H, S = d.S, r = d.r, lat = d.r + d.R;
  float* q = work;         // H × lat: [W_UK[h]ᵀ·q_nope[h] | q_rope[h]], so score = q[h]·[c_s | k_rope_s]
  float* p = q + H * lat;  // H × S: scores, then unnormalised probabilities
  float* o_lat = p + H * S;  // H × r
  float* packed = o_lat + H * r;
  for (int64_t h = 0; h < H; ++h) {
    const float* w_uk = w + h * (d.Qn + d.V) * r;  // rows qn = 0..Qn-1 of head h, each r wide
    float* qh = q + h * lat;
    std::fill(qh, qh + r, 0.f);
    for (int64_t i = 0; i < d.Qn; ++i) axpy(q_nope[h * d.Qn + i], w_uk + i * r, qh, r);
    std::copy(q_rope + h * d.R, q_rope + (h + 1) * d.R, qh + r);
  }
  // scores (H, S) = q · cacheᵀ: the cache rows are the (N, K) weight of the skinny GEMM
  if (H <= skinny::kDotRows) {
    skinny::gemm_rows_dot(q, lat, H, cache, S, lat, 0, S, p, S);
  } else {
    for (int64_t h0 = 0; h0 < H; h0 += skinny::kMaxRows) {
      const int64_t rows = std::min(skinny::kMaxRows, H - h0);
      const float* qT = skinny::pack_rows(q + h0 * lat, lat, rows, lat, packed);
      skinny::gemm_rows(qT, rows, cache, S, lat, 0, S, p + h0 * S, S);
    }
  }
  float inv_sum[256];  // H ≤ 256 (checked by the op)
  for (int64_t h = 0; h < H; ++h) {
    float* ph = p + h * S;
    const __m512 sc = _mm512_set1_ps(scale);
    __m512 mx = _mm512_set1_ps(-std::numeric_limits<float>::infinity());
    for (int64_t s = 0; s < S; s += 16) {
      const __mmask16 m = tail(S - s);
      const __m512 v = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, ph + s), sc, _mm512_maskz_loadu_ps(m, mask + s));
      _mm512_mask_storeu_ps(ph + s, m, v);
      mx = _mm512_mask_max_ps(mx, m, mx, v);
    }
    const __m512 max_v = _mm512_set1_ps(_mm512_reduce_max_ps(mx));
    __m512 sum = _mm512_setzero_ps();
    for (int64_t s = 0; s < S; s += 16) {
      const __mmask16 m = tail(S - s);
      const __m512 e = _mm512_maskz_mov_ps(m, exp16(_mm512_sub_ps(_mm512_maskz_loadu_ps(m, ph + s), max_v)));
      _mm512_mask_storeu_ps(ph + s, m, e);
      sum = _mm512_add_ps(sum, e);
    }
    inv_sum[h] = 1.0f / _mm512_reduce_add_ps(sum);
  }
  // o_lat[h] = Σ_s p[h, s]·c_s: per 16 columns of c and block of heads, accumulators stay in registers
  for (int64_t c0 = 0; c0 < r; c0 += 16) {
    const __mmask16 m = tail(r - c0);
    for (int64_t h0 = 0; h0 < H; h0 += kHeadBlock) {
      const int64_t hn = std::min(kHeadBlock, H - h0);
      __m512 acc[kHeadBlock];
      for (auto& a : acc) a = _mm512_setzero_ps();
      for (int64_t s = 0; s < S; ++s) {
        const __m512 cv = _mm512_maskz_loadu_ps(m, cache + s * lat + c0);
        for (int64_t j = 0; j < kHeadBlock; ++j)
          if (j < hn) acc[j] = _mm512_fmadd_ps(_mm512_set1_ps(p[(h0 + j) * S + s]), cv, acc[j]);
      }
      for (int64_t j = 0; j < hn; ++j) _mm512_mask_storeu_ps(o_lat + (h0 + j) * r + c0, m, acc[j]);
    }
  }
  for (int64_t h = 0; h < H; ++h) {
    const float* w_uv = w + (h * (d.Qn + d.V) + d.Qn) * r;  // rows v = 0..V-1 of head h
    for (int64_t v = 0; v < d.V; ++v) out[h * d.V + v] = dot(w_uv + v * r, o_lat + h * r, r) * inv_sum[h];
  }
}
#endif

void check_operand(const at::Tensor& t, const char* name, int64_t dim) {
  MX_CHECK_VALUE(t.dim() == dim, "mla_decode_attention: ", name, " must be ", dim, "-D, got shape ", t.sizes());
  MX_CHECK_TYPE(t.scalar_type() == at::kFloat, "mla_decode_attention: ", name, " must be float32, got ",
                t.scalar_type());
  MX_CHECK_VALUE(t.device().is_cpu(), "mla_decode_attention: ", name, " must be on the CPU, got ", t.device());
}

at::Tensor mla_decode_attention_cpu(const at::Tensor& q_nope, const at::Tensor& q_rope, const at::Tensor& cache,
                                    const at::Tensor& kv_b_weight, const at::Tensor& mask, double scale) {
  check_operand(q_nope, "q_nope", 3);
  check_operand(q_rope, "q_rope", 3);
  check_operand(cache, "cache", 3);
  check_operand(kv_b_weight, "kv_b_weight", 2);
  check_operand(mask, "mask", 2);
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
  MX_CHECK_VALUE(H <= 256, "mla_decode_attention: at most 256 heads, got ", H);
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
  at::parallel_for(0, B, 1, [&](int64_t lo, int64_t hi) {
    std::vector<float> work(work_floats(d));
    for (int64_t b = lo; b < hi; ++b)
      attend_seq(qn_p + b * H * Qn, qr_p + b * H * R, c_p + b * c_stride, m_p + b * S, w_p, d, f_scale, work.data(),
                 out_p + b * H * V);
  });
#endif
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(muonext, CPU, m) { m.impl("mla_decode_attention", &mla_decode_attention_cpu); }

}  // namespace muonext
