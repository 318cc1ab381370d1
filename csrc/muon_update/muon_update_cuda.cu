// CUDA glue of the fused Muon update ops: checks, contiguity, and one multi-tensor launch per 64
// tensors on the current stream (descriptors travel as the kernel argument: no H2D copy, graph-safe).
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <cmath>

#include "common/multi_tensor_glue.h"
#include "muon_update/muon_update_kernels.cuh"
#include "muon_update/update_checks.h"

namespace muonext {
namespace {

std::vector<int64_t> numels_of(const std::vector<at::Tensor>& ts) {
  std::vector<int64_t> n;
  n.reserve(ts.size());
  for (const auto& t : ts) n.push_back(t.numel());
  return n;
}

void muon_momentum_cuda(at::TensorList bufs, at::TensorList grads, at::TensorList outs, double momentum, bool nesterov) {
  check_update_pairs("muon_momentum_", bufs, "bufs", grads, "grads");
  check_update_pairs("muon_momentum_", bufs, "bufs", outs, "outs");
  MX_CHECK_VALUE(std::isfinite(momentum), "muon_momentum_: momentum must be finite, got ", momentum);
  if (bufs.empty()) return;
  const c10::cuda::CUDAGuard guard(bufs[0].device());
  std::vector<at::Tensor> work = contiguous_targets(bufs);
  std::vector<at::Tensor> out_work = contiguous_targets(outs);
  std::vector<at::Tensor> grad_c;
  for (const auto& g : grads) grad_c.push_back(g.contiguous());
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  run_multi_tensor(
      numels_of(work), 3, momentum, nesterov ? 1 : 0,
      [&](int i, mt::TensorDesc& d) {
        d.ptr[0] = work[i].data_ptr();
        d.ptr[1] = grad_c[i].data_ptr();
        d.ptr[2] = out_work[i].data_ptr();
        d.dtype[0] = mt_dtype(work[i].scalar_type());
        d.dtype[1] = mt_dtype(grad_c[i].scalar_type());
        d.dtype[2] = mt_dtype(out_work[i].scalar_type());
        d.n = work[i].numel();
      },
      [&](const mt::LaunchTable& table) { cuda::launch_multi_tensor(table, cuda::MomentumOp{}, stream); });
  copy_back(bufs, work);
  copy_back(outs, out_work);
}

void muon_apply_cuda(at::TensorList params, at::TensorList updates, at::ArrayRef<double> lrs,
                     at::ArrayRef<double> weight_decays, at::ArrayRef<double> scales) {
  check_update_pairs("muon_apply_", params, "params", updates, "updates");
  check_list_length("params", params.size(), "lrs", lrs.size());
  check_list_length("params", params.size(), "weight_decays", weight_decays.size());
  check_list_length("params", params.size(), "scales", scales.size());
  for (size_t i = 0; i < params.size(); ++i) {
    MX_CHECK_VALUE(std::isfinite(lrs[i]) && std::isfinite(weight_decays[i]) && std::isfinite(scales[i]),
                   "muon_apply_: lrs[", i, "], weight_decays[", i, "] and scales[", i, "] must be finite, got ", lrs[i],
                   ", ", weight_decays[i], ", ", scales[i]);
  }
  if (params.empty()) return;
  const c10::cuda::CUDAGuard guard(params[0].device());
  std::vector<at::Tensor> work = contiguous_targets(params);
  std::vector<at::Tensor> upd_c;
  for (const auto& u : updates) upd_c.push_back(u.contiguous());
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  run_multi_tensor(
      numels_of(work), 2, 0.0, 0,
      [&](int i, mt::TensorDesc& d) {
        d.ptr[0] = work[i].data_ptr();
        d.ptr[1] = upd_c[i].data_ptr();
        d.dtype[0] = mt_dtype(work[i].scalar_type());
        d.dtype[1] = mt_dtype(upd_c[i].scalar_type());
        d.n = work[i].numel();
        d.s0 = 1.0 - lrs[i] * weight_decays[i];
        d.s1 = lrs[i] * scales[i];
      },
      [&](const mt::LaunchTable& table) { cuda::launch_multi_tensor(table, cuda::ApplyOp{}, stream); });
  copy_back(params, work);
}

}  // namespace

TORCH_LIBRARY_IMPL(muonext, CUDA, m) {
  m.impl("muon_momentum_", &muon_momentum_cuda);
  m.impl("muon_apply_", &muon_apply_cuda);
}

}  // namespace muonext
