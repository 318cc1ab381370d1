// Torch-free entry points of the CUDA Newton–Schulz (defined in ns_runner.cu and ns_gemm_*.cu).
// Storage types: uint16_t = bf16 bits, float = fp32.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "newton_schulz/ns_tiles.h"

namespace muonext {
namespace cuda {

// One GEMM launch over up to ns::kMaxProblems problems (tile counts are filled in here).
// B_KMAJOR: op(B)(k, j) = B[j·ldb + k] (X·Xᵀ, A·A); else B[k·ldb + j] (P·X).
template <typename T, bool B_KMAJOR>
cudaError_t ns_gemm(ns::GemmLaunch launch, cudaStream_t stream);

// The normalisation pass of every job: the prologue (copy into x[0] unless step 0 reads the input in
// place, per-tile sums of squares) and inv_norm = 1 / (‖X‖_F + eps) per matrix. Part of ns_run and
// ns_run_sm90.
template <typename T>
cudaError_t ns_normalise(ns::NsJob* jobs, int num_jobs, float eps, cudaStream_t stream);

// Newton–Schulz of a group of jobs (batches of possibly different shapes, one dtype) with the same
// coefficients [a0, b0, c0, a1, ...]: 2 launches per job for the norm, then 3 GEMM launches per step
// for the whole group (more only past ns::kMaxProblems jobs). Returns the first launch error.
template <typename T>
cudaError_t ns_run(ns::NsJob* jobs, int num_jobs, const double* coefficients, int steps, float eps,
                   cudaStream_t stream);

}  // namespace cuda
}  // namespace muonext
