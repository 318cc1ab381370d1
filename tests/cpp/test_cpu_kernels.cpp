// Unit tests of the torch-free CPU kernel code: bf16 rounding, chunking, the Muon update spans and
// the pack cast-copy, each against scalar float64 arithmetic.
#include <cstdint>
#include <limits>
#include <vector>

#include "common/bf16.h"
#include "common/chunks.h"
#include "muon_update/muon_update.h"
#include "shard/pack.h"
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

MXTEST_MAIN
