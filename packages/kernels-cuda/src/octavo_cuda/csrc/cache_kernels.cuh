// reshape_and_cache: scatter each new token's K/V row into its slot of the paged cache.
//
// The copy is dtype-agnostic: rows are moved in units U of 16, 8, 4 or 2 bytes, the widest
// that divides every pointer, stride and row length involved.
#pragma once

#include "compat.cuh"
#include "dtypes.cuh"
#include "kernels.h"

namespace octavo {

constexpr int kCacheThreads = 128;

// One thread block per token; all offsets and strides are in units U.
template <typename U>
__global__ void __launch_bounds__(kCacheThreads)
reshape_and_cache_kernel(const U* __restrict__ key,     // [num_tokens, row_units] (strided)
                         const U* __restrict__ value,
                         U* __restrict__ key_cache,     // [num_blocks, block_size, row_units]
                         U* __restrict__ value_cache,
                         const int64_t* __restrict__ slot_mapping,  // [num_tokens]
                         int64_t key_token_stride, int64_t value_token_stride,
                         int64_t cache_block_stride, int64_t cache_token_stride,
                         int64_t num_slots, int block_size, int row_units) {
  const int64_t token = blockIdx.x;
  const int64_t slot = load_global(slot_mapping + token);
  if (slot < 0 || slot >= num_slots) return;  // padding token (uniform over the block)
  const int64_t dst = (slot / block_size) * cache_block_stride +
                      (slot % block_size) * cache_token_stride;
  const U* k_src = key + token * key_token_stride;
  const U* v_src = value + token * value_token_stride;
  for (int i = threadIdx.x; i < row_units; i += blockDim.x) {
    store_global(key_cache + dst + i, load_global(k_src + i));
    store_global(value_cache + dst + i, load_global(v_src + i));
  }
}

// A 2-byte copy unit (uint16_t lacks the vector-type alignment we rely on elsewhere).
struct alignas(2) CopyUnit2 {
  uint16_t bits;
};

namespace detail {

inline bool divides(int64_t unit, int64_t x) { return x % unit == 0; }

inline bool unit_fits(const ReshapeAndCacheArgs& a, int64_t unit) {
  const int64_t esize = dtype_size(a.dtype);
  const uintptr_t ptr_bits = reinterpret_cast<uintptr_t>(a.key) |
                             reinterpret_cast<uintptr_t>(a.value) |
                             reinterpret_cast<uintptr_t>(a.key_cache) |
                             reinterpret_cast<uintptr_t>(a.value_cache);
  return divides(unit, static_cast<int64_t>(ptr_bits % 16)) &&
         divides(unit, a.row_elems * esize) && divides(unit, a.key_token_stride * esize) &&
         divides(unit, a.value_token_stride * esize) &&
         divides(unit, a.cache_block_stride * esize) &&
         divides(unit, a.cache_token_stride * esize);
}

template <typename U>
const char* launch_cache_copy(const ReshapeAndCacheArgs& a, Stream stream) {
  const int64_t esize = dtype_size(a.dtype);
  const int64_t per_unit = static_cast<int64_t>(sizeof(U)) / esize;  // elements per unit
  const int row_units = static_cast<int>(a.row_elems / per_unit);
  const int threads = row_units < kCacheThreads ? ((row_units + 31) / 32) * 32 : kCacheThreads;
  oct_launch(&reshape_and_cache_kernel<U>, dim3(a.num_tokens), dim3(threads), stream,
             static_cast<const U*>(a.key), static_cast<const U*>(a.value),
             static_cast<U*>(a.key_cache), static_cast<U*>(a.value_cache), a.slot_mapping,
             a.key_token_stride / per_unit, a.value_token_stride / per_unit,
             a.cache_block_stride / per_unit, a.cache_token_stride / per_unit, a.num_slots,
             a.block_size, row_units);
  return oct_last_error();
}

}  // namespace detail

inline const char* reshape_and_cache_impl(const ReshapeAndCacheArgs& a, Stream stream) {
  if (a.num_tokens <= 0 || a.row_elems <= 0) return nullptr;
  if (a.block_size <= 0) return "reshape_and_cache: block_size must be positive";
  if (detail::unit_fits(a, 16)) return detail::launch_cache_copy<uint4>(a, stream);
  if (detail::unit_fits(a, 8)) return detail::launch_cache_copy<uint2>(a, stream);
  if (detail::unit_fits(a, 4)) return detail::launch_cache_copy<uint32_t>(a, stream);
  if (detail::unit_fits(a, 2)) return detail::launch_cache_copy<CopyUnit2>(a, stream);
  return "reshape_and_cache: tensors are not aligned to their element size";
}

}  // namespace octavo
