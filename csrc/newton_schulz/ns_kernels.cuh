// Torch-free device code of the CUDA Newton–Schulz (see ns_tiles.h for the problem description):
//   * ns_prologue_kernel: copies X into the wide-orientation work buffer (transposing tall inputs,
//     padding rows to 16 B) and writes per-tile partial sums of squares (fp32), in one pass over X;
//   * ns_norm_kernel: s = 1 / (sqrt(Σ partials) + eps) per matrix, summed in a fixed order;
//   * gemm_sm80_bf16_kernel: bf16 GEMM tiles on tensor cores (mma.sync m16n8k16, ldmatrix, 4-stage
//     cp.async pipeline with zero-filled residues), for sm_80 and later;
//   * gemm_simt_f32_kernel: the fp32 GEMM on CUDA cores (exact fp32, as torch's default matmul);
//   * a shared epilogue: α·acc staged in shared memory (fp32), then one coalesced pass that adds
//     β·D, rounds once to the storage type and stores the tile, its mirror image (symmetric
//     off-diagonal tiles) or its transpose (the last step of a tall input).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "common/dtype_cuda.cuh"
#include "newton_schulz/ns_tiles.h"

namespace muonext {
namespace cuda {
namespace ns_dev {

using ns::GemmLaunch;
using ns::GemmProblem;

// ---- storage types: uint16_t holds bf16 bits ----
__device__ __forceinline__ float to_f32(float v) { return v; }
__device__ __forceinline__ float to_f32(uint16_t v) { return bf16_bits_to_float(v); }
template <typename T>
__device__ __forceinline__ T from_f32(float v);
template <>
__device__ __forceinline__ float from_f32<float>(float v) { return v; }
template <>
__device__ __forceinline__ uint16_t from_f32<uint16_t>(float v) { return float_to_bf16_bits(v); }

// ---- PTX wrappers ----
// 16-byte cp.async that reads src_bytes (0..16) and zero-fills the rest of the 16 bytes.
__device__ __forceinline__ void cp_async_16(void* smem, const void* gmem, int src_bytes) {
  const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(smem));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(s), "l"(gmem), "r"(src_bytes));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const void* smem) {
  const unsigned a = static_cast<unsigned>(__cvta_generic_to_shared(smem));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(a));
}
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], const void* smem) {
  const unsigned a = static_cast<unsigned>(__cvta_generic_to_shared(smem));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(a));
}
// D (16×8, fp32) += A (16×16 bf16, row) · B (16×8 bf16, col)
__device__ __forceinline__ void mma_bf16_16816(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// Asynchronously loads rows [r0, r0 + ROWS) × columns [c0, c0 + COLS) of the row-major matrix `base`
// (nrows × ncols valid, leading dimension ld, rows 16-byte aligned) into shared memory with row
// stride LDS. Out-of-range rows and columns are zero-filled (a chunk straddling ncols is partial).
template <typename T, int ROWS, int COLS, int LDS, int NT>
__device__ __forceinline__ void load_tile_async(T* s, const T* base, int64_t ld, int nrows, int ncols, int r0, int c0) {
  constexpr int kEpc = 16 / static_cast<int>(sizeof(T));  // elements per 16-byte chunk
  constexpr int kCpr = COLS / kEpc;                       // chunks per row
  static_assert(COLS % kEpc == 0 && (ROWS * kCpr) % NT == 0, "tile must split evenly over the threads");
#pragma unroll
  for (int it = 0; it < ROWS * kCpr / NT; ++it) {
    const int i = it * NT + static_cast<int>(threadIdx.x);
    const int r = i / kCpr, c = (i % kCpr) * kEpc;
    const int gr = r0 + r, gc = c0 + c;
    int valid = 0;
    const T* src = base;  // a valid address even when nothing is read
    if (gr < nrows && gc < ncols) {
      valid = ncols - gc < kEpc ? ncols - gc : kEpc;
      src = base + static_cast<int64_t>(gr) * ld + gc;
    }
    cp_async_16(s + r * LDS + c, src, valid * static_cast<int>(sizeof(T)));
  }
}

// α, β of one matrix: the per-matrix norm factor folded in.
struct Coeffs {
  float alpha, beta;
};
__device__ __forceinline__ Coeffs coeffs_of(const GemmProblem& p, int matrix) {
  return {p.alpha * ns::scale_pow(p.scale, matrix, p.alpha_pow), p.beta * ns::scale_pow(p.scale, matrix, p.beta_pow)};
}

// The stage `st` (BM × BN, row stride LDS, fp32) holds α·acc of tile (tr, tc) of `matrix`. Writes
// α·acc + β·D rounded once to T: the tile itself (upper triangle of a diagonal tile mirrored into
// its lower triangle, so C is exactly symmetric), then the mirror image of an off-diagonal symmetric
// tile, or the transposed tile (transpose_out). Both passes are coalesced on the global side.
template <typename T, int BM, int BN, int LDS, int NT>
__device__ __forceinline__ void store_tile(const float* st, const GemmProblem& p, int matrix, int tr, int tc, float beta) {
  static_assert(BM == BN, "mirroring needs square tiles");
  const int r0 = tr * BM, c0 = tc * BN;
  T* C = static_cast<T*>(p.C) + matrix * p.sC;
  const T* D = p.D == nullptr ? nullptr : static_cast<const T*>(p.D) + matrix * p.sD;
  const bool diag = p.symmetric && tr == tc;
  if (!p.transpose_out) {
    for (int i = threadIdx.x; i < BM * BN; i += NT) {
      const int r = i / BN, c = i % BN;
      const int gr = r0 + r, gc = c0 + c;
      if (gr < p.m && gc < p.n) {
        float v = (diag && r > c) ? st[c * LDS + r] : st[r * LDS + c];
        if (D != nullptr) v += beta * to_f32(D[gr * p.ldd + gc]);
        C[gr * p.ldc + gc] = from_f32<T>(v);
      }
    }
  }
  if ((p.symmetric && !diag) || p.transpose_out) {
    // element (r, c) of the tile goes to C[(c0 + c)·ldc + r0 + r]; r runs fastest (coalesced stores)
    for (int i = threadIdx.x; i < BM * BN; i += NT) {
      const int c = i / BM, r = i % BM;
      const int gr = r0 + r, gc = c0 + c;
      if (gr < p.m && gc < p.n) {
        float v = st[r * LDS + c];
        if (D != nullptr) {
          // symmetric: D is symmetric too, read it where C is written (coalesced); transpose_out: D
          // is in the product's orientation
          v += beta * to_f32(p.symmetric ? D[gc * p.ldd + gr] : D[gr * p.ldd + gc]);
        }
        C[gc * p.ldc + gr] = from_f32<T>(v);
      }
    }
  }
}

// ================= bf16 tensor-core GEMM (sm_80+: mma.sync, ldmatrix, cp.async) =================
struct Sm80Bf16Config {
  static constexpr int BM = 128, BN = 128, BK = 32, STAGES = 4, THREADS = 256;
  static constexpr int WARPS_N = 4;                 // 2 × 4 warps, each a 64 × 32 sub-tile
  static constexpr int WM = 64, WN = 32;
  static constexpr int MI = WM / 16, NJ = WN / 8;  // mma tiles per warp: 4 × 4
  static constexpr int PAD = 8;                     // bf16 elements (16 B) per smem row: no ldmatrix bank conflicts
  static constexpr int LDA = BK + PAD;              // A stage: BM × (BK + PAD)
  static constexpr int A_STAGE = BM * LDA;
  static constexpr int LDS_OUT = BN + 1;            // fp32 epilogue stage
  template <bool B_KMAJOR>
  struct B {
    static constexpr int LD = B_KMAJOR ? BK + PAD : BN + PAD;  // K-major: BN × (BK+PAD); N-major: BK × (BN+PAD)
    static constexpr int STAGE = B_KMAJOR ? BN * LD : BK * LD;
  };
  template <bool B_KMAJOR>
  static constexpr int smem_bytes() {
    constexpr int pipe = STAGES * (A_STAGE + B<B_KMAJOR>::STAGE) * 2;
    constexpr int out = BM * LDS_OUT * 4;
    return pipe > out ? pipe : out;
  }
};

template <bool B_KMAJOR>
__global__ void __launch_bounds__(Sm80Bf16Config::THREADS, 2)
    gemm_sm80_bf16_kernel(const __grid_constant__ GemmLaunch launch) {
  using Cfg = Sm80Bf16Config;
  using BL = typename Cfg::template B<B_KMAJOR>;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  uint16_t* sA = reinterpret_cast<uint16_t*>(smem_raw);
  uint16_t* sB = sA + Cfg::STAGES * Cfg::A_STAGE;

  const ns::TileCoord tile = ns::tile_of(launch, static_cast<int>(blockIdx.x));
  const GemmProblem& p = launch.p[tile.problem];
  const uint16_t* A = static_cast<const uint16_t*>(p.A) + tile.matrix * p.sA;
  const uint16_t* B = static_cast<const uint16_t*>(p.B) + tile.matrix * p.sB;
  const int m0 = tile.row * Cfg::BM, n0 = tile.col * Cfg::BN;
  const int ktiles = static_cast<int>(ns::ceil_div(p.k, Cfg::BK));

  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int wm = warp / Cfg::WARPS_N, wn = warp % Cfg::WARPS_N;

  auto load_stage = [&](int stage, int kt) {
    const int k0 = kt * Cfg::BK;
    // A: rows m0.., K contiguous (p.k valid columns)
    load_tile_async<uint16_t, Cfg::BM, Cfg::BK, Cfg::LDA, Cfg::THREADS>(sA + stage * Cfg::A_STAGE, A, p.lda, p.m, p.k,
                                                                         m0, k0);
    if constexpr (B_KMAJOR) {  // B stored [n][k]
      load_tile_async<uint16_t, Cfg::BN, Cfg::BK, BL::LD, Cfg::THREADS>(sB + stage * BL::STAGE, B, p.ldb, p.n, p.k, n0,
                                                                        k0);
    } else {  // B stored [k][n]
      load_tile_async<uint16_t, Cfg::BK, Cfg::BN, BL::LD, Cfg::THREADS>(sB + stage * BL::STAGE, B, p.ldb, p.k, p.n, k0,
                                                                        n0);
    }
  };

  float acc[Cfg::MI][Cfg::NJ][4];
#pragma unroll
  for (int i = 0; i < Cfg::MI; ++i)
#pragma unroll
    for (int j = 0; j < Cfg::NJ; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) acc[i][j][e] = 0.0f;

#pragma unroll
  for (int s = 0; s < Cfg::STAGES - 1; ++s) {
    if (s < ktiles) load_stage(s, s);
    cp_async_commit();  // always commit: the group count stays in step with the k-tiles
  }

  for (int kt = 0; kt < ktiles; ++kt) {
    cp_async_wait<Cfg::STAGES - 2>();  // k-tile kt has landed (this thread's copies) ...
    __syncthreads();                   // ... for every thread; and stage (kt−1) % STAGES is free again
    const int next = kt + Cfg::STAGES - 1;
    if (next < ktiles) load_stage(next % Cfg::STAGES, next);
    cp_async_commit();

    const uint16_t* a_st = sA + (kt % Cfg::STAGES) * Cfg::A_STAGE;
    const uint16_t* b_st = sB + (kt % Cfg::STAGES) * BL::STAGE;
#pragma unroll
    for (int kk = 0; kk < Cfg::BK; kk += 16) {
      uint32_t af[Cfg::MI][4];
      uint32_t bf[Cfg::NJ][2];
#pragma unroll
      for (int i = 0; i < Cfg::MI; ++i) {
        // matrices: rows 0-7 / 8-15 (lanes 0-7 / 8-15) at k, the same rows at k+8 (lanes 16-31)
        const int row = wm * Cfg::WM + i * 16 + (lane % 16);
        const int col = kk + (lane / 16) * 8;
        ldmatrix_x4(af[i], a_st + row * Cfg::LDA + col);
      }
#pragma unroll
      for (int j2 = 0; j2 < Cfg::NJ / 2; ++j2) {
        uint32_t r[4];
        if constexpr (B_KMAJOR) {
          // matrices: (n 0-7, k 0-7), (n 0-7, k 8-15), (n 8-15, k 0-7), (n 8-15, k 8-15)
          const int nn = wn * Cfg::WN + j2 * 16 + (lane % 8) + (lane / 16) * 8;
          const int k = kk + ((lane / 8) % 2) * 8;
          ldmatrix_x4(r, b_st + nn * BL::LD + k);
        } else {
          // the same four matrices stored k-major in smem rows: load transposed
          const int k = kk + (lane % 8) + ((lane / 8) % 2) * 8;
          const int nn = wn * Cfg::WN + j2 * 16 + (lane / 16) * 8;
          ldmatrix_x4_trans(r, b_st + k * BL::LD + nn);
        }
        bf[2 * j2][0] = r[0];
        bf[2 * j2][1] = r[1];
        bf[2 * j2 + 1][0] = r[2];
        bf[2 * j2 + 1][1] = r[3];
      }
#pragma unroll
      for (int i = 0; i < Cfg::MI; ++i)
#pragma unroll
        for (int j = 0; j < Cfg::NJ; ++j) mma_bf16_16816(acc[i][j], af[i], bf[j][0], bf[j][1]);
    }
  }
  cp_async_wait<0>();
  __syncthreads();  // the pipeline's shared memory becomes the epilogue stage

  const Coeffs co = coeffs_of(p, tile.matrix);
  float* st = reinterpret_cast<float*>(smem_raw);
  const int g = lane / 4, t = lane % 4;
#pragma unroll
  for (int i = 0; i < Cfg::MI; ++i)
#pragma unroll
    for (int j = 0; j < Cfg::NJ; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        // accumulator layout of m16n8: e = 0, 1 → (g, 2t + e); e = 2, 3 → (g + 8, 2t + e − 2)
        const int r = wm * Cfg::WM + i * 16 + g + (e / 2) * 8;
        const int c = wn * Cfg::WN + j * 8 + 2 * t + (e % 2);
        st[r * Cfg::LDS_OUT + c] = co.alpha * acc[i][j][e];
      }
  __syncthreads();
  store_tile<uint16_t, Cfg::BM, Cfg::BN, Cfg::LDS_OUT, Cfg::THREADS>(st, p, tile.matrix, tile.row, tile.col, co.beta);
}

// ======================= fp32 GEMM on CUDA cores (exact fp32 products) =======================
struct SimtF32Config {
  static constexpr int BM = 64, BN = 64, BK = 16, STAGES = 3, THREADS = 256;  // 16 × 16 threads, 4 × 4 each
  static constexpr int LDA = BK + 4;  // rows stay 16-byte aligned for cp.async
  static constexpr int A_STAGE = BM * LDA;
  static constexpr int LDS_OUT = BN + 1;
  template <bool B_KMAJOR>
  struct B {
    static constexpr int LD = B_KMAJOR ? BK + 4 : BN + 4;
    static constexpr int STAGE = B_KMAJOR ? BN * LD : BK * LD;
  };
  template <bool B_KMAJOR>
  static constexpr int smem_bytes() {
    constexpr int pipe = STAGES * (A_STAGE + B<B_KMAJOR>::STAGE) * 4;
    constexpr int out = BM * LDS_OUT * 4;
    return pipe > out ? pipe : out;
  }
};

template <bool B_KMAJOR>
__global__ void __launch_bounds__(SimtF32Config::THREADS) gemm_simt_f32_kernel(const __grid_constant__ GemmLaunch launch) {
  using Cfg = SimtF32Config;
  using BL = typename Cfg::template B<B_KMAJOR>;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  float* sA = reinterpret_cast<float*>(smem_raw);
  float* sB = sA + Cfg::STAGES * Cfg::A_STAGE;

  const ns::TileCoord tile = ns::tile_of(launch, static_cast<int>(blockIdx.x));
  const GemmProblem& p = launch.p[tile.problem];
  const float* A = static_cast<const float*>(p.A) + tile.matrix * p.sA;
  const float* B = static_cast<const float*>(p.B) + tile.matrix * p.sB;
  const int m0 = tile.row * Cfg::BM, n0 = tile.col * Cfg::BN;
  const int ktiles = static_cast<int>(ns::ceil_div(p.k, Cfg::BK));
  const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;  // rows ty + 16·i, columns tx + 16·j

  auto load_stage = [&](int stage, int kt) {
    const int k0 = kt * Cfg::BK;
    load_tile_async<float, Cfg::BM, Cfg::BK, Cfg::LDA, Cfg::THREADS>(sA + stage * Cfg::A_STAGE, A, p.lda, p.m, p.k, m0,
                                                                      k0);
    if constexpr (B_KMAJOR) {
      load_tile_async<float, Cfg::BN, Cfg::BK, BL::LD, Cfg::THREADS>(sB + stage * BL::STAGE, B, p.ldb, p.n, p.k, n0, k0);
    } else {
      load_tile_async<float, Cfg::BK, Cfg::BN, BL::LD, Cfg::THREADS>(sB + stage * BL::STAGE, B, p.ldb, p.k, p.n, k0, n0);
    }
  };

  float acc[4][4];
#pragma unroll
  for (int i = 0; i < 4; ++i)
#pragma unroll
    for (int j = 0; j < 4; ++j) acc[i][j] = 0.0f;

#pragma unroll
  for (int s = 0; s < Cfg::STAGES - 1; ++s) {
    if (s < ktiles) load_stage(s, s);
    cp_async_commit();
  }
  for (int kt = 0; kt < ktiles; ++kt) {
    cp_async_wait<Cfg::STAGES - 2>();
    __syncthreads();
    const int next = kt + Cfg::STAGES - 1;
    if (next < ktiles) load_stage(next % Cfg::STAGES, next);
    cp_async_commit();
    const float* a_st = sA + (kt % Cfg::STAGES) * Cfg::A_STAGE;
    const float* b_st = sB + (kt % Cfg::STAGES) * BL::STAGE;
#pragma unroll
    for (int kk = 0; kk < Cfg::BK; ++kk) {
      float a[4], b[4];
#pragma unroll
      for (int i = 0; i < 4; ++i) a[i] = a_st[(ty + 16 * i) * Cfg::LDA + kk];
#pragma unroll
      for (int j = 0; j < 4; ++j) b[j] = B_KMAJOR ? b_st[(tx + 16 * j) * BL::LD + kk] : b_st[kk * BL::LD + tx + 16 * j];
#pragma unroll
      for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) acc[i][j] = fmaf(a[i], b[j], acc[i][j]);
    }
  }
  cp_async_wait<0>();
  __syncthreads();

  const Coeffs co = coeffs_of(p, tile.matrix);
  float* st = reinterpret_cast<float*>(smem_raw);
#pragma unroll
  for (int i = 0; i < 4; ++i)
#pragma unroll
    for (int j = 0; j < 4; ++j) st[(ty + 16 * i) * Cfg::LDS_OUT + tx + 16 * j] = co.alpha * acc[i][j];
  __syncthreads();
  store_tile<float, Cfg::BM, Cfg::BN, Cfg::LDS_OUT, Cfg::THREADS>(st, p, tile.matrix, tile.row, tile.col, co.beta);
}

