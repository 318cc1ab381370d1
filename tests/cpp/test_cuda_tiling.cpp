// Host tests of the torch-free tiling logic behind the CUDA kernels: the triangular tile enumeration
// of the symmetric Newton–Schulz products, the block → (problem, matrix, tile) map of a grouped
// launch, the GEMM problems of each step, and the multi-tensor launch plan / vector peel / chunk split.
#include <cstdint>
#include <set>
#include <utility>
#include <vector>

#include "common/multi_tensor_plan.h"
#include "newton_schulz/ns_tiles.h"
#include "test_main.h"

using namespace muonext;

TEST(triangular_tiles_cover_the_upper_triangle_once) {
  for (int t = 1; t <= 300; ++t) {
    std::set<std::pair<int, int>> seen;
    bool ordered = true;
    for (int idx = 0; idx < ns::tri_count(t); ++idx) {
      int r = -1, c = -1;
      ns::tri_tile(idx, r, c);
      ordered = ordered && r >= 0 && r <= c && c < t;
      seen.insert({r, c});
    }
    CHECK(ordered);
    CHECK(static_cast<int>(seen.size()) == ns::tri_count(t));
  }
  int r, c;
  ns::tri_tile(0, r, c);
  CHECK(r == 0 && c == 0);
  ns::tri_tile(4, r, c);  // (0,0) (0,1) (1,1) (0,2) (1,2)
  CHECK(r == 1 && c == 2);
  // large indices, where float sqrt rounding matters: the last tile of T = 20000 and its neighbour
  ns::tri_tile(ns::tri_count(20000) - 1, r, c);
  CHECK(r == 19999 && c == 19999);
  ns::tri_tile(ns::tri_count(20000), r, c);
  CHECK(r == 0 && c == 20000);
}

// Every output element of every matrix of every problem is written exactly once (counting the mirror
// of symmetric off-diagonal tiles), for shapes that are not tile multiples.
TEST(grouped_launch_writes_every_element_once) {
  const int bm = 128;
  ns::GemmLaunch l{};
  const int shapes[][3] = {{1, 1, 1}, {97, 97, 1}, {129, 200, 2}, {256, 256, 3}, {1408, 2048, 1}};  // m, n, batch
  const bool sym[] = {true, true, false, true, false};
  l.num_problems = 5;
  for (int i = 0; i < 5; ++i) {
    l.p[i].m = shapes[i][0];
    l.p[i].n = sym[i] ? shapes[i][0] : shapes[i][1];
    l.p[i].batch = shapes[i][2];
    l.p[i].symmetric = sym[i];
  }
  const int tiles = ns::schedule_tiles(l, bm, bm);
  std::vector<std::vector<std::vector<int>>> count(5);
  for (int i = 0; i < 5; ++i) count[i].assign(l.p[i].batch, std::vector<int>(int64_t{1} * l.p[i].m * l.p[i].n, 0));
  int expected_tiles = 0;
  for (int i = 0; i < 5; ++i) {
    const int tm = static_cast<int>(ns::ceil_div(l.p[i].m, bm)), tn = static_cast<int>(ns::ceil_div(l.p[i].n, bm));
    expected_tiles += l.p[i].batch * (sym[i] ? tm * (tm + 1) / 2 : tm * tn);
  }
  CHECK(tiles == expected_tiles);
  for (int block = 0; block < tiles; ++block) {
    const ns::TileCoord t = ns::tile_of(l, block);
    const ns::GemmProblem& p = l.p[t.problem];
    CHECK(t.matrix >= 0 && t.matrix < p.batch);
    if (p.symmetric) CHECK(t.row <= t.col);
    const bool diag = p.symmetric && t.row == t.col;
    for (int r = 0; r < bm; ++r) {
      for (int c = 0; c < bm; ++c) {
        const int gr = t.row * bm + r, gc = t.col * bm + c;
        if (gr >= p.m || gc >= p.n) continue;
        count[t.problem][t.matrix][int64_t{1} * gr * p.n + gc] += 1;  // the direct pass
        if (p.symmetric && !diag) count[t.problem][t.matrix][int64_t{1} * gc * p.n + gr] += 1;  // the mirror
      }
    }
  }
  bool once = true;
  for (const auto& prob : count)
    for (const auto& mat : prob)
      for (int v : mat) once = once && v == 1;
  CHECK(once);
}

