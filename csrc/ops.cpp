// The one place an op signature is written: TORCH_LIBRARY(muonext) schemas. Kernels register
// themselves per backend next to their code (TORCH_LIBRARY_IMPL in *_cpu.cpp / *_cuda.cu); fake
// kernels live in muonext/ops.py. pybind11 only carries non-tensor build information.
#include <torch/extension.h>
#include <torch/library.h>

#include "newton_schulz/ns_backend.h"
#include "skinny_gemm/skinny_gemm.h"

#ifndef MUONEXT_CUDA_ARCHS
#define MUONEXT_CUDA_ARCHS ""
#endif

TORCH_LIBRARY(muonext, m) {
  // Batched Newton–Schulz orthogonalisation; coefficients = [a0, b0, c0, a1, b1, c1, ...].
  m.def("newton_schulz(Tensor X, float[] coefficients, float eps) -> Tensor");
  // The same on a group of matrices/batches of different shapes (one dtype, one device): on CUDA all of
  // them share each step's GEMM launches.
  m.def("newton_schulz_grouped(Tensor[] Xs, float[] coefficients, float eps) -> Tensor[]");
  // Sum-form momentum on many tensors: bufs ← μ·bufs + grads; outs ← grads + μ·bufs (Nesterov) or
  // bufs, cast to each out's dtype (outs may be views into one batched Newton–Schulz input).
  m.def("muon_momentum_(Tensor(a!)[] bufs, Tensor[] grads, Tensor(b!)[] outs, float momentum, "
        "bool nesterov) -> ()");
  // params ← params·(1 − lr·wd) − lr·scale·updates, per tensor.
  m.def("muon_apply_(Tensor(a!)[] params, Tensor[] updates, float[] lrs, float[] weight_decays, "
        "float[] scales) -> ()");
  // Element ranges [offset, offset + length) of many tensors into one flat buffer of `dtype`, and back.
  m.def("pack(Tensor[] tensors, int[] offsets, int[] lengths, ScalarType dtype) -> Tensor");
  m.def("unpack_(Tensor flat, Tensor(a!)[] outs, int[] offsets, int[] lengths) -> ()");
  // y = x · weightᵀ (x (..., K), weight (N, K)) for few rows of x, e.g. a decode step (CPU; fp32 has an
  // AVX-512 kernel that beats MKL's sgemm up to ~64 rows, other dtypes go through at::matmul).
  m.def("skinny_linear(Tensor x, Tensor weight) -> Tensor");
  // The same per group: x (M, K) rows sorted by group, counts (G,) rows per group, weight (G, N, K);
  // rows of group g are multiplied by weight[g]ᵀ (routed MoE experts in a decode step).
  m.def("grouped_skinny_linear(Tensor x, Tensor weight, Tensor counts) -> Tensor");
  // One decode step of MLA attention against the latent cache with kv_b_proj absorbed (CPU, fp32,
  // AVX-512): q_nope (B, H, Qn), q_rope (B, H, R) rotated, cache (B, S, r + R) = [c | k_rope],
  // kv_b_weight (H·(Qn + V), r), mask (B, S) additive -> (B, H·V), the input of o_proj.
  m.def("mla_decode_attention(Tensor q_nope, Tensor q_rope, Tensor cache, Tensor kv_b_weight, Tensor mask, "
        "float scale) -> Tensor");
  // x / sqrt(mean(x²) + eps) · weight over the last dimension (CPU, fp32, AVX-512).
  m.def("rms_norm_rows(Tensor x, Tensor weight, float eps) -> Tensor");
  // (logsumexp, first argmax) of each row of (B, V) logits in two passes (CPU, fp32, AVX-512).
  m.def("logsumexp_argmax(Tensor logits) -> (Tensor, Tensor)");
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, module) {
  module.def("ns_backend", &muonext::ns_backend_name, "the CUDA Newton–Schulz backend: auto, sm80 or sm90");
  module.def("set_ns_backend", &muonext::set_ns_backend, "set the CUDA Newton–Schulz backend: auto, sm80 or sm90");
  module.def("cpu_fast_kernels", &muonext::skinny::cpu_supported,
             "whether this CPU runs the AVX-512 decode kernels (skinny GEMM, MLA decode attention)");
  module.def("build_info", [] {
    pybind11::dict info;
#ifdef MUONEXT_WITH_CUDA
    info["cuda"] = true;
#else
    info["cuda"] = false;
#endif
    info["cuda_archs"] = std::string(MUONEXT_CUDA_ARCHS);
#ifdef MUONEXT_WITH_SM90A
    info["sm90_kernels"] = true;
#else
    info["sm90_kernels"] = false;
#endif
#ifdef MUONEXT_DEBUG
    info["debug"] = true;
#else
    info["debug"] = false;
#endif
    return info;
  });
}
