// CPU glue of skinny_linear / grouped_skinny_linear: checks, the fp32 AVX-512 path (skinny_gemm.h)
// parallel over passes of up to 32 rows × column chunks, and at::matmul for everything else (other
// dtypes, CPUs without AVX-512), so the ops are correct everywhere and fast where it matters.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <vector>

#include "common/check.h"
#include "skinny_gemm/skinny_gemm.h"

namespace muonext {
namespace {

constexpr int64_t kColsPerTask = 64;  // columns of y per parallel task (8 register tiles)

// One pass over a weight: rows [row, row + rows) of x (≤ 32) times W (N, K)ᵀ; xT null for the
// dot-product kernel (≤ kDotRows rows, read straight from x).
struct Pass {
  int64_t row, rows;
  const float* W;
  float* xT = nullptr;
};

bool use_dot(int64_t rows) { return rows <= skinny::kDotRows; }

void run_passes(const float* x, int64_t K, int64_t N, std::vector<Pass>& passes, float* y) {
  if (passes.empty() || N == 0) return;
  std::vector<std::vector<float>> buffers(passes.size());
  for (size_t i = 0; i < passes.size(); ++i) {
    if (use_dot(passes[i].rows)) continue;
    buffers[i].resize(skinny::packed_floats(passes[i].rows, K));
    passes[i].xT = skinny::pack_rows(x + passes[i].row * K, K, passes[i].rows, K, buffers[i].data());
  }
  const int64_t chunks = (N + kColsPerTask - 1) / kColsPerTask;
  at::parallel_for(0, static_cast<int64_t>(passes.size()) * chunks, 1, [&](int64_t lo, int64_t hi) {
    for (int64_t t = lo; t < hi; ++t) {
      const Pass& p = passes[t / chunks];
      const int64_t n0 = (t % chunks) * kColsPerTask;
      const int64_t n1 = std::min(N, n0 + kColsPerTask);
      if (use_dot(p.rows))
        skinny::gemm_rows_dot(x + p.row * K, K, p.rows, p.W, N, K, n0, n1, y + p.row * N, N);
      else
        skinny::gemm_rows(p.xT, p.rows, p.W, N, K, n0, n1, y + p.row * N, N);
    }
  });
}

void add_passes(std::vector<Pass>& passes, int64_t row, int64_t rows, const float* W) {
  for (int64_t r = 0; r < rows; r += skinny::kMaxRows)
    passes.push_back({row + r, std::min(skinny::kMaxRows, rows - r), W});
}

bool fast_path(const at::Tensor& x) { return x.scalar_type() == at::kFloat && skinny::cpu_supported(); }

void check_operands(const char* op, const at::Tensor& x, const at::Tensor& weight, int64_t weight_dim) {
  MX_CHECK_VALUE(x.defined() && weight.defined(), op, ": x and weight must be defined");
  MX_CHECK_TYPE(x.is_floating_point(), op, ": x must be a floating tensor, got ", x.scalar_type());
  MX_CHECK_TYPE(weight.scalar_type() == x.scalar_type(), op, ": weight must have x's dtype ", x.scalar_type(),
                ", got ", weight.scalar_type());
  MX_CHECK_VALUE(weight.device() == x.device(), op, ": weight is on ", weight.device(), " but x is on ", x.device());
  MX_CHECK_VALUE(weight.dim() == weight_dim, op, ": weight must be ", weight_dim, "-D, got shape ", weight.sizes());
  MX_CHECK_VALUE(x.dim() >= 1 && x.size(-1) == weight.size(-1), op, ": x's last dimension must be weight's ",
                 weight.size(-1), " (in features), got x of shape ", x.sizes());
}

at::Tensor skinny_linear_cpu(const at::Tensor& x, const at::Tensor& weight) {
  check_operands("skinny_linear", x, weight, 2);
  if (!fast_path(x)) return at::matmul(x, weight.t());
  const int64_t K = weight.size(1), N = weight.size(0), M = x.numel() / std::max<int64_t>(K, 1);
  std::vector<int64_t> out_shape(x.sizes().begin(), x.sizes().end());
  out_shape.back() = N;
  if (K == 0) return at::zeros(out_shape, x.options());
  const at::Tensor xc = x.contiguous(), wc = weight.contiguous();
  at::Tensor y = at::empty(out_shape, x.options());
  std::vector<Pass> passes;
  add_passes(passes, 0, M, wc.data_ptr<float>());
  run_passes(xc.data_ptr<float>(), K, N, passes, y.data_ptr<float>());
  return y;
}

at::Tensor grouped_skinny_linear_cpu(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& counts) {
  check_operands("grouped_skinny_linear", x, weight, 3);
  MX_CHECK_VALUE(x.dim() == 2, "grouped_skinny_linear: x must be 2-D (rows sorted by group, in features), got shape ",
                 x.sizes());
  const int64_t G = weight.size(0), N = weight.size(1), K = weight.size(2), M = x.size(0);
  MX_CHECK_TYPE(!counts.is_floating_point() && !counts.is_complex() && counts.scalar_type() != at::kBool,
                "grouped_skinny_linear: counts must be an integer tensor, got ", counts.scalar_type());
  MX_CHECK_VALUE(counts.dim() == 1 && counts.size(0) == G, "grouped_skinny_linear: counts must have shape [", G,
                 "] (one per weight), got ", counts.sizes());
  const at::Tensor cnt = counts.to(at::kCPU, at::kLong).contiguous();
  const int64_t* c = cnt.data_ptr<int64_t>();
  int64_t total = 0;
  for (int64_t g = 0; g < G; ++g) {
    MX_CHECK_VALUE(c[g] >= 0, "grouped_skinny_linear: counts[", g, "] is negative: ", c[g]);
    total += c[g];
  }
  MX_CHECK_VALUE(total == M, "grouped_skinny_linear: counts sum to ", total, " but x has ", M, " rows");
  if (!fast_path(x)) {
    std::vector<at::Tensor> pieces;
    for (int64_t g = 0, row = 0; g < G; row += c[g], ++g)
      pieces.push_back(at::mm(x.narrow(0, row, c[g]), weight[g].t()));
    return G ? at::cat(pieces) : at::empty({0, N}, x.options());
  }
  if (K == 0) return at::zeros({M, N}, x.options());
  const at::Tensor xc = x.contiguous(), wc = weight.contiguous();
  at::Tensor y = at::empty({M, N}, x.options());
  std::vector<Pass> passes;
  for (int64_t g = 0, row = 0; g < G; row += c[g], ++g) add_passes(passes, row, c[g], wc.data_ptr<float>() + g * N * K);
  run_passes(xc.data_ptr<float>(), K, N, passes, y.data_ptr<float>());
  return y;
}

}  // namespace

TORCH_LIBRARY_IMPL(muonext, CPU, m) {
  m.impl("skinny_linear", &skinny_linear_cpu);
  m.impl("grouped_skinny_linear", &grouped_skinny_linear_cpu);
}

}  // namespace muonext
