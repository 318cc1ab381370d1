// Argument checks of muon_momentum_ / muon_apply_ shared by the CPU and CUDA glue.
#pragma once

#include <ATen/ATen.h>

#include "common/dispatch.h"

namespace muonext {

inline void check_update_pairs(const char* op, at::TensorList a, const char* a_name, at::TensorList b,
                               const char* b_name) {
  check_list_length(a_name, a.size(), b_name, b.size());
  if (a.empty()) return;
  const at::Device device = a[0].device();
  for (size_t i = 0; i < a.size(); ++i) {
    check_dense_real(a[i], item_name(a_name, i), device);
    check_dense_real(b[i], item_name(b_name, i), device);
    MX_CHECK_TYPE(is_kernel_dtype(a[i].scalar_type()), op, ": ", item_name(a_name, i),
                  " must be float32, float64 or bfloat16, got ", a[i].scalar_type());
    MX_CHECK_TYPE(is_kernel_dtype(b[i].scalar_type()), op, ": ", item_name(b_name, i),
                  " must be float32, float64 or bfloat16, got ", b[i].scalar_type());
    MX_CHECK_VALUE(a[i].sizes() == b[i].sizes(), op, ": ", item_name(b_name, i), " has shape ", b[i].sizes(), " but ",
                   item_name(a_name, i), " has shape ", a[i].sizes());
  }
}

}  // namespace muonext
