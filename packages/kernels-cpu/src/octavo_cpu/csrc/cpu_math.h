// Small helpers shared by the CPU kernels: a vectorizable exp, and dispatch over the
// floating types the kernels accept (float32, bfloat16, float16; float32 arithmetic inside).
#pragma once

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <cmath>
#include <cstdint>

namespace octavo_cpu {

// exp(x) for x <= 0 from x = n ln2 + r and a degree-6 polynomial: within 2 ulp of expf, and
// plain arithmetic the compiler vectorizes (expf itself stays a scalar call).
inline float exp_nonpositive(float x) {
  x = std::max(x, -87.0f);
  const float n = std::nearbyint(x * 1.44269504088896341f);
  const float r = x - n * 0.693145751953125f - n * 1.428606765330187e-06f;
  float p = 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float scale;
  static_assert(sizeof(scale) == sizeof(bits));
  __builtin_memcpy(&scale, &bits, sizeof(scale));
  return p * scale;
}

// Conversions to and from float that the compiler vectorizes (c10's bfloat16 rounding goes
// through a NaN branch that it does not); the same results: round to nearest even, NaN to
// the quiet NaN 0x7FC0.
inline float to_float(float v) { return v; }
inline float to_float(c10::Half v) { return static_cast<float>(v); }
inline float to_float(c10::BFloat16 v) {
  const uint32_t bits = static_cast<uint32_t>(v.x) << 16;
  float f;
  __builtin_memcpy(&f, &bits, sizeof(f));
  return f;
}

template <typename T>
inline T from_float(float v) {
  return static_cast<T>(v);
}

template <>
inline c10::BFloat16 from_float<c10::BFloat16>(float v) {
  uint32_t bits;
  __builtin_memcpy(&bits, &v, sizeof(bits));
  const uint32_t rounded = (bits + 0x7FFFu + ((bits >> 16) & 1u)) >> 16;
  return c10::BFloat16(static_cast<uint16_t>(v != v ? 0x7FC0u : rounded),
                       c10::BFloat16::from_bits());
}

// v rounded to T's precision, as a float (the identity for float).
template <typename T>
inline float rounded(float v) {
  return to_float(from_float<T>(v));
}

// Rows per parallel_for task: enough that a task holds about this many elements (about 30 us
// of SiLU on one Zen 3 core). Splitting 16 decode rows of SmolLM2's SiLU (49 K elements) over
// two threads saved 8 us at best but cost 0.2-1.4 ms at the median when another process held
// the other core (bench_layer_ops, load 5-9), so decode batches of a small model stay on the
// calling thread and prefill chunks split.
constexpr int64_t kMinElementsPerTask = 64 * 1024;

inline int64_t rows_per_task(int64_t row_elements) {
  return std::max<int64_t>(1, kMinElementsPerTask / std::max<int64_t>(row_elements, 1));
}

// Calls fn(T{}) with T the C++ type of dtype: float, c10::BFloat16 or c10::Half.
template <typename Fn>
void dispatch_float_types(at::ScalarType dtype, const char* op, Fn&& fn) {
  switch (dtype) {
    case at::kFloat:
      fn(float{});
      break;
    case at::kBFloat16:
      fn(c10::BFloat16{});
      break;
    case at::kHalf:
      fn(c10::Half{});
      break;
    default:
      TORCH_CHECK(false, op, " supports float32, bfloat16 and float16, not ", dtype);
  }
}

}  // namespace octavo_cpu
