// The sm_90a grouped GEMMs of the Newton–Schulz plan (ns_sm90_plan.h) with CUTLASS 3 / CuTe: TMA loads,
// wgmma (bf16 in, fp32 accumulate), warp-specialised cooperative persistent kernels over every group of a
// launch, and the linear-combination epilogue D = α·acc + β·C with per-group α/β pointers on step 0.
// Included by exactly one .cu per B layout (ns_sm90_gemm_kmajor.cu, ns_sm90_gemm_nmajor.cu), which
// defines MUONEXT_SM90_B_KMAJOR (1: B given as the rows of an n×k matrix — Gram, Poly; 0: a row-major k×n
// matrix — Update) first. The CUTLASS types are concrete, not members of a class template: nvcc's host
// code generation garbles the dependent decltype()s of the collective builders inside templates.
#pragma once

#ifndef MUONEXT_SM90_B_KMAJOR
#error "define MUONEXT_SM90_B_KMAJOR (0 or 1) before including ns_sm90_gemm.cuh"
#endif

#include <cuda_runtime.h>

#include <cstddef>
#include <vector>

#include "cute/tensor.hpp"
#include "cutlass/cutlass.h"
#include "cutlass/epilogue/collective/collective_builder.hpp"
#include "cutlass/gemm/collective/collective_builder.hpp"
#include "cutlass/gemm/device/gemm_universal_adapter.h"
#include "cutlass/gemm/dispatch_policy.hpp"
#include "cutlass/gemm/group_array_problem_shape.hpp"
#include "cutlass/gemm/kernel/gemm_universal.hpp"
#include "newton_schulz/ns_sm90_launch.h"
#include "newton_schulz/ns_sm90_plan.h"

namespace muonext {
namespace cuda {
namespace sm90 {

namespace {

using namespace cute;

constexpr bool kBKMajor = MUONEXT_SM90_B_KMAJOR != 0;

struct GroupedGemm {
  using Element = cutlass::bfloat16_t;
  using LayoutA = cutlass::layout::RowMajor;
  using LayoutB = cute::conditional_t<kBKMajor, cutlass::layout::ColumnMajor, cutlass::layout::RowMajor>;
  using LayoutC = cutlass::layout::RowMajor;
  static constexpr int kAlign = 8;  // 16 bytes of bf16
  using TileShape = Shape<_128, _256, _64>;
  using ClusterShape = Shape<_1, _1, _1>;
  using ProblemShape = cutlass::gemm::GroupProblemShape<Shape<int, int, int>>;

  using Epilogue = typename cutlass::epilogue::collective::CollectiveBuilder<
      cutlass::arch::Sm90, cutlass::arch::OpClassTensorOp, TileShape, ClusterShape,
      cutlass::epilogue::collective::EpilogueTileAuto, float, float, Element, LayoutC*, kAlign, Element, LayoutC*,
      kAlign, cutlass::epilogue::PtrArrayTmaWarpSpecializedCooperative,
      cutlass::epilogue::fusion::LinearCombination<Element, float>>::CollectiveOp;

  using Mainloop = typename cutlass::gemm::collective::CollectiveBuilder<
      cutlass::arch::Sm90, cutlass::arch::OpClassTensorOp, Element, LayoutA*, kAlign, Element, LayoutB*, kAlign,
      float, TileShape, ClusterShape,
      cutlass::gemm::collective::StageCountAutoCarveout<static_cast<int>(
          sizeof(typename Epilogue::SharedStorage))>,
      cutlass::gemm::KernelPtrArrayTmaWarpSpecializedCooperative>::CollectiveOp;

  using Kernel = cutlass::gemm::kernel::GemmUniversal<ProblemShape, Mainloop, Epilogue>;
  using Gemm = cutlass::gemm::device::GemmUniversalAdapter<Kernel>;

  using StrideA = typename Kernel::InternalStrideA;
  using StrideB = typename Kernel::InternalStrideB;
  using StrideC = typename Kernel::InternalStrideC;
  using StrideD = typename Kernel::InternalStrideD;
  using Shape3 = typename ProblemShape::UnderlyingProblemShape;

