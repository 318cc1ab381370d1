// Instantiation of the Newton–Schulz fp32 CUDA-core GEMM for the symmetric products X·Xᵀ and b·A + c·A·A (B operand K-major).
// One instantiation per file so that the build compiles them in parallel.
#include "newton_schulz/ns_gemm_launch.cuh"

namespace muonext {
namespace cuda {

template cudaError_t ns_gemm<float, true>(ns::GemmLaunch, cudaStream_t);

}  // namespace cuda
}  // namespace muonext
