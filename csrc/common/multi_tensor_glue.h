// ATen side of the multi-tensor CUDA launches (glue code only): dtype codes, and running a launch
// plan whose descriptors the caller fills. Every launch is checked.
#pragma once

#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>

#include <cstdint>
#include <vector>

#include "common/check.h"
#include "common/multi_tensor_plan.h"

namespace muonext {

inline uint8_t mt_dtype(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return mt::kF32;
    case at::kDouble: return mt::kF64;
    case at::kBFloat16: return mt::kBF16;
    default: MX_CHECK_TYPE(false, "multi-tensor kernel: unsupported dtype ", t);
  }
  return mt::kF32;
}

// Fills one descriptor per planned tensor with fill(index, desc) (pointers, dtypes, n, scalars), sets
// the vector peel from the pointers, and launches launch(table) for each planned launch.
template <typename Fill, typename Launch>
void run_multi_tensor(const std::vector<int64_t>& numels, int operands, double g0, int32_t flag, Fill&& fill,
                      Launch&& launch) {
  for (const mt::PlannedLaunch& plan : mt::plan_launches(numels)) {
    mt::LaunchTable table{};
    table.num_tensors = static_cast<int32_t>(plan.tensors.size());
    table.num_chunks = plan.num_chunks;
    table.g0 = g0;
    table.flag = flag;
    for (size_t j = 0; j < plan.tensors.size(); ++j) {
      mt::TensorDesc& d = table.t[j];
      fill(plan.tensors[j], d);
      d.chunk_begin = plan.chunk_begin[j];
      uintptr_t addr[mt::kMaxOperands];
      for (int i = 0; i < operands; ++i) addr[i] = reinterpret_cast<uintptr_t>(d.ptr[i]);
      d.peel = static_cast<int8_t>(mt::common_peel(addr, d.dtype, operands));
    }
    launch(table);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
}

}  // namespace muonext
