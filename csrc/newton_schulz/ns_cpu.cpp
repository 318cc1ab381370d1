// CPU Newton–Schulz (single batch and grouped): batched over matrices with ATen's batched GEMMs (oneDNN, parallel over the
// batch), in the input's dtype with fp32 accumulation. Works on the wide orientation (rows ≤ cols).
//   for each (a, b, c):  A = X·Xᵀ;  P = b·A + c·A·A;  X = a·X + P·X
#include <torch/library.h>

#include <utility>
#include <vector>

#include "newton_schulz/ns_checks.h"

namespace muonext {
namespace {

at::Tensor newton_schulz_cpu(const at::Tensor& X, at::ArrayRef<double> coefficients, double eps) {
  check_newton_schulz_args(X, coefficients, eps);
  if (X.numel() == 0) return at::zeros_like(X, at::MemoryFormat::Contiguous);

  const at::Tensor x3 = X.dim() == 2 ? X.unsqueeze(0) : X;  // (B, rows, cols)
  const bool tall = x3.size(1) > x3.size(2);
  const at::Tensor wide = tall ? x3.mT() : x3;               // (B, m, n), m ≤ n
  const auto acc = X.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;

  // Per-matrix Frobenius normalisation, accumulated and scaled in fp32, then rounded once.
  const at::Tensor norm = at::linalg_vector_norm(wide, 2, at::IntArrayRef{1, 2}, /*keepdim=*/true, acc);
  at::Tensor x = (wide.to(acc) / (norm + eps)).to(X.scalar_type()).contiguous();

  const int64_t batch = x.size(0), m = x.size(1);
  at::Tensor gram = at::empty({batch, m, m}, x.options());  // A = X·Xᵀ
  at::Tensor poly = at::empty_like(gram);                   // P = b·A + c·A·A
  at::Tensor next = at::empty_like(x);
  for (size_t s = 0; s < coefficients.size(); s += 3) {
    const double a = coefficients[s], b = coefficients[s + 1], c = coefficients[s + 2];
    at::bmm_out(gram, x, x.mT());
    at::baddbmm_out(poly, gram, gram, gram, /*beta=*/b, /*alpha=*/c);
    at::baddbmm_out(next, x, poly, x, /*beta=*/a, /*alpha=*/1.0);
    std::swap(x, next);
  }
  at::Tensor out = tall ? x.mT().contiguous() : x;
  return X.dim() == 2 ? out.squeeze(0) : out;
}

// On the CPU a group is its members in turn: each batched GEMM already uses every core.
std::vector<at::Tensor> newton_schulz_grouped_cpu(at::TensorList Xs, at::ArrayRef<double> coefficients, double eps) {
  check_newton_schulz_grouped_args(Xs, coefficients, eps);
  std::vector<at::Tensor> outs;
  outs.reserve(Xs.size());
  for (const at::Tensor& X : Xs) outs.push_back(newton_schulz_cpu(X, coefficients, eps));
  return outs;
}

}  // namespace

TORCH_LIBRARY_IMPL(muonext, CPU, m) {
  m.impl("newton_schulz", &newton_schulz_cpu);
  m.impl("newton_schulz_grouped", &newton_schulz_grouped_cpu);
}

}  // namespace muonext
