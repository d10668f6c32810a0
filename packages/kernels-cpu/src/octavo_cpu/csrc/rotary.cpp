// Rotary position embedding on the CPU.
//
// Op (namespace torch.ops.octavo_cpu; the library is defined in paged_attention.cpp):
//   rotary(x, cos, sin, is_neox_style) -> out
//       x [num_tokens, num_heads, head_size] (unit stride along head_size, any other strides:
//       the q|k columns of a fused qkv projection), cos and sin [num_tokens, rotary_dim / 2]
//       float32 -> out, a new contiguous [num_tokens, num_heads, head_size] tensor: the first
//       rotary_dim dims of each head rotated (the two halves with neox style, even/odd pairs
//       without), the rest copied, as octavo.layers.rotary.apply_rotary.
// Rounded exactly as the torch code rounds: cos and sin to x's dtype, each product, then the
// sum, and no fused multiply-add (fp-contract off below), so the result equals the torch
// code's bit for bit in every dtype (and HF's, as the torch code does).
#pragma GCC optimize("fp-contract=off")
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <cstdint>

#include "cpu_math.h"

namespace {

using octavo_cpu::dispatch_float_types;
using octavo_cpu::from_float;
using octavo_cpu::rounded;
using octavo_cpu::rows_per_task;
using octavo_cpu::to_float;

// (x1, x2) -> (x1 cos - x2 sin, x2 cos + x1 sin), rounded like the torch code in T.
template <typename T>
inline void rotate(T& out1, T& out2, T in1, T in2, float cos_value, float sin_value) {
  const float x1 = to_float(in1), x2 = to_float(in2);
  const float c = rounded<T>(cos_value), s = rounded<T>(sin_value);
  out1 = from_float<T>(rounded<T>(x1 * c) - rounded<T>(x2 * s));
  out2 = from_float<T>(rounded<T>(x2 * c) + rounded<T>(x1 * s));
}

template <typename T>
inline void rotate_neox(T* out, const T* x, const float* c, const float* s, int64_t half) {
#pragma omp simd
  for (int64_t i = 0; i < half; ++i) rotate(out[i], out[i + half], x[i], x[i + half], c[i], s[i]);
}

template <typename T>
inline void rotate_pairs(T* out, const T* x, const float* c, const float* s, int64_t half) {
#pragma omp simd
  for (int64_t i = 0; i < half; ++i)
    rotate(out[2 * i], out[2 * i + 1], x[2 * i], x[2 * i + 1], c[i], s[i]);
}

at::Tensor rotary(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin,
                  bool is_neox_style) {
  TORCH_CHECK(x.device().is_cpu() && x.dim() == 3,
              "rotary: x must be a CPU tensor [num_tokens, num_heads, head_size], got ",
              x.sizes());
  const int64_t tokens = x.size(0), heads = x.size(1), head_size = x.size(2);
  TORCH_CHECK(cos.dim() == 2 && cos.sizes() == sin.sizes() && cos.size(0) == tokens &&
                  cos.scalar_type() == at::kFloat && sin.scalar_type() == at::kFloat,
              "rotary: cos and sin must be float32 [", tokens, ", rotary_dim / 2], got ",
              cos.sizes(), " ", cos.scalar_type(), " and ", sin.sizes(), " ",
              sin.scalar_type());
  const int64_t half = cos.size(1);
  TORCH_CHECK(2 * half <= head_size, "rotary: rotary_dim ", 2 * half, " exceeds head_size ",
              head_size);
  const at::Tensor in = x.stride(2) == 1 ? x : x.contiguous();
  const at::Tensor c = cos.contiguous(), s = sin.contiguous();
  at::Tensor out = at::empty({tokens, heads, head_size}, x.options());
  const int64_t token_stride = in.stride(0), head_stride = in.stride(1);
  dispatch_float_types(x.scalar_type(), "rotary", [&](auto tag) {
    using T = decltype(tag);
    const T* src = in.data_ptr<T>();
    T* dst = out.data_ptr<T>();
    const float* cp = c.data_ptr<float>();
    const float* sp = s.data_ptr<float>();
    // one task item: a token's heads
    at::parallel_for(0, tokens, rows_per_task(heads * head_size), [&](int64_t begin, int64_t end) {
      for (int64_t t = begin; t < end; ++t) {
        const float* ct = cp + t * half;
        const float* st = sp + t * half;
        for (int64_t h = 0; h < heads; ++h) {
          const T* xh = src + t * token_stride + h * head_stride;
          T* oh = dst + (t * heads + h) * head_size;
          if (is_neox_style)
            rotate_neox(oh, xh, ct, st, half);
          else
            rotate_pairs(oh, xh, ct, st, half);
          for (int64_t i = 2 * half; i < head_size; ++i) oh[i] = xh[i];
        }
      }
    });
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(octavo_cpu, m) {
  m.def("rotary(Tensor x, Tensor cos, Tensor sin, bool is_neox_style) -> Tensor");
}

TORCH_LIBRARY_IMPL(octavo_cpu, CPU, m) { m.impl("rotary", &rotary); }
