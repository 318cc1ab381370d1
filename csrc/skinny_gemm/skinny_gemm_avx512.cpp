// The AVX-512 kernel of skinny_gemm.h. The functions carry their own target attribute, so the rest of
// the extension keeps the baseline x86-64 flags and this code only runs where cpu_supported().
#include "skinny_gemm/skinny_gemm.h"

#include <algorithm>
#include <cstdint>

#include "common/avx512_math.h"

namespace muonext::skinny {

namespace {
constexpr int64_t kCols = 8;  // W rows per register tile: 8 (or 16) accumulators, enough to hide FMA latency

int64_t width_of(int64_t rows) { return rows <= kLanes ? kLanes : 2 * kLanes; }
}  // namespace

int64_t packed_floats(int64_t rows, int64_t K) { return K * width_of(rows) + kLanes; }

float* pack_rows(const float* x, int64_t ldx, int64_t rows, int64_t K, float* buffer) {
  const auto addr = reinterpret_cast<std::uintptr_t>(buffer);
  float* xT = reinterpret_cast<float*>((addr + 63) & ~std::uintptr_t{63});
  const int64_t width = width_of(rows);
  for (int64_t k = 0; k < K; ++k) {
    float* col = xT + k * width;
    for (int64_t m = 0; m < rows; ++m) col[m] = x[m * ldx + k];
    for (int64_t m = rows; m < width; ++m) col[m] = 0.f;
  }
  return xT;
}

#ifdef MX_AVX512_OK

bool cpu_supported() {
  static const bool ok = __builtin_cpu_supports("avx512f");
  return ok;
}

namespace {

// The C rows of W one tile reads (past N: its last row again, never stored), and the next tile's rows,
// prefetched one cache line at a time: W streams from L3/memory at a rate the hardware prefetcher alone
// does not reach with C interleaved rows.
template <int64_t C>
struct TileRows {
  const float* w[C];
  const float* next;
  int64_t next_rows, K;

  TileRows(const float* W, int64_t N, int64_t K_, int64_t n0, int64_t cols) : K(K_) {
    for (int64_t j = 0; j < C; ++j) w[j] = W + (n0 + std::min(j, cols - 1)) * K;
    const int64_t n1 = std::min(n0 + C, N);
    next = W + n1 * K;
    next_rows = std::min(C, N - n1);
  }

