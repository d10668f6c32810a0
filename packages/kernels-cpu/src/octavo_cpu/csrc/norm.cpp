// RMSNorm, alone and fused with the residual add before it, on the CPU.
//
// Ops (namespace torch.ops.octavo_cpu; the library is defined in paged_attention.cpp):
//   rms_norm(x, weight, eps) -> out
//       x [..., hidden] (unit stride along hidden, any row stride), weight [hidden] of x's
//       dtype -> out, a new contiguous tensor of x's shape:
//       weight * dtype(x / sqrt(mean(x^2) + eps)), as octavo.layers.norm.rms_norm.
//   fused_add_rms_norm(x, residual, weight, eps) -> (out, sum)
//       sum = dtype(x + residual) and out = rms_norm(sum), both new tensors; the inputs are
//       not modified (RMSNorm.forward(x, residual)).
// float32 arithmetic for every dtype, rounded to the dtype where the torch code rounds it
// (the normalized row before the scale, the product, the sum). Rows are split over ATen's
// threads when there are enough of them (see rows_per_task).
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include <cmath>
#include <cstdint>
#include <tuple>

#include "cpu_math.h"

namespace {

using octavo_cpu::dispatch_float_types;
using octavo_cpu::from_float;
using octavo_cpu::rounded;
using octavo_cpu::rows_per_task;
using octavo_cpu::to_float;

// x viewed as rows of `hidden` elements: [rows, hidden] with unit stride along hidden.
struct Rows {
  at::Tensor tensor;
  int64_t rows;
  int64_t stride;
};

Rows as_rows(const at::Tensor& x, const char* op) {
  TORCH_CHECK(x.device().is_cpu() && x.dim() >= 1, op, ": x must be a CPU tensor [..., hidden]");
  const int64_t hidden = x.size(-1);
  if (x.dim() == 2 && (x.stride(1) == 1 || hidden == 1)) return {x, x.size(0), x.stride(0)};
  at::Tensor flat = x.contiguous().reshape({-1, hidden});
  return {flat, flat.size(0), hidden};
}

void check_weight(const at::Tensor& x, const at::Tensor& weight, const char* op) {
  TORCH_CHECK(weight.dim() == 1 && weight.size(0) == x.size(-1), op, ": weight must be [",
              x.size(-1), "], got ", weight.sizes());
  TORCH_CHECK(weight.scalar_type() == x.scalar_type(), op, ": weight dtype ",
              weight.scalar_type(), " differs from x dtype ", x.scalar_type());
}

// 1 / sqrt(mean(row^2) + eps), the row read as float.
template <typename T>
inline float inverse_rms(const T* row, int64_t hidden, float eps) {
  float squares = 0.0f;
#pragma omp simd reduction(+ : squares)
  for (int64_t i = 0; i < hidden; ++i) {
    const float v = to_float(row[i]);
    squares += v * v;
  }
  return 1.0f / std::sqrt(squares / static_cast<float>(hidden) + eps);
}

// out = weight * T(row * scale)
template <typename T>
inline void scale_row(T* out, const T* row, const T* weight, int64_t hidden, float scale) {
#pragma omp simd
  for (int64_t i = 0; i < hidden; ++i) {
    const float normalized = rounded<T>(to_float(row[i]) * scale);
    out[i] = from_float<T>(to_float(weight[i]) * normalized);
  }
}

at::Tensor rms_norm(const at::Tensor& x, const at::Tensor& weight, double eps) {
  check_weight(x, weight, "rms_norm");
  const Rows in = as_rows(x, "rms_norm");
  const int64_t hidden = x.size(-1);
  at::Tensor out = at::empty(x.sizes(), x.options());  // contiguous
  const at::Tensor w = weight.contiguous();
  dispatch_float_types(x.scalar_type(), "rms_norm", [&](auto tag) {
    using T = decltype(tag);
    const T* src = in.tensor.data_ptr<T>();
    const T* wp = w.data_ptr<T>();
    T* dst = out.data_ptr<T>();
    at::parallel_for(0, in.rows, rows_per_task(hidden), [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        const T* row = src + r * in.stride;
        scale_row(dst + r * hidden, row, wp, hidden,
                  inverse_rms(row, hidden, static_cast<float>(eps)));
      }
    });
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> fused_add_rms_norm(const at::Tensor& x,
                                                      const at::Tensor& residual,
                                                      const at::Tensor& weight, double eps) {
  check_weight(x, weight, "fused_add_rms_norm");
  TORCH_CHECK(residual.sizes() == x.sizes() && residual.scalar_type() == x.scalar_type(),
              "fused_add_rms_norm: residual must match x (", x.sizes(), " ", x.scalar_type(),
              "), got ", residual.sizes(), " ", residual.scalar_type());
  const Rows a = as_rows(x, "fused_add_rms_norm");
  const Rows b = as_rows(residual, "fused_add_rms_norm");
  const int64_t hidden = x.size(-1);
  at::Tensor out = at::empty(x.sizes(), x.options());
  at::Tensor sum = at::empty(x.sizes(), x.options());
  const at::Tensor w = weight.contiguous();
  dispatch_float_types(x.scalar_type(), "fused_add_rms_norm", [&](auto tag) {
    using T = decltype(tag);
    const T* xp = a.tensor.data_ptr<T>();
    const T* rp = b.tensor.data_ptr<T>();
    const T* wp = w.data_ptr<T>();
    T* out_p = out.data_ptr<T>();
    T* sum_p = sum.data_ptr<T>();
    at::parallel_for(0, a.rows, rows_per_task(hidden), [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        const T* xr = xp + r * a.stride;
        const T* rr = rp + r * b.stride;
        T* sr = sum_p + r * hidden;
#pragma omp simd
        for (int64_t i = 0; i < hidden; ++i)
          sr[i] = from_float<T>(to_float(xr[i]) + to_float(rr[i]));
        scale_row(out_p + r * hidden, sr, wp, hidden,
                  inverse_rms(sr, hidden, static_cast<float>(eps)));
      }
    });
  });
  return {out, sum};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(octavo_cpu, m) {
  m.def("rms_norm(Tensor x, Tensor weight, float eps) -> Tensor");
  m.def("fused_add_rms_norm(Tensor x, Tensor residual, Tensor weight, float eps) "
        "-> (Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(octavo_cpu, CPU, m) {
  m.impl("rms_norm", &rms_norm);
  m.impl("fused_add_rms_norm", &fused_add_rms_norm);
}
