// Element types, float conversions and 16-byte vector loads for the kernels.
#pragma once

#include "compat.cuh"

namespace octavo {

__device__ __forceinline__ float to_float(float x) { return x; }
__device__ __forceinline__ float to_float(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }

template <typename T>
__device__ __forceinline__ T from_float(float x);
template <>
__device__ __forceinline__ float from_float<float>(float x) { return x; }
template <>
__device__ __forceinline__ __half from_float<__half>(float x) { return __float2half_rn(x); }
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float x) {
  return __float2bfloat16_rn(x);
}

// Elements of T in one 16-byte vector.
template <typename T>
struct Vec16 {
  static constexpr int kSize = 16 / static_cast<int>(sizeof(T));
};

// Loads 16 bytes (Vec16<T>::kSize elements, 16-byte aligned) from global memory as floats.
template <typename T>
__device__ __forceinline__ void load_vec16(const T* __restrict__ src, float* dst) {
  constexpr int N = Vec16<T>::kSize;
  if (!OCT_VALID(src, 16)) {
#pragma unroll
    for (int i = 0; i < N; ++i) dst[i] = 0.f;
    return;
  }
  const uint4 raw = *reinterpret_cast<const uint4*>(src);
  const T* elems = reinterpret_cast<const T*>(&raw);
#pragma unroll
  for (int i = 0; i < N; ++i) dst[i] = to_float(elems[i]);
}

// 16 raw bytes from global memory, 16-byte aligned (zero when the simulator finds them out of
// bounds).
__device__ __forceinline__ uint4 load_raw16(const void* src) {
  if (!OCT_VALID(src, 16)) return make_uint4(0, 0, 0, 0);
  return *reinterpret_cast<const uint4*>(src);
}

// The Vec16<T>::kSize elements of a raw 16-byte vector, as floats.
template <typename T>
__device__ __forceinline__ void unpack16(const uint4& raw, float* dst) {
  const T* elems = reinterpret_cast<const T*>(&raw);
#pragma unroll
  for (int i = 0; i < Vec16<T>::kSize; ++i) dst[i] = to_float(elems[i]);
}

// Reads one element of global memory (zero when the simulator finds it out of bounds).
template <typename T>
__device__ __forceinline__ T load_global(const T* ptr) {
  if (!OCT_VALID(ptr, sizeof(T))) return T{};
  return *ptr;
}

// Writes one element of global memory (dropped when the simulator finds it out of bounds).
template <typename T>
__device__ __forceinline__ void store_global(T* ptr, T value) {
  if (!OCT_VALID(ptr, sizeof(T))) return;
  *ptr = value;
}

}  // namespace octavo
