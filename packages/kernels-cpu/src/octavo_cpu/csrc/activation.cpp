// Gated SiLU on the CPU: silu(gate) * up over a fused [gate | up] projection.
//
// Op (namespace torch.ops.octavo_cpu; the library is defined in paged_attention.cpp):
//   silu_and_mul(x) -> out
//       x [..., 2 * d] (unit stride along the last dim, any row stride) -> out [..., d], a new
//       contiguous tensor: silu(x[..., :d]) * x[..., d:], as
//       octavo.layers.activation.silu_and_mul.
// float32 arithmetic, one rounding to x's dtype per output (torch rounds silu(gate) to the
// dtype before the product, so bfloat16 results differ from it by up to an ulp).
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <cmath>
#include <cstdint>
#include <vector>

#include "cpu_math.h"

namespace {

using octavo_cpu::dispatch_float_types;
using octavo_cpu::exp_nonpositive;
using octavo_cpu::from_float;
using octavo_cpu::rows_per_task;
using octavo_cpu::to_float;

// silu(g) = g * sigmoid(g); sigmoid from e = exp(-|g|) <= 1, so it never overflows.
inline float silu(float g) {
  const float e = exp_nonpositive(-std::fabs(g));
  return g * (g >= 0.0f ? 1.0f : e) / (1.0f + e);
}

at::Tensor silu_and_mul(const at::Tensor& x) {
  TORCH_CHECK(x.device().is_cpu() && x.dim() >= 1 && x.size(-1) % 2 == 0,
              "silu_and_mul: x must be a CPU tensor [..., 2 * d], got ", x.sizes());
  const int64_t d = x.size(-1) / 2;
  const at::Tensor in = x.dim() == 2 && x.stride(1) == 1 ? x : x.contiguous().reshape({-1, 2 * d});
  const int64_t rows = in.size(0), row_stride = in.stride(0);
  std::vector<int64_t> out_shape(x.sizes().begin(), x.sizes().end());
  out_shape.back() = d;
  at::Tensor out = at::empty(out_shape, x.options());
  dispatch_float_types(x.scalar_type(), "silu_and_mul", [&](auto tag) {
    using T = decltype(tag);
    const T* src = in.data_ptr<T>();
    T* dst = out.data_ptr<T>();
    at::parallel_for(0, rows, rows_per_task(2 * d), [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        const T* gate = src + r * row_stride;
        const T* up = gate + d;
        T* o = dst + r * d;
#pragma omp simd
        for (int64_t i = 0; i < d; ++i)
          o[i] = from_float<T>(silu(to_float(gate[i])) * to_float(up[i]));
      }
    });
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(octavo_cpu, m) { m.def("silu_and_mul(Tensor x) -> Tensor"); }

TORCH_LIBRARY_IMPL(octavo_cpu, CPU, m) { m.impl("silu_and_mul", &silu_and_mul); }
