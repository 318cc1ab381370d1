// The definition of ns_gemm<T, B_KMAJOR> (explicitly instantiated in ns_gemm_*.cu): picks the kernel and tile configuration of the
// storage type, schedules the tiles, sets the dynamic shared memory size and launches.
#pragma once

#include "newton_schulz/ns_kernels.cuh"
#include "newton_schulz/ns_launch.h"

namespace muonext {
namespace cuda {

template <typename T>
struct NsGemmKernel;

template <>
struct NsGemmKernel<uint16_t> {
  using Cfg = ns_dev::Sm80Bf16Config;
  template <bool B_KMAJOR>
  static constexpr auto kernel() { return &ns_dev::gemm_sm80_bf16_kernel<B_KMAJOR>; }
};

template <>
struct NsGemmKernel<float> {
  using Cfg = ns_dev::SimtF32Config;
  template <bool B_KMAJOR>
  static constexpr auto kernel() { return &ns_dev::gemm_simt_f32_kernel<B_KMAJOR>; }
};

template <typename T, bool B_KMAJOR>
cudaError_t ns_gemm(ns::GemmLaunch launch, cudaStream_t stream) {
  using K = NsGemmKernel<T>;
  using Cfg = typename K::Cfg;
  const int tiles = ns::schedule_tiles(launch, Cfg::BM, Cfg::BN);
  if (tiles == 0) return cudaSuccess;
  constexpr int smem = Cfg::template smem_bytes<B_KMAJOR>();
  const auto kernel = K::template kernel<B_KMAJOR>();
  if (smem > 48 * 1024) {
    const cudaError_t e = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
    if (e != cudaSuccess) return e;
  }
  kernel<<<tiles, Cfg::THREADS, smem, stream>>>(launch);
  return cudaGetLastError();
}

}  // namespace cuda
}  // namespace muonext
