// Instantiation of the Newton–Schulz fp32 CUDA-core GEMM for the update a·X + P·X (B operand N-major).
// One instantiation per file so that the build compiles them in parallel.
#include "newton_schulz/ns_gemm_launch.cuh"

namespace muonext {
namespace cuda {

template cudaError_t ns_gemm<float, false>(ns::GemmLaunch, cudaStream_t);

}  // namespace cuda
}  // namespace muonext
