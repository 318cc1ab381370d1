// Argument checks of pack / unpack_ shared by the CPU and CUDA glue: validates the
// (offset, length) ranges and returns where each range starts in the flat buffer (+ the total).
#pragma once

#include <ATen/ATen.h>

#include <vector>

#include "common/dispatch.h"

namespace muonext {

inline std::vector<int64_t> pack_flat_starts(const char* op, at::TensorList ts, const char* ts_name,
                                             at::IntArrayRef offsets, at::IntArrayRef lengths) {
  check_list_length(ts_name, ts.size(), "offsets", offsets.size());
  check_list_length(ts_name, ts.size(), "lengths", lengths.size());
  std::vector<int64_t> starts;
  int64_t total = 0;
  for (size_t i = 0; i < ts.size(); ++i) {
    check_dense_real(ts[i], item_name(ts_name, i), ts[0].device());
    MX_CHECK_TYPE(is_kernel_dtype(ts[i].scalar_type()), op, ": ", item_name(ts_name, i),
                  " must be float32, float64 or bfloat16, got ", ts[i].scalar_type());
    MX_CHECK_VALUE(offsets[i] >= 0 && lengths[i] >= 0 && offsets[i] + lengths[i] <= ts[i].numel(), op,
                   ": the range offsets[", i, "]=", offsets[i], ", lengths[", i, "]=", lengths[i], " does not fit in ",
                   item_name(ts_name, i), " with ", ts[i].numel(), " elements");
    starts.push_back(total);
    total += lengths[i];
  }
  starts.push_back(total);
  return starts;
}

}  // namespace muonext