TEST(ns_job_shapes_and_step_problems) {
  ns::NsJob wide = ns::ns_job_shape(3, 97, 131);
  CHECK(!wide.tall && wide.m == 97 && wide.n == 131 && wide.ldn == 136 && wide.ldm == 104);
  CHECK(wide.prologue_tiles == 4 * 5);
  ns::NsJob tall = ns::ns_job_shape(2, 2048, 1408);
  CHECK(tall.tall && tall.m == 1408 && tall.n == 2048 && tall.ldn == 2048 && tall.ldm == 1408);
  int in = 0, out = 0, x0 = 0, x1 = 0, gram = 0, poly = 0;
  float inv[2];
  tall.in = &in;
  tall.out = &out;
  tall.x_in = &x0;
  tall.x[0] = &x0;
  tall.x[1] = &x1;
  tall.gram = &gram;
  tall.poly = &poly;
  tall.inv_norm = inv;
  // step 0: the norm folds into the Gram (s²) and the update (α = s, β = a·s)
  ns::GemmProblem g0 = ns::ns_gram_problem(tall, 0);
  CHECK(g0.symmetric && g0.m == 1408 && g0.n == 1408 && g0.k == 2048 && g0.alpha_pow == 2 && g0.A == &x0);
  CHECK(ns::ns_gram_problem(tall, 1).alpha_pow == 0 && ns::ns_gram_problem(tall, 1).A == &x1);
  ns::GemmProblem p = ns::ns_poly_problem(tall, -4.775, 2.0315);
  CHECK(p.symmetric && p.D == &gram && p.C == &poly && p.k == 1408 && p.beta == static_cast<float>(-4.775));
  ns::GemmProblem u0 = ns::ns_update_problem(tall, 0, 3.4445, false);
  CHECK(!u0.symmetric && u0.alpha_pow == 1 && u0.beta_pow == 1 && u0.B == &x0 && u0.D == &x0 && u0.C == &x1);
  CHECK(u0.ldc == 2048 && !u0.transpose_out);
  ns::GemmProblem u1 = ns::ns_update_problem(tall, 1, 3.4445, false);
  CHECK(u1.B == &x1 && u1.C == &x0 && u1.alpha_pow == 0);
  // the last step of a tall input writes the transposed result straight into the (2048, 1408) output
  ns::GemmProblem last = ns::ns_update_problem(tall, 4, 3.4445, true);
  CHECK(last.C == &out && last.transpose_out && last.ldc == 1408 && last.sC == 2048LL * 1408 && last.B == &x0);
  ns::GemmProblem wlast = ns::ns_update_problem(wide, 1, 1.0, true);
  CHECK(!wlast.transpose_out && wlast.ldc == 131 && wlast.sC == 97LL * 131);
}

TEST(multi_tensor_plan_covers_every_element_once) {
  const std::vector<int64_t> numels{0, 1, mt::kChunk, mt::kChunk + 7, 3 * mt::kChunk + 1, 5, 0, 100000};
  const auto plans = mt::plan_launches(numels, /*max_tensors=*/3);
  std::vector<std::vector<int>> seen;
  for (auto n : numels) seen.emplace_back(static_cast<size_t>(n), 0);
  int tensors = 0;
  for (const auto& l : plans) {
    CHECK(static_cast<int>(l.tensors.size()) <= 3);
    tensors += static_cast<int>(l.tensors.size());
    for (int block = 0; block < l.num_chunks; ++block) {
      int j = 0;  // the kernel's binary search: the last tensor whose first block is <= block
      for (int k = 0; k < static_cast<int>(l.tensors.size()); ++k)
        if (l.chunk_begin[k] <= block) j = k;
      const int t = l.tensors[j];
      for (int peel : {-1, 0, 3, 7}) {
        const mt::ChunkSplit s = mt::split_chunk(numels[t], peel, block - l.chunk_begin[j]);
        CHECK(s.begin <= s.head && s.head <= s.vend && s.vend <= s.end && (s.vend - s.head) % mt::kVec == 0);
        CHECK(s.end - s.begin <= mt::kChunk && s.begin < s.end);
        if (peel < 0) CHECK(s.head == s.end);
        if (peel >= 0) CHECK(s.head - s.begin == std::min<int64_t>(peel, s.end - s.begin));
        if (peel == 3) {
          for (int64_t i = s.begin; i < s.end; ++i) seen[t][i] += 1;
        }
      }
    }
  }
  CHECK(tensors == 6);  // the empty ones are skipped
  bool once = true;
  for (const auto& s : seen)
    for (int v : s) once = once && v == 1;
  CHECK(once);
}

TEST(vector_peel_aligns_every_operand) {
  const uint8_t bf_f32[] = {mt::kBF16, mt::kF32};
  uintptr_t a[] = {0x1000, 0x2000};
  CHECK(mt::common_peel(a, bf_f32, 2) == 0);
  uintptr_t b[] = {0x1002, 0x2008};  // bf16 needs p = 7, fp32 p = 2 or 6: no common p
  CHECK(mt::common_peel(b, bf_f32, 2) == -1);
  uintptr_t c[] = {0x1006, 0x200c};  // element 5: 0x1010 and 0x2020
  CHECK(mt::common_peel(c, bf_f32, 2) == 5);
  const uint8_t f64_only[] = {mt::kF64};
  uintptr_t d[] = {0x1008};
  CHECK(mt::common_peel(d, f64_only, 1) == 1);
  uintptr_t e[] = {0x1001};  // odd address: never aligned
  CHECK(mt::common_peel(e, f64_only, 1) == -1);
}

MXTEST_MAIN
