// CUDA glue of newton_schulz: checks, work buffers from the caching allocator, the current stream,
// and dtype dispatch. bf16 and fp32 run the fused kernels (ns_runner.cu); fp64 (tests only) runs the
// same algorithm on ATen's batched GEMMs.
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <limits>
#include <utility>

#include "newton_schulz/ns_checks.h"
#include "newton_schulz/ns_launch.h"

namespace muonext {
namespace {

// fp64: A = X·Xᵀ; P = b·A + c·A·A; X = a·X + P·X with cuBLAS, in the wide orientation.
at::Tensor newton_schulz_aten(const at::Tensor& x3, at::ArrayRef<double> coefficients, double eps) {
  const bool tall = x3.size(1) > x3.size(2);
  const at::Tensor wide = tall ? x3.mT() : x3;
  const at::Tensor norm = at::linalg_vector_norm(wide, 2, at::IntArrayRef{1, 2}, /*keepdim=*/true, at::kDouble);
  at::Tensor x = (wide / (norm + eps)).contiguous();
  at::Tensor gram = at::empty({x.size(0), x.size(1), x.size(1)}, x.options());
  at::Tensor poly = at::empty_like(gram);
  at::Tensor next = at::empty_like(x);
  for (size_t s = 0; s < coefficients.size(); s += 3) {
    at::bmm_out(gram, x, x.mT());
    at::baddbmm_out(poly, gram, gram, gram, /*beta=*/coefficients[s + 1], /*alpha=*/coefficients[s + 2]);
    at::baddbmm_out(next, x, poly, x, /*beta=*/coefficients[s], /*alpha=*/1.0);
    std::swap(x, next);
  }
  return tall ? x.mT().contiguous() : x;
}

at::Tensor newton_schulz_cuda(const at::Tensor& X, at::ArrayRef<double> coefficients, double eps) {
  check_newton_schulz_args(X, coefficients, eps);
  if (X.numel() == 0) return at::zeros_like(X, at::MemoryFormat::Contiguous);
  const c10::cuda::CUDAGuard guard(X.device());
  const at::Tensor x3 = (X.dim() == 2 ? X.unsqueeze(0) : X).contiguous();  // (B, rows, cols)
  at::Tensor out;
  if (X.scalar_type() == at::kDouble) {
    out = newton_schulz_aten(x3, coefficients, eps);
  } else {
    constexpr int64_t kMax = std::numeric_limits<int32_t>::max() / 2;
    MX_CHECK_VALUE(x3.size(1) <= kMax && x3.size(2) <= kMax && x3.size(0) <= kMax,
                   "newton_schulz: X is too large for the CUDA kernel, got shape ", X.sizes());
    const int steps = static_cast<int>(coefficients.size() / 3);
    ns::NsJob job = ns::ns_job_shape(static_cast<int>(x3.size(0)), static_cast<int>(x3.size(1)),
                                     static_cast<int>(x3.size(2)));
    const int64_t B = job.batch, m = job.m;
    out = at::empty_like(x3, at::MemoryFormat::Contiguous);
    const auto opts = x3.options();
    job.in = x3.data_ptr();
    job.out = out.data_ptr();
    // Step 0 can read the input in place when it is wide with 16-byte aligned rows.
    const bool alias = !job.tall && job.ldn == job.n && reinterpret_cast<uintptr_t>(x3.data_ptr()) % 16 == 0;
    at::Tensor x0, x1;
    if (!alias || steps >= 3) x0 = at::empty({B, m, job.ldn}, opts);
    if (steps >= 2) x1 = at::empty({B, m, job.ldn}, opts);
    const at::Tensor gram = at::empty({B, m, job.ldm}, opts);
    const at::Tensor poly = at::empty({B, m, job.ldm}, opts);
    const at::Tensor partial = at::empty({B, job.prologue_tiles}, opts.dtype(at::kFloat));
    const at::Tensor inv_norm = at::empty({B}, opts.dtype(at::kFloat));
    job.x[0] = x0.defined() ? x0.data_ptr() : nullptr;
    job.x[1] = x1.defined() ? x1.data_ptr() : nullptr;
    job.x_in = alias ? job.in : job.x[0];
    job.gram = gram.data_ptr();
    job.poly = poly.data_ptr();
    job.partial = partial.data_ptr<float>();
    job.inv_norm = inv_norm.data_ptr<float>();
    const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
    const float feps = static_cast<float>(eps);
    if (X.scalar_type() == at::kBFloat16) {
      C10_CUDA_CHECK(cuda::ns_run<uint16_t>(&job, 1, coefficients.data(), steps, feps, stream));
    } else {
      C10_CUDA_CHECK(cuda::ns_run<float>(&job, 1, coefficients.data(), steps, feps, stream));
    }
  }
  return X.dim() == 2 ? out.squeeze(0) : out;
}

}  // namespace

TORCH_LIBRARY_IMPL(muonext, CUDA, m) { m.impl("newton_schulz", &newton_schulz_cuda); }

}  // namespace muonext
