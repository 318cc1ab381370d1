// Torch- and CUTLASS-free plan of the sm_90a Newton–Schulz (bf16), shared by the host, the device
// code that fills CUTLASS's grouped-GEMM arrays, and the host unit tests (tests/cpp/test_cuda_tiling.cpp).
//
// Every matrix is padded with zeros to mp × np (multiples of 8: TMA needs 16-byte rows and CUTLASS's
// contiguous extents must be multiples of the 8-element alignment). Zero padding is exact: the Gram of
// [X 0; 0 0] is [A 0; 0 0], and each step maps the zero blocks to zero again.
//
// One step = three grouped GEMM launches over every matrix of every job (all Muon matrices of a model):
//   Gram    A = s^pα · X·Xᵀ            one problem per 128-row strip i: rows [128i, 128i+128), columns
//   Poly    P = c·A·A + b·A            [128i, mp) — the strips hold the upper triangle (and the diagonal
//                                      blocks), half the FLOPs of the full product; a mirror pass copies
//                                      them into the lower triangle, which the next GEMM reads;
//   Update  X' = s^pα · P·X + a·s^pβ · X   one problem per matrix, into the other X buffer (or the output).
// Step 0 reads the unnormalised input: per-matrix scales (s² for the Gram; s and a0·s for the update)
// come as per-group pointers, so the normalisation costs no pass over X.
#pragma once

#include <cstdint>

#include "common/hd.h"
#include "newton_schulz/ns_tiles.h"

