// Unit tests of the torch-free CPU kernel code: bf16 rounding, chunking, the Muon update spans and
// the pack cast-copy and the skinny GEMM, each against scalar float64 arithmetic.
#include <cstdint>
#include <limits>
#include <vector>

#include "common/bf16.h"
#include "common/chunks.h"
#include "muon_update/muon_update.h"
#include "shard/pack.h"
#include "skinny_gemm/skinny_gemm.h"
#include "test_main.h"

using namespace muonext;

TEST(bf16_round_trip_and_ties_to_even) {
  CHECK(bf16_to_float(float_to_bf16(1.0f)) == 1.0f);
  CHECK(bf16_to_float(float_to_bf16(-2.5f)) == -2.5f);
  // 1 + 2^-8 is exactly halfway between 1 and 1 + 2^-7: ties go to the even mantissa (1.0)
  CHECK(bf16_to_float(float_to_bf16(1.0f + 1.0f / 256)) == 1.0f);
  // 1 + 3·2^-8 is halfway between 1 + 2^-7 and 1 + 2^-6: ties go to even (1 + 2^-6)
  CHECK(bf16_to_float(float_to_bf16(1.0f + 3.0f / 256)) == 1.0f + 1.0f / 64);
  CHECK(bf16_to_float(float_to_bf16(1.0f + 1.0f / 256 + 1.0f / 4096)) == 1.0f + 1.0f / 128);
  const float inf = std::numeric_limits<float>::infinity();
  CHECK(bf16_to_float(float_to_bf16(inf)) == inf);
  CHECK(std::isnan(bf16_to_float(float_to_bf16(std::numeric_limits<float>::quiet_NaN()))));
  // the largest finite float rounds up to infinity, as in torch
  CHECK(bf16_to_float(float_to_bf16(std::numeric_limits<float>::max())) == inf);
}

TEST(chunks_cover_every_element_once) {
  const std::vector<int64_t> numels{0, 1, 10, 7, 33};
  const auto chunks = make_chunks(numels, 8);
  std::vector<std::vector<int>> seen;
  for (auto n : numels) seen.emplace_back(static_cast<size_t>(n), 0);
  for (const auto& c : chunks) {
    CHECK(c.end - c.begin <= 8 && c.end > c.begin);
    for (int64_t i = c.begin; i < c.end; ++i) seen[c.tensor][i] += 1;
  }
  for (const auto& s : seen)
    for (int v : s) CHECK(v == 1);
}

TEST(momentum_span_matches_float64_formula) {
  std::vector<double> buf{1.0, -2.0, 0.5, 0.0}, grad{0.25, 0.5, -1.0, 3.0};
  std::vector<float> out(4);
  const std::vector<double> buf0 = buf;
  momentum_span(buf.data(), grad.data(), out.data(), 0, 4, MomentumArgs{0.9, true});
  for (int i = 0; i < 4; ++i) {
    const double m = 0.9 * buf0[i] + grad[i];
    CHECK_NEAR(buf[i], m, 1e-15);
    CHECK_NEAR(out[i], grad[i] + 0.9 * m, 1e-6);
  }
  std::vector<double> plain = buf0;
  momentum_span(plain.data(), grad.data(), out.data(), 1, 3, MomentumArgs{0.5, false});
  CHECK(plain[0] == buf0[0] && plain[3] == buf0[3]);  // outside the span: untouched
  CHECK_NEAR(out[1], 0.5 * buf0[1] + grad[1], 1e-6);
}

TEST(momentum_span_bf16_output_is_rounded_once) {
  std::vector<float> buf{0.1f}, grad{0.3f};
  std::vector<bf16_t> out(1);
  momentum_span(buf.data(), grad.data(), out.data(), 0, 1, MomentumArgs{0.95, true});
  const float m = 0.95f * 0.1f + 0.3f;
  CHECK(out[0].bits == float_to_bf16(0.3f + 0.95f * m).bits);
}

