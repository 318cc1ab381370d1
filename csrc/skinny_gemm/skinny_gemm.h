// y = x·Wᵀ for a few rows of x (the 1–32 tokens of a decode step), fp32, CPU. Torch-free.
//
// MKL's sgemm is tuned for large M; with M = 16 and W (N, K) coming from L3 or memory it runs at a
// third of this core's FMA peak (bench/RESULTS.md). Here the rows of x sit in the lanes of a vector
// (x transposed once, K × 16 or K × 32, in L1) and each W[n, k] is broadcast against them, so W is
// streamed once, row by row in its own (N, K) layout, with no repacking, and all lanes do useful work
// when M is 16 or 32.
#pragma once

#include <cstdint>

namespace muonext::skinny {

constexpr int64_t kLanes = 16;    // rows of x in one vector
constexpr int64_t kMaxRows = 32;  // rows of x per pass over W (two vectors)
constexpr int64_t kDotRows = 4;   // up to this many rows gemm_rows_dot wastes fewer lanes than gemm_rows

// Whether this CPU can run the kernel (x86-64 with AVX-512F), decided once.
bool cpu_supported();

// Floats the transposed rows take: K × (16 or 32), plus room to align to 64 bytes.
int64_t packed_floats(int64_t rows, int64_t K);

// Copies `rows` (≤ kMaxRows) rows of x (row stride ldx) into xT, transposed and zero-padded to the
// vector width, at the first 64-byte aligned address of `buffer`. Returns that address.
float* pack_rows(const float* x, int64_t ldx, int64_t rows, int64_t K, float* buffer);

// y[m, n] = Σ_k xT[k, m]·W[n, k] for m < rows and n in [n_begin, n_end). W is (N, K) row-major;
// y has row stride ldy. Requires cpu_supported().
void gemm_rows(const float* xT, int64_t rows, const float* W, int64_t N, int64_t K, int64_t n_begin,
               int64_t n_end, float* y, int64_t ldy);

// The same for rows ≤ kDotRows straight from x (row stride ldx, no packing): vectors along k, one
// horizontal sum per output. For 1–4 rows (a routed expert's share of a decode step) the broadcast
// kernel would leave 12–15 of its 16 lanes idle. Requires cpu_supported().
void gemm_rows_dot(const float* x, int64_t ldx, int64_t rows, const float* W, int64_t N, int64_t K,
                   int64_t n_begin, int64_t n_end, float* y, int64_t ldy);

}  // namespace muonext::skinny
