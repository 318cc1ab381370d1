// Torch-free entry points of the sm_90a Newton–Schulz (bf16 only): ns_sm90_runner.cu drives the plan
// of ns_sm90_plan.h with the CUTLASS grouped GEMMs of ns_sm90_gemm_{kmajor,nmajor}.cu.
// MUONEXT_SM90_GEMM is defined when the build targets sm_90a (MUONEXT_WITH_SM90A, set by setup.py) and
// the toolkit can modify TMA descriptors on the device (CUDA ≥ 12.3), which the grouped kernels need.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>

#include "newton_schulz/ns_sm90_plan.h"
#include "newton_schulz/ns_tiles.h"

#if defined(MUONEXT_WITH_SM90A) && __has_include("cutlass/arch/config.h")
#include "cutlass/arch/config.h"
#if defined(CUTLASS_ARCH_MMA_MODIFIABLE_TMA_SM90_SUPPORTED)
#define MUONEXT_SM90_GEMM 1
#endif
#endif

namespace muonext {
namespace cuda {

// Whether this build contains the sm_90a kernels (the device must also be compute capability 9.0).
bool ns_sm90_compiled();

// Bytes of device workspace ns_run_sm90 needs for these jobs.
size_t ns_sm90_workspace_bytes(const ns::NsJob* jobs, int num_jobs, int sm_count);

// Newton–Schulz of a group of bf16 jobs whose X buffers hold x_rows = ldm rows (zero padded): the
// normalisation pass, then per step (Gram, mirror, Poly, mirror, Update) for up to ns::kSm90MaxJobs
// jobs per launch, then the copy into the output where it could not be written directly.
cudaError_t ns_run_sm90(ns::NsJob* jobs, int num_jobs, const double* coefficients, int steps, float eps,
                        void* workspace, size_t workspace_bytes, int device, int sm_count, cudaStream_t stream);

namespace sm90 {
// One CUTLASS grouped GEMM per B layout (ns_sm90_gemm.cuh): B_KMAJOR = true for Gram and Poly
// (ns_sm90_gemm_kmajor.cu), false for Update (ns_sm90_gemm_nmajor.cu).
template <bool B_KMAJOR>
size_t grouped_gemm_workspace(int max_groups, int sm_count);
template <bool B_KMAJOR>
cudaError_t grouped_gemm(const ns::Sm90Plan& plan, ns::Sm90Gemm kind, void* workspace, size_t workspace_bytes,
                         int device, int sm_count, cudaStream_t stream);
template <>
size_t grouped_gemm_workspace<true>(int, int);
template <>
size_t grouped_gemm_workspace<false>(int, int);
template <>
cudaError_t grouped_gemm<true>(const ns::Sm90Plan&, ns::Sm90Gemm, void*, size_t, int, int, cudaStream_t);
template <>
cudaError_t grouped_gemm<false>(const ns::Sm90Plan&, ns::Sm90Gemm, void*, size_t, int, int, cudaStream_t);
}  // namespace sm90

}  // namespace cuda
}  // namespace muonext
