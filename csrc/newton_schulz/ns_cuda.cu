// CUDA glue of newton_schulz and newton_schulz_grouped: checks, work buffers from the caching allocator,
// the current stream, the backend choice (ns_backend.h) and dtype dispatch. bf16 and fp32 run the fused
// kernels of one group together (ns_runner.cu, or ns_sm90_runner.cu for bf16 on the sm90 backend); fp64
// (tests only) runs the same algorithm on ATen's batched GEMMs.
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <limits>
#include <utility>
#include <vector>

#include "newton_schulz/ns_backend.h"
#include "newton_schulz/ns_checks.h"
#include "newton_schulz/ns_launch.h"
#include "newton_schulz/ns_sm90_launch.h"

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

// bf16 on the sm90 backend needs the sm_90a kernels in this build and a compute capability 9.0 device.
bool use_sm90(at::ScalarType dtype, const at::Device& device) {
  if (dtype != at::kBFloat16 || ns_backend() != NsBackend::kSm90) return false;
  MX_CHECK(cuda::ns_sm90_compiled(),
           "newton_schulz: the sm90 backend was requested (MUONEXT_NS_BACKEND / ops.ns_backend) but this build has "
           "no sm_90a kernels; rebuild with MUONEXT_CUDA_ARCHS containing 90a");
  const cudaDeviceProp* prop = at::cuda::getDeviceProperties(device.index());
  MX_CHECK(prop->major == 9 && prop->minor == 0, "newton_schulz: the sm90 backend needs a compute capability 9.0 GPU, ",
           device, " is ", prop->major, ".", prop->minor);
  return true;
}

// The work buffers of one job; they stay alive (in `keep`) until every launch is queued.
ns::NsJob make_job(const at::Tensor& x3, const at::Tensor& out, int steps, bool sm90, std::vector<at::Tensor>& keep) {
  constexpr int64_t kMax = std::numeric_limits<int32_t>::max() / 2;
  MX_CHECK_VALUE(x3.size(1) <= kMax && x3.size(2) <= kMax && x3.size(0) <= kMax,
                 "newton_schulz: X is too large for the CUDA kernel, got shape ", x3.sizes());
  ns::NsJob job = ns::ns_job_shape(static_cast<int>(x3.size(0)), static_cast<int>(x3.size(1)),
                                   static_cast<int>(x3.size(2)));
  const int64_t B = job.batch;
  const auto opts = x3.options();
  job.in = x3.data_ptr();
  job.out = out.data_ptr();
  const bool aligned = reinterpret_cast<uintptr_t>(x3.data_ptr()) % 16 == 0;
  // Step 0 can read the input in place when it already has the work layout.
  bool alias, need_x0, need_x1;
  if (sm90) {
    job.x_rows = job.ldm;  // zero-padded to ldm × ldn (ns_sm90_plan.h)
    alias = ns::sm90_unpadded(job) && aligned;
    need_x0 = !alias || steps >= 3;
    need_x1 = steps >= 2 || !ns::sm90_unpadded(job);  // a padded result ends in X, then is copied out
  } else {
    alias = !job.tall && job.ldn == job.n && aligned;
    need_x0 = !alias || steps >= 3;
    need_x1 = steps >= 2;
  }
  const bool zero_pad = sm90 && (job.ldm != job.m || job.ldn != job.n);
  auto x_buffer = [&](bool zero) {
    keep.push_back(zero ? at::zeros({B, job.x_rows, job.ldn}, opts) : at::empty({B, job.x_rows, job.ldn}, opts));
    return keep.back().data_ptr();
  };
  job.x[0] = need_x0 ? x_buffer(zero_pad) : nullptr;  // the prologue writes only the m × n corner
  job.x[1] = need_x1 ? x_buffer(false) : nullptr;
  job.x_in = alias ? job.in : job.x[0];
  for (void** buffer : {&job.gram, &job.poly}) {
    keep.push_back(at::empty({B, job.x_rows, job.ldm}, opts));
    *buffer = keep.back().data_ptr();
  }
  keep.push_back(at::empty({B, job.prologue_tiles}, opts.dtype(at::kFloat)));
  job.partial = keep.back().data_ptr<float>();
  keep.push_back(at::empty({B}, opts.dtype(at::kFloat)));
  job.inv_norm = keep.back().data_ptr<float>();
  return job;
}