TEST(apply_span_matches_float64_formula) {
  std::vector<double> p{1.0, -1.0, 2.0};
  std::vector<bf16_t> u{float_to_bf16(0.5f), float_to_bf16(-0.25f), float_to_bf16(1.0f)};
  const double lr = 0.1, wd = 0.2, s = 3.0;
  apply_span(p.data(), u.data(), 0, 3, ApplyArgs{1.0 - lr * wd, lr * s});
  const double expected[] = {1.0 * 0.98 - 0.3 * 0.5, -1.0 * 0.98 + 0.3 * 0.25, 2.0 * 0.98 - 0.3 * 1.0};
  for (int i = 0; i < 3; ++i) CHECK_NEAR(p[i], expected[i], 1e-15);
}

TEST(cast_copy_is_exact_where_representable) {
  std::vector<float> src{1.5f, -0.0f, 3.0f, 1.0f + 1.0f / 256};
  std::vector<bf16_t> mid(4);
  std::vector<double> back(4);
  cast_copy_span(src.data(), mid.data(), 4);
  cast_copy_span(mid.data(), back.data(), 4);
  CHECK(back[0] == 1.5 && back[1] == 0.0 && std::signbit(back[1]) && back[2] == 3.0 && back[3] == 1.0);
}

TEST(skinny_gemm_matches_float64_on_ragged_shapes) {
  // rows 1..33 cover one and two vectors and a partial third pass; N = 19 ends mid-tile; K = 37 is odd
  const int64_t N = 19, K = 37;
  std::vector<float> W(N * K), x(33 * K);
  for (size_t i = 0; i < W.size(); ++i) W[i] = static_cast<float>(static_cast<int>(i * 7 % 13) - 6) / 8.0f;
  for (size_t i = 0; i < x.size(); ++i) x[i] = static_cast<float>(static_cast<int>(i * 5 % 11) - 5) / 4.0f;
  for (int64_t rows : {1, 5, 16, 17, 32}) {
    std::vector<float> buffer(skinny::packed_floats(rows, K));
    const float* xT = skinny::pack_rows(x.data(), K, rows, K, buffer.data());
    CHECK(reinterpret_cast<std::uintptr_t>(xT) % 64 == 0);
    std::vector<float> y(rows * N, -1.0f);
    if (!skinny::cpu_supported()) continue;  // the op glue uses at::matmul there
    skinny::gemm_rows(xT, rows, W.data(), N, K, 3, N, y.data(), N);  // columns [3, N) only
    for (int64_t m = 0; m < rows; ++m)
      for (int64_t n = 0; n < N; ++n) {
        double ref = 0;
        for (int64_t k = 0; k < K; ++k) ref += static_cast<double>(x[m * K + k]) * W[n * K + k];
        if (n < 3)
          CHECK(y[m * N + n] == -1.0f);  // outside the column range: untouched
        else
          CHECK(y[m * N + n] == ref);  // products are multiples of 1/32 and |sums| < 2^6: every fp32 sum is exact
      }
  }
}

TEST(skinny_gemm_dot_matches_float64_for_one_to_four_rows) {
  // K = 37: two full 16-lane steps and a masked tail of 5; N = 10 ends mid-tile (tiles of 4 columns)
  const int64_t N = 10, K = 37, ldx = K + 3;  // x rows strided, as a slice of a wider matrix
  std::vector<float> W(N * K), x(4 * ldx);
  for (size_t i = 0; i < W.size(); ++i) W[i] = static_cast<float>(static_cast<int>(i * 7 % 13) - 6) / 8.0f;
  for (size_t i = 0; i < x.size(); ++i) x[i] = static_cast<float>(static_cast<int>(i * 5 % 11) - 5) / 4.0f;
  if (!skinny::cpu_supported()) return;
  for (int64_t rows = 1; rows <= skinny::kDotRows; ++rows) {
    std::vector<float> y(rows * N, -1.0f);
    skinny::gemm_rows_dot(x.data(), ldx, rows, W.data(), N, K, 1, N, y.data(), N);  // columns [1, N)
    for (int64_t m = 0; m < rows; ++m)
      for (int64_t n = 0; n < N; ++n) {
        double ref = 0;
        for (int64_t k = 0; k < K; ++k) ref += static_cast<double>(x[m * ldx + k]) * W[n * K + k];
        CHECK(y[m * N + n] == (n < 1 ? -1.0f : ref));  // exact sums (see above); column 0 untouched
      }
  }
}

MXTEST_MAIN