  // The per-group argument arrays, carved from one device buffer.
  struct Arrays {
    Shape3* shapes;
    const Element** A;
    const Element** B;
    const Element** C;
    Element** D;
    StrideA* dA;
    StrideB* dB;
    StrideC* dC;
    StrideD* dD;
    const float** alpha;
    const float** beta;
  };

  static size_t align(size_t bytes) { return (bytes + 255) / 256 * 256; }

  static size_t arrays_bytes(int groups) {
    const size_t g = static_cast<size_t>(groups);
    return align(g * sizeof(Shape3)) + 4 * align(g * sizeof(void*)) + align(g * sizeof(StrideA)) +
           align(g * sizeof(StrideB)) + align(g * sizeof(StrideC)) + align(g * sizeof(StrideD)) +
           2 * align(g * sizeof(void*));
  }

  static Arrays carve(void* base, int groups) {
    const size_t g = static_cast<size_t>(groups);
    char* p = static_cast<char*>(base);
    auto take = [&](size_t bytes) {
      char* at = p;
      p += align(bytes);
      return at;
    };
    Arrays a;
    a.shapes = reinterpret_cast<Shape3*>(take(g * sizeof(Shape3)));
    a.A = reinterpret_cast<const Element**>(take(g * sizeof(void*)));
    a.B = reinterpret_cast<const Element**>(take(g * sizeof(void*)));
    a.C = reinterpret_cast<const Element**>(take(g * sizeof(void*)));
    a.D = reinterpret_cast<Element**>(take(g * sizeof(void*)));
    a.dA = reinterpret_cast<StrideA*>(take(g * sizeof(StrideA)));
    a.dB = reinterpret_cast<StrideB*>(take(g * sizeof(StrideB)));
    a.dC = reinterpret_cast<StrideC*>(take(g * sizeof(StrideC)));
    a.dD = reinterpret_cast<StrideD*>(take(g * sizeof(StrideD)));
    a.alpha = reinterpret_cast<const float**>(take(g * sizeof(void*)));
    a.beta = reinterpret_cast<const float**>(take(g * sizeof(void*)));
    return a;
  }

  // Row-major strides: the leading dimension is the one dynamic mode (the other is 1, the batch mode 0).
  template <class Stride>
  static __device__ Stride row_stride(int64_t ld) {
    Stride s{};
    if constexpr (cute::is_static<cute::remove_cvref_t<decltype(get<0>(s))>>::value) {
      get<1>(s) = ld;
    } else {
      get<0>(s) = ld;
    }
    return s;
  }