std::vector<at::Tensor> newton_schulz_group(at::TensorList Xs, at::ArrayRef<double> coefficients, double eps) {
  std::vector<at::Tensor> outs(Xs.size());
  if (Xs.empty()) return outs;
  const c10::cuda::CUDAGuard guard(Xs[0].device());
  const at::ScalarType dtype = Xs[0].scalar_type();
  const int steps = static_cast<int>(coefficients.size() / 3);
  const bool sm90 = use_sm90(dtype, Xs[0].device());
  std::vector<ns::NsJob> jobs;
  std::vector<at::Tensor> keep;
  for (size_t i = 0; i < Xs.size(); ++i) {
    const at::Tensor& X = Xs[i];
    const at::Tensor x3 = (X.dim() == 2 ? X.unsqueeze(0) : X).contiguous();  // (B, rows, cols)
    if (X.numel() == 0) {
      outs[i] = at::zeros_like(X, at::MemoryFormat::Contiguous);
      continue;
    }
    if (dtype == at::kDouble) {
      const at::Tensor out = newton_schulz_aten(x3, coefficients, eps);
      outs[i] = X.dim() == 2 ? out.squeeze(0) : out;
      continue;
    }
    const at::Tensor out = at::empty_like(x3, at::MemoryFormat::Contiguous);
    keep.push_back(x3);
    jobs.push_back(make_job(x3, out, steps, sm90, keep));
    outs[i] = X.dim() == 2 ? out.squeeze(0) : out;
  }
  if (jobs.empty()) return outs;
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  const float feps = static_cast<float>(eps);
  const int num_jobs = static_cast<int>(jobs.size());
  if (sm90) {
    const int device = Xs[0].device().index();
    const int sm_count = at::cuda::getDeviceProperties(device)->multiProcessorCount;
    const size_t bytes = cuda::ns_sm90_workspace_bytes(jobs.data(), num_jobs, sm_count);
    const at::Tensor workspace = at::empty({static_cast<int64_t>(bytes)}, Xs[0].options().dtype(at::kByte));
    C10_CUDA_CHECK(cuda::ns_run_sm90(jobs.data(), num_jobs, coefficients.data(), steps, feps, workspace.data_ptr(),
                                     bytes, device, sm_count, stream));
  } else if (dtype == at::kBFloat16) {
    C10_CUDA_CHECK(cuda::ns_run<uint16_t>(jobs.data(), num_jobs, coefficients.data(), steps, feps, stream));
  } else {
    C10_CUDA_CHECK(cuda::ns_run<float>(jobs.data(), num_jobs, coefficients.data(), steps, feps, stream));
  }
  return outs;
}

at::Tensor newton_schulz_cuda(const at::Tensor& X, at::ArrayRef<double> coefficients, double eps) {
  check_newton_schulz_args(X, coefficients, eps);
  return newton_schulz_group({X}, coefficients, eps)[0];
}

std::vector<at::Tensor> newton_schulz_grouped_cuda(at::TensorList Xs, at::ArrayRef<double> coefficients, double eps) {
  check_newton_schulz_grouped_args(Xs, coefficients, eps);
  return newton_schulz_group(Xs, coefficients, eps);
}

}  // namespace

TORCH_LIBRARY_IMPL(muonext, CUDA, m) {
  m.impl("newton_schulz", &newton_schulz_cuda);
  m.impl("newton_schulz_grouped", &newton_schulz_grouped_cuda);
}

}  // namespace muonext
