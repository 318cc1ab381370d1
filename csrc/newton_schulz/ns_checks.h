// Argument checks of newton_schulz, shared by the CPU and CUDA glue.
#pragma once

#include <ATen/ATen.h>

#include <cmath>

#include "common/check.h"

namespace muonext {

inline void check_newton_schulz_args(const at::Tensor& X, at::ArrayRef<double> coefficients, double eps) {
  MX_CHECK_VALUE(X.dim() == 2 || X.dim() == 3,
                 "newton_schulz: X must be 2-D (rows, cols) or 3-D (batch, rows, cols), got shape ", X.sizes());
  MX_CHECK_TYPE(X.layout() == at::kStrided, "newton_schulz: X must be a dense (strided) tensor, got ", X.layout());
  MX_CHECK_TYPE(X.scalar_type() == at::kFloat || X.scalar_type() == at::kBFloat16 || X.scalar_type() == at::kDouble,
                "newton_schulz: X must be float32, bfloat16 or float64, got ", X.scalar_type());
  MX_CHECK_VALUE(!coefficients.empty() && coefficients.size() % 3 == 0,
                 "newton_schulz: coefficients must hold (a, b, c) for each step, a multiple of 3 numbers, got ",
                 coefficients.size());
  for (size_t i = 0; i < coefficients.size(); ++i) {
    MX_CHECK_VALUE(std::isfinite(coefficients[i]), "newton_schulz: coefficients[", i, "] must be finite, got ",
                   coefficients[i]);
  }
  MX_CHECK_VALUE(std::isfinite(eps) && eps >= 0, "newton_schulz: eps must be finite and >= 0, got ", eps);
}

}  // namespace muonext
