// ATen side of the storage-type dispatch: maps a tensor's dtype to the torch-free storage type the
// kernels are written for (float, double, bf16_t) and checks lists of tensors. Glue code only.
#pragma once

#include <ATen/ATen.h>

#include <string>
#include <vector>

#include "common/bf16.h"
#include "common/check.h"

namespace muonext {

inline bool is_kernel_dtype(at::ScalarType t) {
  return t == at::kFloat || t == at::kDouble || t == at::kBFloat16;
}

// Calls fn(T{}) with T the storage type of `dtype`; `what` names the argument in the error.
template <typename Fn>
decltype(auto) dispatch_storage(at::ScalarType dtype, const std::string& what, Fn&& fn) {
  switch (dtype) {
    case at::kFloat: return fn(float{});
    case at::kDouble: return fn(double{});
    case at::kBFloat16: return fn(bf16_t{});
    default:
      MX_CHECK_TYPE(false, what, " must be float32, float64 or bfloat16, got ", dtype);
  }
  return fn(float{});  // unreachable
}

template <typename T>
T* data_as(const at::Tensor& t) {
  if constexpr (std::is_same_v<T, bf16_t>) {
    static_assert(sizeof(bf16_t) == sizeof(at::BFloat16));
    return reinterpret_cast<bf16_t*>(t.data_ptr<at::BFloat16>());
  } else {
    return t.data_ptr<T>();
  }
}

inline std::string item_name(const char* list, size_t i) { return std::string(list) + "[" + std::to_string(i) + "]"; }

// A dense, real, floating tensor on `device` (sparse and complex tensors are rejected by name).
inline void check_dense_real(const at::Tensor& t, const std::string& what, const at::Device& device) {
  MX_CHECK_VALUE(t.defined(), what, " is undefined");
  MX_CHECK_TYPE(t.layout() == at::kStrided, what, " must be a dense (strided) tensor, got layout ", t.layout());
  MX_CHECK_TYPE(!t.is_complex(), what, " must be real, got ", t.scalar_type());
  MX_CHECK_VALUE(t.device() == device, what, " is on ", t.device(), " but the other tensors are on ", device);
}

inline void check_list_length(const char* a, size_t na, const char* b, size_t nb) {
  MX_CHECK_VALUE(na == nb, a, " and ", b, " must have the same length, got ", na, " and ", nb);
}

// Mutated tensors the kernels write through raw pointers: contiguous stand-ins for strided ones,
// written back by copy_back() after the kernel ran.
inline std::vector<at::Tensor> contiguous_targets(at::TensorList ts) {
  std::vector<at::Tensor> out;
  out.reserve(ts.size());
  for (const auto& t : ts) out.push_back(t.contiguous());
  return out;
}

inline void copy_back(at::TensorList targets, const std::vector<at::Tensor>& work) {
  for (size_t i = 0; i < targets.size(); ++i) {
    if (!work[i].is_same(targets[i])) targets[i].copy_(work[i]);
  }
}

}  // namespace muonext
