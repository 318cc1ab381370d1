// CUDA glue of pack / unpack_: element ranges of many tensors to one flat buffer (with a cast) and
// back, one multi-tensor launch per 64 ranges on the current stream. Bitwise equal to torch's casts.
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "common/multi_tensor_glue.h"
#include "shard/pack_checks.h"
#include "shard/pack_kernels.cuh"

namespace muonext {
namespace {

char* byte_ptr(const at::Tensor& t, int64_t element) {
  return static_cast<char*>(t.data_ptr()) + element * static_cast<int64_t>(t.element_size());
}

at::Tensor pack_cuda(at::TensorList tensors, at::IntArrayRef offsets, at::IntArrayRef lengths, at::ScalarType dtype) {
  MX_CHECK_TYPE(is_kernel_dtype(dtype), "pack: dtype must be float32, float64 or bfloat16, got ", dtype);
  const auto starts = pack_flat_starts("pack", tensors, "tensors", offsets, lengths);
  MX_CHECK_VALUE(!tensors.empty(), "pack: tensors must not be empty on CUDA");
  const c10::cuda::CUDAGuard guard(tensors[0].device());
  at::Tensor flat = at::empty({starts.back()}, tensors[0].options().dtype(dtype));
  std::vector<at::Tensor> src;
  for (const auto& t : tensors) src.push_back(t.contiguous());
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  run_multi_tensor(
      std::vector<int64_t>(lengths.begin(), lengths.end()), 2, 0.0, 0,
      [&](int i, mt::TensorDesc& d) {
        d.ptr[0] = byte_ptr(src[i], offsets[i]);
        d.ptr[1] = byte_ptr(flat, starts[i]);
        d.dtype[0] = mt_dtype(src[i].scalar_type());
        d.dtype[1] = mt_dtype(dtype);
        d.n = lengths[i];
      },
      [&](const mt::LaunchTable& table) { cuda::launch_multi_tensor(table, cuda::CastCopyOp{}, stream); });
  return flat;
}

void unpack_cuda(const at::Tensor& flat, at::TensorList outs, at::IntArrayRef offsets, at::IntArrayRef lengths) {
  const auto starts = pack_flat_starts("unpack_", outs, "outs", offsets, lengths);
  MX_CHECK_VALUE(flat.dim() == 1 && flat.numel() == starts.back(), "unpack_: flat must be 1-D with ", starts.back(),
                 " elements (the sum of lengths), got shape ", flat.sizes());
  if (!outs.empty()) check_dense_real(flat, "flat", outs[0].device());
  MX_CHECK_TYPE(is_kernel_dtype(flat.scalar_type()), "unpack_: flat must be float32, float64 or bfloat16, got ",
                flat.scalar_type());
  if (outs.empty()) return;
  const c10::cuda::CUDAGuard guard(flat.device());
  const at::Tensor src = flat.contiguous();
  std::vector<at::Tensor> work = contiguous_targets(outs);
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  run_multi_tensor(
      std::vector<int64_t>(lengths.begin(), lengths.end()), 2, 0.0, 0,
      [&](int i, mt::TensorDesc& d) {
        d.ptr[0] = byte_ptr(src, starts[i]);
        d.ptr[1] = byte_ptr(work[i], offsets[i]);
        d.dtype[0] = mt_dtype(src.scalar_type());
        d.dtype[1] = mt_dtype(work[i].scalar_type());
        d.n = lengths[i];
      },
      [&](const mt::LaunchTable& table) { cuda::launch_multi_tensor(table, cuda::CastCopyOp{}, stream); });
  copy_back(outs, work);
}

}  // namespace

TORCH_LIBRARY_IMPL(muonext, CUDA, m) {
  m.impl("pack", &pack_cuda);
  m.impl("unpack_", &unpack_cuda);
}

}  // namespace muonext
