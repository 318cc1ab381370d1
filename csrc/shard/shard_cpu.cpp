// CPU glue of pack/unpack_: many tensors (or element ranges of them, in row-major order) to one flat
// buffer of a chosen dtype and back, in one parallel loop. Bitwise equal to torch's own casts.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "common/chunks.h"
#include "common/dispatch.h"
#include "shard/pack.h"
#include "shard/pack_checks.h"

namespace muonext {
namespace {

constexpr int64_t kChunk = 1 << 16;

// Runs copy(i, begin, end) over chunks of every range, in parallel.
template <typename Copy>
void for_each_range_chunk(at::IntArrayRef lengths, Copy&& copy) {
  const auto chunks = make_chunks(std::vector<int64_t>(lengths.begin(), lengths.end()), kChunk);
  at::parallel_for(0, static_cast<int64_t>(chunks.size()), 1, [&](int64_t lo, int64_t hi) {
    for (int64_t c = lo; c < hi; ++c) copy(chunks[c].tensor, chunks[c].begin, chunks[c].end);
  });
}

at::Tensor pack_cpu(at::TensorList tensors, at::IntArrayRef offsets, at::IntArrayRef lengths, at::ScalarType dtype) {
  MX_CHECK_TYPE(is_kernel_dtype(dtype), "pack: dtype must be float32, float64 or bfloat16, got ", dtype);
  const auto starts = pack_flat_starts("pack", tensors, "tensors", offsets, lengths);
  const auto options = tensors.empty() ? at::TensorOptions(at::kCPU) : tensors[0].options();
  at::Tensor flat = at::empty({starts.back()}, options.dtype(dtype));
  std::vector<at::Tensor> src;
  for (const auto& t : tensors) src.push_back(t.contiguous());
  for_each_range_chunk(lengths, [&](int64_t i, int64_t b, int64_t e) {
    dispatch_storage(src[i].scalar_type(), item_name("tensors", i), [&](auto st) {
      dispatch_storage(dtype, "dtype", [&](auto dt) {
        cast_copy_span(data_as<decltype(st)>(src[i]) + offsets[i] + b, data_as<decltype(dt)>(flat) + starts[i] + b,
                       e - b);
      });
    });
  });
  return flat;
}

void unpack_cpu(const at::Tensor& flat, at::TensorList outs, at::IntArrayRef offsets, at::IntArrayRef lengths) {
  const auto starts = pack_flat_starts("unpack_", outs, "outs", offsets, lengths);
  MX_CHECK_VALUE(flat.dim() == 1 && flat.numel() == starts.back(), "unpack_: flat must be 1-D with ", starts.back(),
                 " elements (the sum of lengths), got shape ", flat.sizes());
  if (!outs.empty()) check_dense_real(flat, "flat", outs[0].device());
  MX_CHECK_TYPE(is_kernel_dtype(flat.scalar_type()), "unpack_: flat must be float32, float64 or bfloat16, got ",
                flat.scalar_type());
  const at::Tensor src = flat.contiguous();
  std::vector<at::Tensor> work = contiguous_targets(outs);
  for_each_range_chunk(lengths, [&](int64_t i, int64_t b, int64_t e) {
    dispatch_storage(src.scalar_type(), "flat", [&](auto st) {
      dispatch_storage(work[i].scalar_type(), item_name("outs", i), [&](auto dt) {
        cast_copy_span(data_as<decltype(st)>(src) + starts[i] + b, data_as<decltype(dt)>(work[i]) + offsets[i] + b,
                       e - b);
      });
    });
  });
  copy_back(outs, work);
}

}  // namespace

TORCH_LIBRARY_IMPL(muonext, CPU, m) {
  m.impl("pack", &pack_cpu);
  m.impl("unpack_", &unpack_cpu);
}

}  // namespace muonext
