// Torch-free multi-tensor kernel driver: one thread block per chunk of kChunk elements of any tensor
// of the launch table (a kernel argument, see multi_tensor_plan.h). Each block finds its tensor by a
// binary search over the descriptors' first blocks, then runs the op on its element range: a scalar
// head up to the first 16-byte-aligned element of all operands, 8-element vector steps, a scalar tail.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "common/dtype_cuda.cuh"
#include "common/multi_tensor_plan.h"

namespace muonext {
namespace cuda {

constexpr int kMtThreads = 256;

// Calls scalar(i) for the head and tail elements and vec(i) for each aligned 8-element step of s.
template <typename Scalar, typename Vec>
__device__ __forceinline__ void for_each_element(const mt::ChunkSplit& s, Scalar&& scalar, Vec&& vec) {
  for (int64_t i = s.begin + threadIdx.x; i < s.head; i += blockDim.x) scalar(i);
  for (int64_t i = s.head + static_cast<int64_t>(threadIdx.x) * mt::kVec; i < s.vend;
       i += static_cast<int64_t>(blockDim.x) * mt::kVec) {
    vec(i);
  }
  for (int64_t i = s.vend + threadIdx.x; i < s.end; i += blockDim.x) scalar(i);
}

// The operator() of an op whose arithmetic type follows operand 0: Op::run<double> when it is fp64
// (state kept in fp64), else Op::run<float>.
template <typename Op>
struct AccByFirstOperand {
  __device__ __forceinline__ void operator()(const mt::TensorDesc& d, const mt::LaunchTable& tb,
                                             const mt::ChunkSplit& s) const {
    if (d.dtype[0] == mt::kF64) {
      Op::template run<double>(d, tb, s);
    } else {
      Op::template run<float>(d, tb, s);
    }
  }
};

template <typename Op>
__global__ void __launch_bounds__(kMtThreads) multi_tensor_kernel(const __grid_constant__ mt::LaunchTable table, Op op) {
  const int32_t block = static_cast<int32_t>(blockIdx.x);
  int lo = 0, hi = table.num_tensors - 1;  // last descriptor whose first block is <= this block
  while (lo < hi) {
    const int mid = (lo + hi + 1) >> 1;
    if (table.t[mid].chunk_begin <= block) {
      lo = mid;
    } else {
      hi = mid - 1;
    }
  }
  const mt::TensorDesc& d = table.t[lo];
  op(d, table, mt::split_chunk(d.n, d.peel, block - d.chunk_begin));
}

// The caller checks the launch (C10_CUDA_KERNEL_LAUNCH_CHECK in the glue).
template <typename Op>
void launch_multi_tensor(const mt::LaunchTable& table, Op op, cudaStream_t stream) {
  if (table.num_chunks == 0) return;
  multi_tensor_kernel<Op><<<table.num_chunks, kMtThreads, 0, stream>>>(table, op);
}

}  // namespace cuda
}  // namespace muonext