  static __device__ void fill(const ns::Sm90Plan& plan, ns::Sm90Gemm kind, int g, const Arrays& a) {
    const ns::Sm90Group e = ns::sm90_group(plan, kind, g);
    a.shapes[g] = Shape3{e.m, e.n, e.k};
    a.A[g] = reinterpret_cast<const Element*>(e.A);
    a.B[g] = reinterpret_cast<const Element*>(e.B);
    a.C[g] = reinterpret_cast<const Element*>(e.C != nullptr ? e.C : e.D);  // unread when β = 0
    a.D[g] = reinterpret_cast<Element*>(e.D);
    a.dA[g] = row_stride<StrideA>(e.lda);
    a.dB[g] = row_stride<StrideB>(e.ldb);
    a.dC[g] = row_stride<StrideC>(e.C != nullptr ? e.ldc : e.ldd);
    a.dD[g] = row_stride<StrideD>(e.ldd);
    a.alpha[g] = e.alpha;
    a.beta[g] = e.beta;
  }
};

__global__ void fill_groups_kernel(ns::Sm90Plan plan, ns::Sm90Gemm kind, int groups, GroupedGemm::Arrays arrays) {
  const int g = blockIdx.x * blockDim.x + threadIdx.x;
  if (g < groups) GroupedGemm::fill(plan, kind, g, arrays);
}

}  // namespace

template <>
size_t grouped_gemm_workspace<kBKMajor>(int max_groups, int sm_count) {
  using G = GroupedGemm;
  typename G::Gemm::Arguments args{};
  args.mode = cutlass::gemm::GemmUniversalMode::kGrouped;
  args.problem_shape = {max_groups, nullptr, nullptr};
  args.hw_info.sm_count = sm_count;
  return G::arrays_bytes(max_groups) + G::align(G::Gemm::get_workspace_size(args));
}

// One grouped launch of the plan's GEMM `kind`: fills the group arrays on the device (so that the launch
// is CUDA-graph capturable), then runs the CUTLASS kernel. `workspace` holds grouped_gemm_workspace bytes.
template <>
cudaError_t grouped_gemm<kBKMajor>(const ns::Sm90Plan& plan, ns::Sm90Gemm kind, void* workspace,
                                   size_t workspace_bytes, int device, int sm_count, cudaStream_t stream) {
  using G = GroupedGemm;
  const int groups = ns::sm90_group_count(plan, kind);
  if (groups == 0) return cudaSuccess;
  const typename G::Arrays arrays = G::carve(workspace, groups);
  fill_groups_kernel<<<(groups + 127) / 128, 128, 0, stream>>>(plan, kind, groups, arrays);
  cudaError_t e = cudaGetLastError();
  if (e != cudaSuccess) return e;

  std::vector<typename G::Shape3> host_shapes(groups);  // lets CUTLASS size the grid on the host
  for (int g = 0; g < groups; ++g) {
    const ns::Sm90Group grp = ns::sm90_group(plan, kind, g);
    host_shapes[g] = typename G::Shape3{grp.m, grp.n, grp.k};
  }
  using Arguments = typename G::Gemm::Arguments;
  decltype(Arguments{}.epilogue.thread) fusion{};
  fusion.alpha = ns::sm90_alpha(plan, kind);
  fusion.beta = ns::sm90_beta(plan, kind);
  fusion.alpha_ptr = nullptr;
  fusion.beta_ptr = nullptr;
  const bool group_alpha = ns::sm90_per_group_alpha(plan, kind), group_beta = ns::sm90_per_group_beta(plan, kind);
  fusion.alpha_ptr_array = group_alpha ? arrays.alpha : nullptr;
  fusion.beta_ptr_array = group_beta ? arrays.beta : nullptr;
  fusion.dAlpha = {_0{}, _0{}, group_alpha ? 1 : 0};
  fusion.dBeta = {_0{}, _0{}, group_beta ? 1 : 0};
  const bool has_c = kind != ns::Sm90Gemm::kGram;  // the Gram has no β·C term: C is never read

  cutlass::KernelHardwareInfo hw;
  hw.device_id = device;
  hw.sm_count = sm_count;
  Arguments args{cutlass::gemm::GemmUniversalMode::kGrouped,
                 {groups, arrays.shapes, host_shapes.data()},
                 {arrays.A, arrays.dA, arrays.B, arrays.dB},
                 {fusion, has_c ? arrays.C : nullptr, arrays.dC, arrays.D, arrays.dD},
                 hw};
  typename G::Gemm gemm;
  const size_t arrays_bytes = G::arrays_bytes(groups);
  const size_t need = arrays_bytes + G::Gemm::get_workspace_size(args);
  if (need > workspace_bytes) return cudaErrorInvalidValue;  // the caller sized it for fewer groups
  if (gemm.can_implement(args) != cutlass::Status::kSuccess) return cudaErrorNotSupported;
  void* cutlass_ws = static_cast<char*>(workspace) + arrays_bytes;
  if (gemm.initialize(args, cutlass_ws, stream) != cutlass::Status::kSuccess) {
    e = cudaGetLastError();
    return e != cudaSuccess ? e : cudaErrorLaunchFailure;
  }
  if (gemm.run(stream) != cutlass::Status::kSuccess) {
    e = cudaGetLastError();
    return e != cudaSuccess ? e : cudaErrorLaunchFailure;
  }
  return cudaGetLastError();
}

}  // namespace sm90
}  // namespace cuda
}  // namespace muonext
