// Torch-free tiling and scheduling of the CUDA Newton–Schulz GEMMs, shared by host and device code
// and unit-tested on the host (tests/cpp/test_ns_tiles.cpp).
//
// One GEMM launch covers up to kMaxProblems problems (different shapes: the grouped case), each a
// batch of matrices; one thread block computes one BM×BN output tile of one matrix:
//   C = α·s^pα · A·B + β·s^pβ · D        (s: per-matrix 1/(‖X‖_F + eps), folded into step 0)
// A symmetric problem (C = X·Xᵀ or A·A with A symmetric; m == n, BM == BN) enumerates only the tiles
// with row ≤ col (T·(T+1)/2 of T² tiles) and mirrors each off-diagonal tile into C's lower triangle.
#pragma once

#include <cmath>
#include <cstdint>

#include "common/hd.h"

namespace muonext {
namespace ns {

constexpr int kMaxProblems = 8;

MX_HD int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }
MX_HD int64_t round_up(int64_t a, int64_t b) { return ceil_div(a, b) * b; }
MX_HD int tri_count(int t) { return t * (t + 1) / 2; }

// The idx-th upper-triangle tile in column order (0,0) (0,1) (1,1) (0,2) (1,2) (2,2) ...:
// col = the largest c with c(c+1)/2 ≤ idx, row = idx − col(col+1)/2 ≤ col.
MX_HD void tri_tile(int idx, int& row, int& col) {
  int c = static_cast<int>((sqrtf(8.0f * static_cast<float>(idx) + 1.0f) - 1.0f) * 0.5f);
  while (c > 0 && tri_count(c) > idx) --c;  // float rounding may overshoot or undershoot by one
  while (tri_count(c + 1) <= idx) ++c;
  col = c;
  row = idx - tri_count(c);
}

struct GemmProblem {
  const void* A;   // op(A)(i, k) = A[i·lda + k]                 (row-major, K contiguous)
  const void* B;   // K-major kernels: op(B)(k, j) = B[j·ldb + k]; N-major: B[k·ldb + j]
  const void* D;   // D(i, j) = D[i·ldd + j], may be null (β ignored)
  void* C;         // C[i·ldc + j], or C[j·ldc + i] when transpose_out
  int64_t lda, ldb, ldd, ldc;
  int64_t sA, sB, sD, sC;  // batch strides, elements
  const float* scale;      // per-matrix s (null: 1)
  int m, n, k, batch;
  float alpha, beta;
  int alpha_pow, beta_pow;  // 0, 1 or 2
  int symmetric;            // m == n and C symmetric: upper-triangle tiles only, mirrored
  int transpose_out;        // store Cᵀ (never with symmetric)
  int tiles_n;              // filled by schedule_tiles
  int tiles_per_matrix;
  int tile_begin;
};

struct GemmLaunch {
  GemmProblem p[kMaxProblems];
  int num_problems;
  int num_tiles;  // grid size
};

// Fills each problem's tile counts and first block for BM×BN tiles; returns the grid size.
inline int schedule_tiles(GemmLaunch& l, int bm, int bn) {
  int total = 0;
  for (int i = 0; i < l.num_problems; ++i) {
    GemmProblem& p = l.p[i];
    const int tm = static_cast<int>(ceil_div(p.m, bm));
    p.tiles_n = static_cast<int>(ceil_div(p.n, bn));
    p.tiles_per_matrix = p.symmetric ? tri_count(tm) : tm * p.tiles_n;
    p.tile_begin = total;
    total += p.tiles_per_matrix * p.batch;
  }
  l.num_tiles = total;
  return total;
}

struct TileCoord {
  int problem, matrix, row, col;  // row / col in tiles
};

MX_HD TileCoord tile_of(const GemmLaunch& l, int block) {
  TileCoord t;
  t.problem = 0;
  while (t.problem + 1 < l.num_problems && l.p[t.problem + 1].tile_begin <= block) ++t.problem;
  const GemmProblem& p = l.p[t.problem];
  const int local = block - p.tile_begin;
  t.matrix = local / p.tiles_per_matrix;
  const int idx = local - t.matrix * p.tiles_per_matrix;
  if (p.symmetric) {
    tri_tile(idx, t.row, t.col);
  } else {
    t.row = idx / p.tiles_n;
    t.col = idx - t.row * p.tiles_n;
  }
  return t;
}

MX_HD float scale_pow(const float* scale, int matrix, int pow) {
  if (scale == nullptr || pow == 0) return 1.0f;
  const float s = scale[matrix];
  return pow == 2 ? s * s : s;
}

// ---- Newton–Schulz on one batch (batch, rows, cols): buffers and the GEMM problems of each step ----

constexpr int kAlign = 8;          // leading dimensions of the work buffers: multiples of 16 B of bf16
constexpr int kPrologueTile = 32;  // the normalise/transpose pass works on 32×32 tiles

struct NsJob {
  int batch = 0, rows = 0, cols = 0;  // the input's shape
  int m = 0, n = 0;                   // wide orientation: m = min(rows, cols) ≤ n = max(rows, cols)
  bool tall = false;                  // rows > cols: work on Xᵀ
  int64_t ldn = 0, ldm = 0;           // leading dimensions of X (m×n) and of A, P (m×m)
  int64_t x_rows = 0;                 // rows of each X work buffer: m, or ldm on the sm_90a path
  int prologue_tiles = 0;             // partial sums of squares per matrix
  const void* in = nullptr;           // contiguous input, (batch, rows, cols)
  void* out = nullptr;                // contiguous output, (batch, rows, cols)
  const void* x_in = nullptr;         // X of step 0 (the input itself when no copy is needed)
  void* x[2] = {nullptr, nullptr};    // X of later steps, ping-pong (batch, m, ldn)
  void* gram = nullptr;               // A = X·Xᵀ, (batch, m, ldm)
  void* poly = nullptr;               // P = b·A + c·A·A, (batch, m, ldm)
  float* partial = nullptr;           // (batch, prologue_tiles)
  float* inv_norm = nullptr;          // (batch)
};

inline NsJob ns_job_shape(int batch, int rows, int cols) {
  NsJob j;
  j.batch = batch;
  j.rows = rows;
  j.cols = cols;
  j.tall = rows > cols;
  j.m = j.tall ? cols : rows;
  j.n = j.tall ? rows : cols;
  j.ldn = round_up(j.n, kAlign);
  j.ldm = round_up(j.m, kAlign);
  j.x_rows = j.m;
  j.prologue_tiles = static_cast<int>(ceil_div(j.m, kPrologueTile) * ceil_div(j.n, kPrologueTile));
  return j;
}

// Step 0 reads the input unnormalised: its Gram gets s², its update α = s and β = a·s.
inline const void* ns_x_of_step(const NsJob& j, int step) { return step == 0 ? j.x_in : j.x[step % 2]; }

inline GemmProblem ns_gram_problem(const NsJob& j, int step) {  // A = X·Xᵀ  (symmetric, K-major B)
  GemmProblem p{};
  p.A = p.B = ns_x_of_step(j, step);
  p.C = j.gram;
  p.lda = p.ldb = j.ldn;
  p.ldc = j.ldm;
  p.sA = p.sB = static_cast<int64_t>(j.m) * j.ldn;
  p.sC = static_cast<int64_t>(j.m) * j.ldm;
  p.m = p.n = j.m;
  p.k = j.n;
  p.batch = j.batch;
  p.alpha = 1.0f;
  p.scale = j.inv_norm;
  p.alpha_pow = step == 0 ? 2 : 0;
  p.symmetric = 1;
  return p;
}

inline GemmProblem ns_poly_problem(const NsJob& j, double b, double c) {  // P = b·A + c·A·A  (symmetric)
  GemmProblem p{};
  p.A = p.B = p.D = j.gram;
  p.C = j.poly;
  p.lda = p.ldb = p.ldd = p.ldc = j.ldm;
  p.sA = p.sB = p.sD = p.sC = static_cast<int64_t>(j.m) * j.ldm;
  p.m = p.n = p.k = j.m;
  p.batch = j.batch;
  p.alpha = static_cast<float>(c);
  p.beta = static_cast<float>(b);
  p.symmetric = 1;
  return p;
}

// X' = a·X + P·X  (N-major B). The last step writes the output: Xᵀ of the wide result when tall.
inline GemmProblem ns_update_problem(const NsJob& j, int step, double a, bool last) {
  GemmProblem p{};
  p.A = j.poly;
  p.B = p.D = ns_x_of_step(j, step);
  p.lda = j.ldm;
  p.ldb = p.ldd = j.ldn;
  p.sA = static_cast<int64_t>(j.m) * j.ldm;
  p.sB = p.sD = static_cast<int64_t>(j.m) * j.ldn;
  p.m = j.m;
  p.n = j.n;
  p.k = j.m;
  p.batch = j.batch;
  p.alpha = 1.0f;
  p.beta = static_cast<float>(a);
  p.scale = j.inv_norm;
  p.alpha_pow = p.beta_pow = step == 0 ? 1 : 0;
  if (!last) {
    p.C = j.x[(step + 1) % 2];
    p.ldc = j.ldn;
    p.sC = static_cast<int64_t>(j.m) * j.ldn;
  } else {
    p.C = j.out;
    p.sC = static_cast<int64_t>(j.m) * j.n;
    p.transpose_out = j.tall ? 1 : 0;
    p.ldc = j.tall ? j.m : j.n;  // out is (n, m) when tall, (m, n) when wide
  }
  return p;
}

}  // namespace ns
}  // namespace muonext
