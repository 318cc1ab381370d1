// Torch-free driver of the CUDA Newton–Schulz: the normalisation pass, then per step the three fused
// GEMM launches (Gram, polynomial, update) for every job of the group together.
#include <vector>

#include "newton_schulz/ns_kernels.cuh"
#include "newton_schulz/ns_launch.h"

namespace muonext {
namespace cuda {

namespace {

template <bool B_KMAJOR, typename T, typename Make>
cudaError_t launch_group(int num_jobs, Make&& make, cudaStream_t stream) {
  for (int first = 0; first < num_jobs; first += ns::kMaxProblems) {
    ns::GemmLaunch launch{};
    launch.num_problems = num_jobs - first < ns::kMaxProblems ? num_jobs - first : ns::kMaxProblems;
    for (int i = 0; i < launch.num_problems; ++i) launch.p[i] = make(first + i);
    const cudaError_t e = ns_gemm<T, B_KMAJOR>(launch, stream);
    if (e != cudaSuccess) return e;
  }
  return cudaSuccess;
}

}  // namespace

template <typename T>
cudaError_t ns_normalise(ns::NsJob* jobs, int num_jobs, float eps, cudaStream_t stream) {
  constexpr int kMaxGridY = 65535;
  for (int i = 0; i < num_jobs; ++i) {
    const ns::NsJob& j = jobs[i];
    const bool copy = j.x_in != j.in;
    for (int b0 = 0; b0 < j.batch; b0 += kMaxGridY) {  // grid.y is limited: chunks of the batch
      const int nb = j.batch - b0 < kMaxGridY ? j.batch - b0 : kMaxGridY;
      const T* in = static_cast<const T*>(j.in) + static_cast<int64_t>(b0) * j.m * j.n;
      T* x = copy ? static_cast<T*>(j.x[0]) + static_cast<int64_t>(b0) * j.x_rows * j.ldn : nullptr;
      ns_dev::ns_prologue_kernel<T><<<dim3(j.prologue_tiles, nb), dim3(32, 8), 0, stream>>>(
          in, x, j.partial + static_cast<int64_t>(b0) * j.prologue_tiles, j.m, j.n, j.ldn, j.x_rows, j.tall, copy,
          j.prologue_tiles);
      const cudaError_t e = cudaGetLastError();
      if (e != cudaSuccess) return e;
    }
    ns_dev::ns_norm_kernel<256><<<j.batch, 256, 0, stream>>>(j.partial, j.inv_norm, j.prologue_tiles, eps);
    const cudaError_t e = cudaGetLastError();
    if (e != cudaSuccess) return e;
  }
  return cudaSuccess;
}

template <typename T>
cudaError_t ns_run(ns::NsJob* jobs, int num_jobs, const double* coefficients, int steps, float eps,
                   cudaStream_t stream) {
  const cudaError_t norm_error = ns_normalise<T>(jobs, num_jobs, eps, stream);
  if (norm_error != cudaSuccess) return norm_error;
  for (int s = 0; s < steps; ++s) {
    const double a = coefficients[3 * s], b = coefficients[3 * s + 1], c = coefficients[3 * s + 2];
    const bool last = s + 1 == steps;
    cudaError_t e = launch_group<true, T>(num_jobs, [&](int i) { return ns::ns_gram_problem(jobs[i], s); }, stream);
    if (e == cudaSuccess) e = launch_group<true, T>(num_jobs, [&](int i) { return ns::ns_poly_problem(jobs[i], b, c); }, stream);
    if (e == cudaSuccess) {
      e = launch_group<false, T>(num_jobs, [&](int i) { return ns::ns_update_problem(jobs[i], s, a, last); }, stream);
    }
    if (e != cudaSuccess) return e;
  }
  return cudaSuccess;
}

template cudaError_t ns_normalise<uint16_t>(ns::NsJob*, int, float, cudaStream_t);
template cudaError_t ns_normalise<float>(ns::NsJob*, int, float, cudaStream_t);
template cudaError_t ns_run<uint16_t>(ns::NsJob*, int, const double*, int, float, cudaStream_t);
template cudaError_t ns_run<float>(ns::NsJob*, int, const double*, int, float, cudaStream_t);

}  // namespace cuda
}  // namespace muonext
