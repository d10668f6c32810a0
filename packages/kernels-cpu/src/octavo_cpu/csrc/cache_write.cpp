// The KV-cache write on the CPU: one op for a step's new keys and values of one layer.
//
// Op (namespace torch.ops.octavo_cpu; the library is defined in paged_attention.cpp):
//   write_kv_cache(key, value, key_cache!, value_cache!, slot_mapping) -> ()
//       key, value [num_tokens, num_kv_heads, head_size] (any strides: columns of a fused
//       qkv projection are read in place) of the caches' dtype;
//       key_cache, value_cache [num_blocks, block_size, num_kv_heads, head_size] contiguous;
//       slot_mapping [num_tokens] int64: token t goes to row slot_mapping[t] of the caches
//       seen as [num_blocks * block_size, num_kv_heads, head_size]; negative slots are
//       skipped (padding), as octavo.attention.torch_backend.write_kv_cache.
#include <ATen/core/Tensor.h>
#include <torch/library.h>

#include <cstdint>
#include <cstring>

#include "cpu_math.h"

namespace {

// Copies token t's [heads, head_size] rows of src (strided) to the contiguous dst row.
inline void copy_token(char* dst, const char* src, int64_t heads, int64_t head_stride_bytes,
                       int64_t head_bytes) {
  if (head_stride_bytes == head_bytes) {
    std::memcpy(dst, src, heads * head_bytes);
    return;
  }
  for (int64_t h = 0; h < heads; ++h)
    std::memcpy(dst + h * head_bytes, src + h * head_stride_bytes, head_bytes);
}

void check_new_rows(const at::Tensor& rows, const at::Tensor& cache, const char* name) {
  TORCH_CHECK(rows.device().is_cpu() && rows.dim() == 3, "write_kv_cache: ", name,
              " must be a CPU tensor [num_tokens, num_kv_heads, head_size], got ", rows.sizes());
  TORCH_CHECK(cache.dim() == 4 && cache.is_contiguous() && cache.size(2) == rows.size(1) &&
                  cache.size(3) == rows.size(2) && cache.scalar_type() == rows.scalar_type(),
              "write_kv_cache: the ", name, " cache must be contiguous [num_blocks, block_size, ",
              rows.size(1), ", ", rows.size(2), "] of ", rows.scalar_type(), ", got ",
              cache.sizes(), " ", cache.scalar_type());
}

void write_kv_cache(const at::Tensor& new_key, const at::Tensor& new_value,
                    at::Tensor& key_cache, at::Tensor& value_cache,
                    const at::Tensor& slot_mapping) {
  check_new_rows(new_key, key_cache, "key");
  check_new_rows(new_value, value_cache, "value");
  const at::Tensor key = new_key.stride(2) == 1 ? new_key : new_key.contiguous();
  const at::Tensor value = new_value.stride(2) == 1 ? new_value : new_value.contiguous();
  const int64_t tokens = key.size(0);
  TORCH_CHECK(value.size(0) == tokens && slot_mapping.dim() == 1 &&
                  slot_mapping.size(0) == tokens && slot_mapping.scalar_type() == at::kLong,
              "write_kv_cache: slot_mapping must be int64 [", tokens, "], got ",
              slot_mapping.sizes(), " ", slot_mapping.scalar_type());
  TORCH_CHECK(key_cache.sizes() == value_cache.sizes(),
              "write_kv_cache: key and value caches differ in shape");
  const at::Tensor slots = slot_mapping.contiguous();
  const int64_t* slot = slots.data_ptr<int64_t>();
  const int64_t num_slots = key_cache.size(0) * key_cache.size(1);
  for (int64_t t = 0; t < tokens; ++t)
    TORCH_CHECK(slot[t] < num_slots, "write_kv_cache: slot ", slot[t], " of token ", t,
                " is outside the cache (", num_slots, " slots)");
  const int64_t heads = key.size(1);
  const int64_t item = key.element_size();
  const int64_t head_bytes = key.size(2) * item;
  const int64_t slot_bytes = heads * head_bytes;
  char* kc = static_cast<char*>(key_cache.data_ptr());
  char* vc = static_cast<char*>(value_cache.data_ptr());
  const char* kp = static_cast<const char*>(key.data_ptr());
  const char* vp = static_cast<const char*>(value.data_ptr());
  const int64_t k_token = key.stride(0) * item, k_head = key.stride(1) * item;
  const int64_t v_token = value.stride(0) * item, v_head = value.stride(1) * item;
  at::parallel_for(0, tokens, octavo_cpu::rows_per_task(2 * slot_bytes / item),
                   [&](int64_t begin, int64_t end) {
                     for (int64_t t = begin; t < end; ++t) {
                       if (slot[t] < 0) continue;
                       copy_token(kc + slot[t] * slot_bytes, kp + t * k_token, heads, k_head,
                                  head_bytes);
                       copy_token(vc + slot[t] * slot_bytes, vp + t * v_token, heads, v_head,
                                  head_bytes);
                     }
                   });
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(octavo_cpu, m) {
  m.def("write_kv_cache(Tensor key, Tensor value, Tensor(a!) key_cache, "
        "Tensor(b!) value_cache, Tensor slot_mapping) -> ()");
}

TORCH_LIBRARY_IMPL(octavo_cpu, CPU, m) { m.impl("write_kv_cache", &write_kv_cache); }