namespace muonext {
namespace ns {

constexpr int kSm90StripRows = 128;  // = the CUTLASS tile's M: one strip is one row of tiles
constexpr int kSm90MaxJobs = kMaxProblems;

enum class Sm90Gemm : int { kGram = 0, kPoly = 1, kUpdate = 2 };

struct Sm90Job {
  int batch = 0, mp = 0, np = 0;  // padded wide shape
  const uint16_t* x_in = nullptr;  // X of step 0 (mp × np, ld np), unnormalised
  uint16_t* x[2] = {nullptr, nullptr};  // later X, ping-pong
  uint16_t* gram = nullptr;        // mp × mp
  uint16_t* poly = nullptr;        // mp × mp
  uint16_t* out = nullptr;         // the last step's destination when not null (mp × np, ld np)
  const float* s = nullptr;        // per matrix: 1 / (‖X‖_F + eps)
  const float* s2 = nullptr;       //   s²
  const float* as0 = nullptr;      //   a0 · s
};

struct Sm90Plan {
  Sm90Job jobs[kSm90MaxJobs];
  int num_jobs = 0;
  int step = 0;  // which step this launch belongs to
  int last = 0;  // 1 on the last step
  float a = 0.0f, b = 0.0f, c = 0.0f;
};

// One GEMM of a grouped launch: D = α·A·B + β·C with row-major A (m×k, lda), B given as
// B_KMAJOR ? rows of an n×k matrix (ldb) : a row-major k×n matrix (ldb), row-major C and D (ldc, ldd).
// alpha/beta point to per-matrix scalars on step 0, else null (the plan's scalars apply).
struct Sm90Group {
  int m = 0, n = 0, k = 0;
  const uint16_t* A = nullptr;
  const uint16_t* B = nullptr;
  const uint16_t* C = nullptr;  // null: no β·C term
  uint16_t* D = nullptr;
  int64_t lda = 0, ldb = 0, ldc = 0, ldd = 0;
  const float* alpha = nullptr;
  const float* beta = nullptr;
};

MX_HD int sm90_strips(int mp) { return static_cast<int>(ceil_div(mp, kSm90StripRows)); }

MX_HD int sm90_groups_per_matrix(const Sm90Job& j, Sm90Gemm kind) {
  return kind == Sm90Gemm::kUpdate ? 1 : sm90_strips(j.mp);
}

MX_HD int sm90_group_count(const Sm90Plan& p, Sm90Gemm kind) {
  int total = 0;
  for (int i = 0; i < p.num_jobs; ++i) total += p.jobs[i].batch * sm90_groups_per_matrix(p.jobs[i], kind);
  return total;
}

MX_HD const uint16_t* sm90_x_of_step(const Sm90Job& j, int step) { return step == 0 ? j.x_in : j.x[step % 2]; }

// The uniform α and β of a launch (used where the group's pointers are null).
MX_HD float sm90_alpha(const Sm90Plan& p, Sm90Gemm kind) { return kind == Sm90Gemm::kPoly ? p.c : 1.0f; }
MX_HD float sm90_beta(const Sm90Plan& p, Sm90Gemm kind) {
  return kind == Sm90Gemm::kPoly ? p.b : kind == Sm90Gemm::kUpdate ? p.a : 0.0f;
}
// Step 0 carries per-matrix scales for the Gram (α) and the update (α and β).
MX_HD bool sm90_per_group_alpha(const Sm90Plan& p, Sm90Gemm kind) { return p.step == 0 && kind != Sm90Gemm::kPoly; }
MX_HD bool sm90_per_group_beta(const Sm90Plan& p, Sm90Gemm kind) { return p.step == 0 && kind == Sm90Gemm::kUpdate; }

// The g-th group of a launch: jobs in order, matrices in order, strips in order.
MX_HD Sm90Group sm90_group(const Sm90Plan& p, Sm90Gemm kind, int g) {
  int ji = 0;
  while (ji + 1 < p.num_jobs && g >= p.jobs[ji].batch * sm90_groups_per_matrix(p.jobs[ji], kind)) {
    g -= p.jobs[ji].batch * sm90_groups_per_matrix(p.jobs[ji], kind);
    ++ji;
  }
  const Sm90Job& j = p.jobs[ji];
  const int per = sm90_groups_per_matrix(j, kind);
  const int matrix = g / per, strip = g - matrix * per;
  const int64_t mp = j.mp, np = j.np;
  const int64_t x_off = matrix * mp * np, sq_off = matrix * mp * mp;
  const uint16_t* x = sm90_x_of_step(j, p.step) + x_off;
  Sm90Group e;
  if (kind == Sm90Gemm::kUpdate) {
    e.m = j.mp;
    e.n = j.np;
    e.k = j.mp;
    e.A = j.poly + sq_off;
    e.B = x;
    e.C = x;
    uint16_t* dst = p.last && j.out != nullptr ? j.out : j.x[(p.step + 1) % 2];
    e.D = dst + x_off;
    e.lda = mp;
    e.ldb = e.ldc = e.ldd = np;
    if (p.step == 0) {
      e.alpha = j.s + matrix;
      e.beta = j.as0 + matrix;
    }
    return e;
  }
  const int64_t r0 = static_cast<int64_t>(strip) * kSm90StripRows;
  const int64_t rows = mp - r0 < kSm90StripRows ? mp - r0 : kSm90StripRows;
  e.m = static_cast<int>(rows);
  e.n = static_cast<int>(mp - r0);
  if (kind == Sm90Gemm::kGram) {  // A[strip rows, r0:] = X[strip rows] · X[r0:]ᵀ
    e.k = j.np;
    e.A = e.B = x + r0 * np;
    e.lda = e.ldb = np;
    e.D = j.gram + sq_off + r0 * mp + r0;
    e.ldd = mp;
    if (p.step == 0) e.alpha = j.s2 + matrix;
  } else {  // P[strip rows, r0:] = c · A[strip rows] · A[:, r0:] + b · A[strip rows, r0:]; A[:, r0:] = A[r0:]ᵀ
    const uint16_t* a = j.gram + sq_off;
    e.k = j.mp;
    e.A = e.B = a + r0 * mp;
    e.lda = e.ldb = mp;
    e.C = a + r0 * mp + r0;
    e.D = j.poly + sq_off + r0 * mp + r0;
    e.ldc = e.ldd = mp;
  }
  return e;
}

// Points the plan at step `step` of `steps` with coefficients [a0, b0, c0, a1, ...].
inline void sm90_set_step(Sm90Plan& p, const double* coefficients, int step, int steps) {
  p.step = step;
  p.last = step + 1 == steps;
  p.a = static_cast<float>(coefficients[3 * step]);
  p.b = static_cast<float>(coefficients[3 * step + 1]);
  p.c = static_cast<float>(coefficients[3 * step + 2]);
}

// A wide job with 8-aligned m and n needs no padding: step 0 may read a 16-byte aligned input in place,
// and the last step may write the (fresh, aligned) output directly.
inline bool sm90_unpadded(const NsJob& j) { return !j.tall && j.m % kAlign == 0 && j.n % kAlign == 0; }

// The plan's view of a job whose buffers the glue allocated with x_rows = ldm; s2 and as0 hold the
// step-0 scales (batch floats each).
inline Sm90Job sm90_job(const NsJob& nj, const float* s2, const float* as0) {
  Sm90Job j;
  j.batch = nj.batch;
  j.mp = static_cast<int>(nj.ldm);
  j.np = static_cast<int>(nj.ldn);
  j.x_in = static_cast<const uint16_t*>(nj.x_in);
  j.x[0] = static_cast<uint16_t*>(nj.x[0]);
  j.x[1] = static_cast<uint16_t*>(nj.x[1]);
  j.gram = static_cast<uint16_t*>(nj.gram);
  j.poly = static_cast<uint16_t*>(nj.poly);
  j.out = sm90_unpadded(nj) ? static_cast<uint16_t*>(nj.out) : nullptr;
  j.s = nj.inv_norm;
  j.s2 = s2;
  j.as0 = as0;
  return j;
}

// The mirror pass: element (r, col) with strip(col) < strip(r) is copied from (col, r).
MX_HD bool sm90_mirrored(int r, int col) { return col / kSm90StripRows < r / kSm90StripRows; }

}  // namespace ns
}  // namespace muonext
