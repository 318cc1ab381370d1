// CPU glue of the fused Muon update ops: checks, contiguity, dtype dispatch, and one parallel loop
// over chunks of all tensors together (one call for the whole parameter list).
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>

#include "common/chunks.h"
#include "common/dispatch.h"
#include "muon_update/muon_update.h"
#include "muon_update/update_checks.h"

namespace muonext {
namespace {

constexpr int64_t kChunk = 1 << 15;

std::vector<int64_t> numels_of(const std::vector<at::Tensor>& ts) {
  std::vector<int64_t> n;
  n.reserve(ts.size());
  for (const auto& t : ts) n.push_back(t.numel());
  return n;
}

void muon_momentum_cpu(at::TensorList bufs, at::TensorList grads, at::TensorList outs, double momentum,
                       bool nesterov) {
  check_update_pairs("muon_momentum_", bufs, "bufs", grads, "grads");
  check_update_pairs("muon_momentum_", bufs, "bufs", outs, "outs");
  MX_CHECK_VALUE(std::isfinite(momentum), "muon_momentum_: momentum must be finite, got ", momentum);
  std::vector<at::Tensor> work = contiguous_targets(bufs);
  std::vector<at::Tensor> out_work = contiguous_targets(outs);
  std::vector<at::Tensor> grad_c;
  for (const auto& g : grads) grad_c.push_back(g.contiguous());
  const auto chunks = make_chunks(numels_of(work), kChunk);
  const MomentumArgs args{momentum, nesterov};
  at::parallel_for(0, static_cast<int64_t>(chunks.size()), 1, [&](int64_t lo, int64_t hi) {
    for (int64_t c = lo; c < hi; ++c) {
      const Chunk& ch = chunks[c];
      const at::Tensor &b = work[ch.tensor], &g = grad_c[ch.tensor], &o = out_work[ch.tensor];
      dispatch_storage(b.scalar_type(), item_name("bufs", ch.tensor), [&](auto bt) {
        dispatch_storage(g.scalar_type(), item_name("grads", ch.tensor), [&](auto gt) {
          dispatch_storage(o.scalar_type(), item_name("outs", ch.tensor), [&](auto ot) {
            momentum_span(data_as<decltype(bt)>(b), data_as<decltype(gt)>(g), data_as<decltype(ot)>(o), ch.begin,
                          ch.end, args);
          });
        });
      });
    }
  });
  copy_back(bufs, work);
  copy_back(outs, out_work);
}

void muon_apply_cpu(at::TensorList params, at::TensorList updates, at::ArrayRef<double> lrs,
                    at::ArrayRef<double> weight_decays, at::ArrayRef<double> scales) {
  check_update_pairs("muon_apply_", params, "params", updates, "updates");
  check_list_length("params", params.size(), "lrs", lrs.size());
  check_list_length("params", params.size(), "weight_decays", weight_decays.size());
  check_list_length("params", params.size(), "scales", scales.size());
  std::vector<ApplyArgs> args;
  for (size_t i = 0; i < params.size(); ++i) {
    MX_CHECK_VALUE(std::isfinite(lrs[i]) && std::isfinite(weight_decays[i]) && std::isfinite(scales[i]),
                   "muon_apply_: lrs[", i, "], weight_decays[", i, "] and scales[", i, "] must be finite, got ",
                   lrs[i], ", ", weight_decays[i], ", ", scales[i]);
    args.push_back({1.0 - lrs[i] * weight_decays[i], lrs[i] * scales[i]});
  }
  std::vector<at::Tensor> work = contiguous_targets(params);
  std::vector<at::Tensor> upd_c;
  for (const auto& u : updates) upd_c.push_back(u.contiguous());
  const auto chunks = make_chunks(numels_of(work), kChunk);
  at::parallel_for(0, static_cast<int64_t>(chunks.size()), 1, [&](int64_t lo, int64_t hi) {
    for (int64_t c = lo; c < hi; ++c) {
      const Chunk& ch = chunks[c];
      const at::Tensor &p = work[ch.tensor], &u = upd_c[ch.tensor];
      dispatch_storage(p.scalar_type(), item_name("params", ch.tensor), [&](auto pt) {
        dispatch_storage(u.scalar_type(), item_name("updates", ch.tensor), [&](auto ut) {
          apply_span(data_as<decltype(pt)>(p), data_as<decltype(ut)>(u), ch.begin, ch.end, args[ch.tensor]);
        });
      });
    }
  });
  copy_back(params, work);
}

}  // namespace

TORCH_LIBRARY_IMPL(muonext, CPU, m) {
  m.impl("muon_momentum_", &muon_momentum_cpu);
  m.impl("muon_apply_", &muon_apply_cpu);
}

}  // namespace muonext