  // the cache line at column k of every next row
  void prefetch(int64_t k) const {
    for (int64_t j = 0; j < next_rows; ++j) _mm_prefetch(reinterpret_cast<const char*>(next + j * K + k), _MM_HINT_T0);
  }
};

// One tile: columns [n0, n0 + cols) of y for all rows, V vectors of 16 rows each.
template <int V>
MX_AVX512 void tile(const float* xT, int64_t rows, const float* W, int64_t N, int64_t K, int64_t n0, int64_t cols,
                    float* y, int64_t ldy) {
  __m512 acc[kCols][V];
  for (auto& a : acc)
    for (auto& v : a) v = _mm512_setzero_ps();
  const TileRows<kCols> t(W, N, K, n0, cols);
  for (int64_t k = 0; k < K; ++k) {
    if ((k & 15) == 0) t.prefetch(k);
    __m512 xv[V];
    for (int v = 0; v < V; ++v) xv[v] = _mm512_load_ps(xT + (k * V + v) * kLanes);
    for (int64_t j = 0; j < kCols; ++j) {
      const __m512 wv = _mm512_set1_ps(t.w[j][k]);
      for (int v = 0; v < V; ++v) acc[j][v] = _mm512_fmadd_ps(wv, xv[v], acc[j][v]);
    }
  }
  alignas(64) float out[kCols][V * kLanes];
  for (int64_t j = 0; j < kCols; ++j)
    for (int v = 0; v < V; ++v) _mm512_store_ps(&out[j][v * kLanes], acc[j][v]);
  for (int64_t m = 0; m < rows; ++m)
    for (int64_t j = 0; j < cols; ++j) y[m * ldy + n0 + j] = out[j][m];
}

// One tile of the dot-product kernel: R rows × kDotCols columns, vectors along k (masked tail).
constexpr int64_t kDotCols = 4;

template <int R>
MX_AVX512 void dot_tile(const float* x, int64_t ldx, const float* W, int64_t N, int64_t K, int64_t n0, int64_t cols,
                        float* y, int64_t ldy) {
  __m512 acc[R][kDotCols];
  for (auto& a : acc)
    for (auto& v : a) v = _mm512_setzero_ps();
  const TileRows<kDotCols> t(W, N, K, n0, cols);
  for (int64_t k = 0; k < K; k += kLanes) {
    const __mmask16 mask = avx512::tail(K - k);
    t.prefetch(k);
    __m512 wv[kDotCols];
    for (int64_t j = 0; j < kDotCols; ++j) wv[j] = _mm512_maskz_loadu_ps(mask, t.w[j] + k);
    for (int r = 0; r < R; ++r) {
      const __m512 xv = _mm512_maskz_loadu_ps(mask, x + r * ldx + k);
      for (int64_t j = 0; j < kDotCols; ++j) acc[r][j] = _mm512_fmadd_ps(xv, wv[j], acc[r][j]);
    }
  }
  for (int r = 0; r < R; ++r)
    for (int64_t j = 0; j < cols; ++j) y[r * ldy + n0 + j] = _mm512_reduce_add_ps(acc[r][j]);
}

}  // namespace

void gemm_rows_dot(const float* x, int64_t ldx, int64_t rows, const float* W, int64_t N, int64_t K,
                   int64_t n_begin, int64_t n_end, float* y, int64_t ldy) {
  using Tile = void (*)(const float*, int64_t, const float*, int64_t, int64_t, int64_t, int64_t, float*, int64_t);
  static constexpr Tile tiles[kDotRows] = {dot_tile<1>, dot_tile<2>, dot_tile<3>, dot_tile<4>};
  const Tile tile_fn = tiles[rows - 1];
  for (int64_t n0 = n_begin; n0 < n_end; n0 += kDotCols)
    tile_fn(x, ldx, W, N, K, n0, std::min(kDotCols, n_end - n0), y, ldy);
}

void gemm_rows(const float* xT, int64_t rows, const float* W, int64_t N, int64_t K, int64_t n_begin,
               int64_t n_end, float* y, int64_t ldy) {
  for (int64_t n0 = n_begin; n0 < n_end; n0 += kCols) {
    const int64_t cols = std::min(kCols, n_end - n0);
    if (rows <= kLanes)
      tile<1>(xT, rows, W, N, K, n0, cols, y, ldy);
    else
      tile<2>(xT, rows, W, N, K, n0, cols, y, ldy);
  }
}

#else  // not x86-64 with GCC/Clang: the op glue uses at::linear instead (cpu_supported() is false); kept correct anyway

bool cpu_supported() { return false; }

void gemm_rows_dot(const float* x, int64_t ldx, int64_t rows, const float* W, int64_t, int64_t K, int64_t n_begin,
                   int64_t n_end, float* y, int64_t ldy) {
  for (int64_t m = 0; m < rows; ++m)
    for (int64_t n = n_begin; n < n_end; ++n) {
      float s = 0.f;
      for (int64_t k = 0; k < K; ++k) s += x[m * ldx + k] * W[n * K + k];
      y[m * ldy + n] = s;
    }
}

void gemm_rows(const float* xT, int64_t rows, const float* W, int64_t, int64_t K, int64_t n_begin,
               int64_t n_end, float* y, int64_t ldy) {
  const int64_t width = width_of(rows);
  for (int64_t m = 0; m < rows; ++m)
    for (int64_t n = n_begin; n < n_end; ++n) {
      float s = 0.f;
      for (int64_t k = 0; k < K; ++k) s += xT[k * width + m] * W[n * K + k];
      y[m * ldy + n] = s;
    }
}

#endif

}  // namespace muonext::skinny