// ============================ normalisation: one pass over X ============================
// Block (32, 8) per 32×32 tile of the wide matrix, grid (prologue_tiles, batch). Copies the input into
// X (transposed when tall) unless copy is false, and writes the tile's sum of squares (fp32).
template <typename T>
__global__ void __launch_bounds__(256) ns_prologue_kernel(const T* in, T* x, float* partial, int m, int n, int64_t ldn,
                                                         int64_t x_rows, bool tall, bool copy, int prologue_tiles) {
  constexpr int TS = ns::kPrologueTile;
  __shared__ float tile_s[TS][TS + 1];
  __shared__ float warp_sums[8];
  const int b = blockIdx.y, tile = blockIdx.x;
  const int tiles_n = static_cast<int>(ns::ceil_div(n, TS));
  const int tm = tile / tiles_n, tn = tile % tiles_n;
  const int tx = threadIdx.x, ty = threadIdx.y;
  const T* src = in + static_cast<int64_t>(b) * m * n;  // (m, n) when wide, (n, m) when tall
  T* dst = x + static_cast<int64_t>(b) * x_rows * ldn;  // X buffers hold x_rows ≥ m rows (sm_90a: zero padding)
  float ss = 0.0f;
  if (!tall) {
#pragma unroll
    for (int i = 0; i < TS / 8; ++i) {
      const int r = tm * TS + ty + 8 * i, c = tn * TS + tx;
      if (r < m && c < n) {
        const T v = src[static_cast<int64_t>(r) * n + c];
        if (copy) dst[r * ldn + c] = v;
        const float f = to_f32(v);
        ss += f * f;
      }
    }
  } else {
#pragma unroll
    for (int i = 0; i < TS / 8; ++i) {
      const int ir = tn * TS + ty + 8 * i, ic = tm * TS + tx;  // input (n, m): row ir = column of X
      if (ir < n && ic < m) {
        const float f = to_f32(src[static_cast<int64_t>(ir) * m + ic]);
        tile_s[ty + 8 * i][tx] = f;  // = X[tm·TS + tx][tn·TS + ty + 8i]
        ss += f * f;
      }
    }
    __syncthreads();
#pragma unroll
    for (int i = 0; i < TS / 8; ++i) {
      const int r = tm * TS + ty + 8 * i, c = tn * TS + tx;
      if (r < m && c < n) dst[r * ldn + c] = from_f32<T>(tile_s[tx][ty + 8 * i]);  // exact: f holds a T
    }
  }
  // fixed-order block reduction: deterministic partial sums
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) ss += __shfl_xor_sync(0xffffffffu, ss, o);
  const int lin = ty * TS + tx;
  if (lin % 32 == 0) warp_sums[lin / 32] = ss;
  __syncthreads();
  if (lin == 0) {
    float total = 0.0f;
#pragma unroll
    for (int w = 0; w < 8; ++w) total += warp_sums[w];
    partial[static_cast<int64_t>(b) * prologue_tiles + tile] = total;
  }
}

// One block of 256 per matrix: inv_norm[b] = 1 / (sqrt(Σ partial[b, :]) + eps), in a fixed order.
// (A template only so that several translation units can include this header.)
template <int kThreads = 256>
__global__ void __launch_bounds__(kThreads) ns_norm_kernel(const float* partial, float* inv_norm, int prologue_tiles,
                                                     float eps) {
  __shared__ float warp_sums[8];
  const int b = blockIdx.x;
  float s = 0.0f;
  for (int i = threadIdx.x; i < prologue_tiles; i += kThreads) s += partial[static_cast<int64_t>(b) * prologue_tiles + i];
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
  if (threadIdx.x % 32 == 0) warp_sums[threadIdx.x / 32] = s;
  __syncthreads();
  if (threadIdx.x == 0) {
    float total = 0.0f;
#pragma unroll
    for (int w = 0; w < 8; ++w) total += warp_sums[w];
    inv_norm[b] = 1.0f / (sqrtf(total) + eps);
  }
}

}  // namespace ns_dev
}  // namespace cuda
}  // namespace muonext
