// Argument checks of newton_schulz, shared by the CPU and CUDA glue.
#pragma once

#include <ATen/ATen.h>

#include <cmath>
#include <string>

#include "common/check.h"

namespace muonext {

// `op` and `name` make the messages name the caller's argument ("newton_schulz_grouped: Xs[2] ...").
inline void check_newton_schulz_matrix(const at::Tensor& X, const char* op = "newton_schulz",
                                       const std::string& name = "X") {
  MX_CHECK_VALUE(X.dim() == 2 || X.dim() == 3, op, ": ", name,
                 " must be 2-D (rows, cols) or 3-D (batch, rows, cols), got shape ", X.sizes());
  MX_CHECK_TYPE(X.layout() == at::kStrided, op, ": ", name, " must be a dense (strided) tensor, got ", X.layout());
  MX_CHECK_TYPE(X.scalar_type() == at::kFloat || X.scalar_type() == at::kBFloat16 || X.scalar_type() == at::kDouble,
                op, ": ", name, " must be float32, bfloat16 or float64, got ", X.scalar_type());
}

inline void check_newton_schulz_schedule(at::ArrayRef<double> coefficients, double eps,
                                         const char* op = "newton_schulz") {
  MX_CHECK_VALUE(!coefficients.empty() && coefficients.size() % 3 == 0, op,
                 ": coefficients must hold (a, b, c) for each step, a multiple of 3 numbers, got ",
                 coefficients.size());
  for (size_t i = 0; i < coefficients.size(); ++i) {
    MX_CHECK_VALUE(std::isfinite(coefficients[i]), op, ": coefficients[", i, "] must be finite, got ",
                   coefficients[i]);
  }
  MX_CHECK_VALUE(std::isfinite(eps) && eps >= 0, op, ": eps must be finite and >= 0, got ", eps);
}

inline void check_newton_schulz_args(const at::Tensor& X, at::ArrayRef<double> coefficients, double eps) {
  check_newton_schulz_matrix(X);
  check_newton_schulz_schedule(coefficients, eps);
}

// newton_schulz_grouped: every Xs[i] a valid matrix or batch, all of one dtype and on one device.
inline void check_newton_schulz_grouped_args(at::TensorList Xs, at::ArrayRef<double> coefficients, double eps) {
  constexpr const char* op = "newton_schulz_grouped";
  for (size_t i = 0; i < Xs.size(); ++i) {
    const std::string name = "Xs[" + std::to_string(i) + "]";
    check_newton_schulz_matrix(Xs[i], op, name);
    MX_CHECK_TYPE(Xs[i].scalar_type() == Xs[0].scalar_type(), op, ": ", name, " has dtype ", Xs[i].scalar_type(),
                  " but Xs[0] has ", Xs[0].scalar_type(), " (one dtype per group)");
    MX_CHECK_VALUE(Xs[i].device() == Xs[0].device(), op, ": ", name, " is on ", Xs[i].device(), " but Xs[0] is on ",
                   Xs[0].device());
  }
  check_newton_schulz_schedule(coefficients, eps, op);
}

}  // namespace muonext
