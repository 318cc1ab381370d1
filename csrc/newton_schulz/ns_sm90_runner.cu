// Driver of the sm_90a Newton–Schulz (plan: ns_sm90_plan.h): the shared normalisation pass, the per-matrix
// step-0 scales, then per step the grouped CUTLASS GEMMs with a mirror pass after each symmetric one,
// and finally the copy (or transpose) of the padded result into the output where needed.
#include "newton_schulz/ns_launch.h"
#include "newton_schulz/ns_sm90_launch.h"

namespace muonext {
namespace cuda {

#ifdef MUONEXT_SM90_GEMM

namespace {

constexpr int kTile = 32;
constexpr int kMaxGridY = 65535;
size_t align256(size_t bytes) { return (bytes + 255) / 256 * 256; }

// s² and a0·s per matrix, the step-0 scales of the Gram and of the update.
__global__ void step0_scales_kernel(const float* s, float* s2, float* as0, int batch, float a0) {
  const int b = blockIdx.x * blockDim.x + threadIdx.x;
  if (b < batch) {
    s2[b] = s[b] * s[b];
    as0[b] = a0 * s[b];
  }
}

// Fills the blocks below the strip diagonal of each mp×mp symmetric matrix from their mirror images
// above it (never written here, so there is no race). Block (32, 8) per 32×32 tile, grid (tiles², batch).
__global__ void __launch_bounds__(256) mirror_kernel(uint16_t* mats, int mp) {
  __shared__ uint16_t tile[kTile][kTile + 1];
  const int tiles = (mp + kTile - 1) / kTile;
  const int tr = blockIdx.x / tiles, tc = blockIdx.x % tiles;  // destination tile (row, column)
  const int last_row = min(tr * kTile + kTile - 1, mp - 1);
  if ((tc * kTile) / ns::kSm90StripRows >= last_row / ns::kSm90StripRows) return;  // nothing to mirror here
  uint16_t* m = mats + static_cast<int64_t>(blockIdx.y) * mp * mp;
  const int tx = threadIdx.x, ty = threadIdx.y;
#pragma unroll
  for (int i = 0; i < kTile / 8; ++i) {  // source tile: rows tc·32.., columns tr·32..
    const int r = tc * kTile + ty + 8 * i, c = tr * kTile + tx;
    if (r < mp && c < mp) tile[ty + 8 * i][tx] = m[static_cast<int64_t>(r) * mp + c];
  }
  __syncthreads();
#pragma unroll
  for (int i = 0; i < kTile / 8; ++i) {
    const int r = tr * kTile + ty + 8 * i, c = tc * kTile + tx;
    if (r < mp && c < mp && ns::sm90_mirrored(r, c)) m[static_cast<int64_t>(r) * mp + c] = tile[tx][ty + 8 * i];
  }
}

// out (rows, cols) ← the m×n corner of the padded wide result X (x_rows × ldn), transposed when tall.
__global__ void __launch_bounds__(256) finish_kernel(const uint16_t* x, uint16_t* out, int m, int n, int64_t ldn,
                                                     int64_t x_rows, bool tall) {
  __shared__ uint16_t tile[kTile][kTile + 1];
  const int tiles_n = (n + kTile - 1) / kTile;
  const int tm = blockIdx.x / tiles_n, tn = blockIdx.x % tiles_n;
  const uint16_t* src = x + static_cast<int64_t>(blockIdx.y) * x_rows * ldn;
  uint16_t* dst = out + static_cast<int64_t>(blockIdx.y) * m * n;
  const int tx = threadIdx.x, ty = threadIdx.y;
  if (!tall) {
#pragma unroll
    for (int i = 0; i < kTile / 8; ++i) {
      const int r = tm * kTile + ty + 8 * i, c = tn * kTile + tx;
      if (r < m && c < n) dst[static_cast<int64_t>(r) * n + c] = src[r * ldn + c];
    }
    return;
  }
#pragma unroll
  for (int i = 0; i < kTile / 8; ++i) {
    const int r = tm * kTile + ty + 8 * i, c = tn * kTile + tx;
    if (r < m && c < n) tile[ty + 8 * i][tx] = src[r * ldn + c];
  }
  __syncthreads();
#pragma unroll
  for (int i = 0; i < kTile / 8; ++i) {  // out is (n, m): out[c][r] = X[r][c]
    const int c = tn * kTile + ty + 8 * i, r = tm * kTile + tx;
    if (r < m && c < n) dst[static_cast<int64_t>(c) * m + r] = tile[tx][ty + 8 * i];
  }
}

cudaError_t mirror(const ns::Sm90Plan& plan, bool poly, cudaStream_t stream) {
  for (int i = 0; i < plan.num_jobs; ++i) {
    const ns::Sm90Job& j = plan.jobs[i];
    if (j.mp <= ns::kSm90StripRows) continue;  // one strip: the GEMM computed the whole matrix
    const int tiles = (j.mp + kTile - 1) / kTile;
    uint16_t* mats = poly ? j.poly : j.gram;
    for (int b0 = 0; b0 < j.batch; b0 += kMaxGridY) {  // grid.y is limited: chunks of the batch
      const int nb = j.batch - b0 < kMaxGridY ? j.batch - b0 : kMaxGridY;
      mirror_kernel<<<dim3(tiles * tiles, nb), dim3(kTile, 8), 0, stream>>>(
          mats + static_cast<int64_t>(b0) * j.mp * j.mp, j.mp);
      const cudaError_t e = cudaGetLastError();
      if (e != cudaSuccess) return e;
    }
  }
  return cudaSuccess;
}

int64_t total_batch(const ns::NsJob* jobs, int num_jobs) {
  int64_t total = 0;
  for (int i = 0; i < num_jobs; ++i) total += jobs[i].batch;
  return total;
}

}  // namespace

bool ns_sm90_compiled() { return true; }

size_t ns_sm90_workspace_bytes(const ns::NsJob* jobs, int num_jobs, int sm_count) {
  int64_t strip_groups = 0;  // an upper bound of the groups of any launch
  for (int i = 0; i < num_jobs; ++i) strip_groups += static_cast<int64_t>(jobs[i].batch) * ns::sm90_strips(jobs[i].ldm);
  const int max_groups = static_cast<int>(strip_groups);
  const size_t gemm = sm90::grouped_gemm_workspace<true>(max_groups, sm_count);
  const size_t update = sm90::grouped_gemm_workspace<false>(static_cast<int>(total_batch(jobs, num_jobs)), sm_count);
  return align256(2 * sizeof(float) * total_batch(jobs, num_jobs)) + (gemm > update ? gemm : update);
}

cudaError_t ns_run_sm90(ns::NsJob* jobs, int num_jobs, const double* coefficients, int steps, float eps,
                        void* workspace, size_t workspace_bytes, int device, int sm_count, cudaStream_t stream) {
  if (workspace_bytes < ns_sm90_workspace_bytes(jobs, num_jobs, sm_count)) return cudaErrorInvalidValue;
  cudaError_t e = ns_normalise<uint16_t>(jobs, num_jobs, eps, stream);
  if (e != cudaSuccess) return e;
  float* scales = static_cast<float*>(workspace);
  const size_t scale_bytes = align256(2 * sizeof(float) * total_batch(jobs, num_jobs));
  void* gemm_ws = static_cast<char*>(workspace) + scale_bytes;
  const size_t gemm_ws_bytes = workspace_bytes - scale_bytes;

  for (int first = 0; first < num_jobs; first += ns::kSm90MaxJobs) {
    ns::Sm90Plan plan;
    plan.num_jobs = num_jobs - first < ns::kSm90MaxJobs ? num_jobs - first : ns::kSm90MaxJobs;
    for (int i = 0; i < plan.num_jobs; ++i) {
      const ns::NsJob& nj = jobs[first + i];
      float* s2 = scales;
      float* as0 = scales + nj.batch;
      scales += 2 * nj.batch;
      plan.jobs[i] = ns::sm90_job(nj, s2, as0);
      step0_scales_kernel<<<(nj.batch + 255) / 256, 256, 0, stream>>>(nj.inv_norm, s2, as0, nj.batch,
                                                                      static_cast<float>(coefficients[0]));
      e = cudaGetLastError();
      if (e != cudaSuccess) return e;
    }
    for (int s = 0; s < steps; ++s) {
      ns::sm90_set_step(plan, coefficients, s, steps);
      e = sm90::grouped_gemm<true>(plan, ns::Sm90Gemm::kGram, gemm_ws, gemm_ws_bytes, device, sm_count, stream);
      if (e == cudaSuccess) e = mirror(plan, /*poly=*/false, stream);
      if (e == cudaSuccess) {
        e = sm90::grouped_gemm<true>(plan, ns::Sm90Gemm::kPoly, gemm_ws, gemm_ws_bytes, device, sm_count, stream);
      }
      if (e == cudaSuccess) e = mirror(plan, /*poly=*/true, stream);
      if (e == cudaSuccess) {
        e = sm90::grouped_gemm<false>(plan, ns::Sm90Gemm::kUpdate, gemm_ws, gemm_ws_bytes, device, sm_count, stream);
      }
      if (e != cudaSuccess) return e;
    }
    for (int i = 0; i < plan.num_jobs; ++i) {  // results left in the padded X buffer
      const ns::NsJob& nj = jobs[first + i];
      if (plan.jobs[i].out != nullptr) continue;
      const int blocks = static_cast<int>(ns::ceil_div(nj.m, kTile) * ns::ceil_div(nj.n, kTile));
      for (int b0 = 0; b0 < nj.batch; b0 += kMaxGridY) {
        const int nb = nj.batch - b0 < kMaxGridY ? nj.batch - b0 : kMaxGridY;
        const uint16_t* x = static_cast<const uint16_t*>(nj.x[steps % 2]) + static_cast<int64_t>(b0) * nj.ldm * nj.ldn;
        uint16_t* out = static_cast<uint16_t*>(nj.out) + static_cast<int64_t>(b0) * nj.m * nj.n;
        finish_kernel<<<dim3(blocks, nb), dim3(kTile, 8), 0, stream>>>(x, out, nj.m, nj.n, nj.ldn, nj.ldm, nj.tall);
        e = cudaGetLastError();
        if (e != cudaSuccess) return e;
      }
    }
  }
  return cudaSuccess;
}

#else  // built without sm_90a: the glue never calls these

bool ns_sm90_compiled() { return false; }
size_t ns_sm90_workspace_bytes(const ns::NsJob*, int, int) { return 0; }
cudaError_t ns_run_sm90(ns::NsJob*, int, const double*, int, float, void*, size_t, int, int, cudaStream_t) {
  return cudaErrorNotSupported;
}

#endif

}  // namespace cuda
}  // namespace muonext
