// torch binding of the octavo_cuda kernels: validates tensors, then calls the raw launchers.
//
// Ops (namespace torch.ops.octavo_cuda), both in-place and returning nothing:
//   reshape_and_cache(key, value, key_cache!, value_cache!, slot_mapping)
//   paged_attention(out!, query, key_cache, value_cache, block_tables, seq_lens,
//                   query_start_loc, max_query_len, max_seq_len, scale, alibi_slopes?,
//                   sliding_window, logits_soft_cap, partition_size, tensor_cores)
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <optional>
#include <vector>

#include "kernels.h"

namespace {

using octavo::DType;

DType to_dtype(const at::Tensor& t, const char* what) {
  switch (t.scalar_type()) {
    case at::kFloat: return DType::kFloat32;
    case at::kHalf: return DType::kFloat16;
    case at::kBFloat16: return DType::kBFloat16;
    default: break;
  }
  TORCH_CHECK(false, what, " must be float32, float16 or bfloat16, got ", t.scalar_type());
  return DType::kFloat32;  // unreachable
}

void check_cuda(const at::Tensor& t, const at::Tensor& like, const char* what) {
  TORCH_CHECK(t.is_cuda(), what, " must be a CUDA tensor");
  TORCH_CHECK(t.device() == like.device(), what, " is on ", t.device(), ", expected ",
              like.device());
}

void check_aligned16(const at::Tensor& t, const char* what) {
  TORCH_CHECK(reinterpret_cast<uintptr_t>(t.data_ptr()) % 16 == 0, what,
              " must be 16-byte aligned");
}

// Checks a [num_blocks, block_size, num_kv_heads, head_size] cache with contiguous rows.
void check_cache(const at::Tensor& cache, const at::Tensor& like, const char* what) {
  check_cuda(cache, like, what);
  TORCH_CHECK(cache.dim() == 4, what, " must be [num_blocks, block_size, num_kv_heads, "
              "head_size], got ", cache.sizes());
  TORCH_CHECK(cache.stride(3) == 1 && cache.stride(2) == cache.size(3), what,
              " must have contiguous [num_kv_heads, head_size] rows");
}

void reshape_and_cache(const at::Tensor& key_in, const at::Tensor& value_in,
                       at::Tensor& key_cache, at::Tensor& value_cache,
                       const at::Tensor& slot_mapping) {
  check_cache(key_cache, key_cache, "key_cache");
  check_cache(value_cache, key_cache, "value_cache");
  TORCH_CHECK(key_cache.sizes() == value_cache.sizes() &&
              key_cache.strides() == value_cache.strides(),
              "key_cache and value_cache must have the same shape and strides");
  TORCH_CHECK(key_in.scalar_type() == key_cache.scalar_type() &&
              value_in.scalar_type() == key_cache.scalar_type() &&
              value_cache.scalar_type() == key_cache.scalar_type(),
              "key, value and the caches must share one dtype");
  check_cuda(key_in, key_cache, "key");
  check_cuda(value_in, key_cache, "value");
  check_cuda(slot_mapping, key_cache, "slot_mapping");
  TORCH_CHECK(slot_mapping.scalar_type() == at::kLong && slot_mapping.dim() == 1,
              "slot_mapping must be a 1-D int64 tensor");
  const int64_t num_kv_heads = key_cache.size(2);
  const int64_t head_size = key_cache.size(3);
  TORCH_CHECK(key_in.dim() == 3 && key_in.size(1) == num_kv_heads &&
              key_in.size(2) == head_size && value_in.sizes() == key_in.sizes(),
              "key and value must be [num_tokens, ", num_kv_heads, ", ", head_size, "], got ",
              key_in.sizes(), " and ", value_in.sizes());
  const int64_t num_tokens = std::min<int64_t>(key_in.size(0), slot_mapping.size(0));
  // A token's [num_kv_heads, head_size] row must be contiguous; copy otherwise.
  auto rows = [&](const at::Tensor& t) {
    return t.stride(2) == 1 && t.stride(1) == head_size ? t : t.contiguous();
  };
  const at::Tensor key = rows(key_in);
  const at::Tensor value = rows(value_in);
  const at::Tensor slots = slot_mapping.contiguous();
  if (num_tokens == 0) return;
  TORCH_CHECK(num_tokens < (int64_t(1) << 31), "too many tokens");

  const c10::cuda::CUDAGuard guard(key_cache.device());
  octavo::ReshapeAndCacheArgs a{};
  a.key = key.data_ptr();
  a.value = value.data_ptr();
  a.key_cache = key_cache.data_ptr();
  a.value_cache = value_cache.data_ptr();
  a.slot_mapping = slots.data_ptr<int64_t>();
  a.key_token_stride = key.stride(0);
  a.value_token_stride = value.stride(0);
  a.cache_block_stride = key_cache.stride(0);
  a.cache_token_stride = key_cache.stride(1);
  a.num_slots = key_cache.size(0) * key_cache.size(1);
  a.num_tokens = static_cast<int>(num_tokens);
  a.row_elems = static_cast<int>(num_kv_heads * head_size);
  a.block_size = static_cast<int>(key_cache.size(1));
  a.dtype = to_dtype(key_cache, "key_cache");
  const char* err = octavo::launch_reshape_and_cache(
      a, c10::cuda::getCurrentCUDAStream(key_cache.device().index()).stream());
  TORCH_CHECK(err == nullptr, "octavo_cuda reshape_and_cache: ", err);
}

void paged_attention(at::Tensor& out, const at::Tensor& query_in, const at::Tensor& key_cache,
                     const at::Tensor& value_cache, const at::Tensor& block_tables_in,
                     const at::Tensor& seq_lens_in, const at::Tensor& query_start_loc_in,
                     int64_t max_query_len, int64_t max_seq_len, double scale,
                     const std::optional<at::Tensor>& alibi_slopes, int64_t sliding_window,
                     double logits_soft_cap, int64_t partition_size, bool tensor_cores) {
  check_cuda(query_in, query_in, "query");
  check_cache(key_cache, query_in, "key_cache");
  check_cache(value_cache, query_in, "value_cache");
  TORCH_CHECK(key_cache.sizes() == value_cache.sizes() &&
              key_cache.strides() == value_cache.strides(),
              "key_cache and value_cache must have the same shape and strides");
  TORCH_CHECK(query_in.dim() == 3, "query must be [num_tokens, num_heads, head_size]");
  const int64_t num_tokens = query_in.size(0);
  const int64_t num_heads = query_in.size(1);
  const int64_t head_size = query_in.size(2);
  const int64_t num_kv_heads = key_cache.size(2);
  TORCH_CHECK(key_cache.size(3) == head_size, "cache head size ", key_cache.size(3),
              " != query head size ", head_size);
  TORCH_CHECK(octavo::paged_attention_supports_head_size(static_cast<int>(head_size)),
              "octavo_cuda paged_attention: unsupported head size ", head_size);
  TORCH_CHECK(num_kv_heads > 0 && num_heads % num_kv_heads == 0, "num_heads ", num_heads,
              " is not a multiple of num_kv_heads ", num_kv_heads);
  TORCH_CHECK(query_in.scalar_type() == key_cache.scalar_type() &&
              value_cache.scalar_type() == key_cache.scalar_type() &&
              out.scalar_type() == key_cache.scalar_type(),
              "query, out and the caches must share one dtype");
  check_cuda(out, query_in, "out");
  TORCH_CHECK(out.sizes() == query_in.sizes() && out.is_contiguous(),
              "out must be a contiguous tensor shaped like query");
  check_aligned16(out, "out");
  check_aligned16(key_cache, "key_cache");
  check_aligned16(value_cache, "value_cache");
  const int64_t esize = key_cache.element_size();
  TORCH_CHECK((key_cache.stride(0) * esize) % 16 == 0 && (key_cache.stride(1) * esize) % 16 == 0,
              "cache strides must be multiples of 16 bytes");
  for (const at::Tensor* t : {&block_tables_in, &seq_lens_in, &query_start_loc_in}) {
    check_cuda(*t, query_in, "attention metadata");
    TORCH_CHECK(t->scalar_type() == at::kInt, "block_tables, seq_lens and query_start_loc "
                "must be int32");
  }
  TORCH_CHECK(block_tables_in.dim() == 2, "block_tables must be [num_seqs, max_blocks]");
  const int64_t num_seqs = seq_lens_in.numel();
  TORCH_CHECK(seq_lens_in.dim() == 1 && block_tables_in.size(0) == num_seqs &&
              query_start_loc_in.dim() == 1 && query_start_loc_in.numel() == num_seqs + 1,
              "seq_lens [num_seqs], block_tables [num_seqs, ...] and query_start_loc "
              "[num_seqs + 1] disagree");
  TORCH_CHECK(num_tokens < (int64_t(1) << 31) && num_seqs < (int64_t(1) << 31) &&
              max_seq_len < (int64_t(1) << 31), "batch too large");
  if (num_tokens == 0 || num_seqs == 0) return;

  // The head dim must be contiguous; a strided token/head layout (fused QKV views) is fine.
  const at::Tensor query = query_in.stride(2) == 1 ? query_in : query_in.contiguous();
  const at::Tensor block_tables =
      block_tables_in.stride(1) == 1 ? block_tables_in : block_tables_in.contiguous();
  const at::Tensor seq_lens = seq_lens_in.contiguous();
  const at::Tensor query_start_loc = query_start_loc_in.contiguous();
  std::optional<at::Tensor> slopes;
  if (alibi_slopes.has_value()) {
    check_cuda(*alibi_slopes, query_in, "alibi_slopes");
    TORCH_CHECK(alibi_slopes->numel() == num_heads, "alibi_slopes must have num_heads entries");
    slopes = alibi_slopes->to(at::kFloat).contiguous();
  }

  const c10::cuda::CUDAGuard guard(query.device());
  octavo::PagedAttentionArgs a{};
  a.out = out.data_ptr();
  a.query = query.data_ptr();
  a.key_cache = key_cache.data_ptr();
  a.value_cache = value_cache.data_ptr();
  a.block_tables = block_tables.data_ptr<int32_t>();
  a.seq_lens = seq_lens.data_ptr<int32_t>();
  a.query_start_loc = query_start_loc.data_ptr<int32_t>();
  a.alibi_slopes = slopes.has_value() ? slopes->data_ptr<float>() : nullptr;
  a.q_token_stride = query.stride(0);
  a.q_head_stride = query.stride(1);
  a.out_token_stride = out.stride(0);
  a.out_head_stride = out.stride(1);
  a.cache_block_stride = key_cache.stride(0);
  a.cache_token_stride = key_cache.stride(1);
  a.block_table_stride = block_tables.stride(0);
  a.num_tokens = static_cast<int>(num_tokens);
  a.num_seqs = static_cast<int>(num_seqs);
  a.num_heads = static_cast<int>(num_heads);
  a.num_kv_heads = static_cast<int>(num_kv_heads);
  a.head_size = static_cast<int>(head_size);
  a.block_size = static_cast<int>(key_cache.size(1));
  a.max_query_len = static_cast<int>(max_query_len);
  a.max_seq_len = static_cast<int>(max_seq_len);
  a.sliding_window = sliding_window > 0 ? static_cast<int>(sliding_window) : 0;
  a.scale = static_cast<float>(scale);
  a.logits_soft_cap = logits_soft_cap > 0 ? static_cast<float>(logits_soft_cap) : 0.f;
  a.dtype = to_dtype(query, "query");

  const octavo::PagedAttentionPlan plan = octavo::plan_paged_attention(
      a, static_cast<int>(partition_size), octavo::current_device_num_sms(),
      tensor_cores && octavo::tensor_cores_usable(a.dtype, a.head_size));
  at::Tensor tmp_out, tmp_stats;
  if (plan.num_splits > 1) {
    const auto opts = query.options().dtype(at::kFloat);
    tmp_out = at::empty({plan.workspace_out_elems()}, opts);
    tmp_stats = at::empty({2 * plan.workspace_stat_elems()}, opts);
    a.tmp_out = tmp_out.data_ptr<float>();
    a.tmp_max = tmp_stats.data_ptr<float>();
    a.tmp_sum = a.tmp_max + plan.workspace_stat_elems();
  }
  const char* err = octavo::launch_paged_attention(
      a, plan, c10::cuda::getCurrentCUDAStream(query.device().index()).stream());
  TORCH_CHECK(err == nullptr, "octavo_cuda paged_attention: ", err);
}

// Plan of a call, for tests and benchmarks: [heads_per_block, queries_per_block, head_chunks,
// num_q_tiles, num_splits, partition_size, tc, tc_heads_per_block, tc_queries_per_block,
// tc_head_chunks, tc_q_tiles].
std::vector<int64_t> attention_plan(int64_t num_tokens, int64_t num_seqs, int64_t num_heads,
                                    int64_t num_kv_heads, int64_t max_query_len,
                                    int64_t max_seq_len, int64_t partition_size,
                                    int64_t num_sms, bool tensor_cores) {
  octavo::PagedAttentionArgs a{};
  a.num_tokens = static_cast<int>(num_tokens);
  a.num_seqs = static_cast<int>(num_seqs);
  a.num_heads = static_cast<int>(num_heads);
  a.num_kv_heads = static_cast<int>(num_kv_heads);
  a.max_query_len = static_cast<int>(max_query_len);
  a.max_seq_len = static_cast<int>(max_seq_len);
  const octavo::PagedAttentionPlan p = octavo::plan_paged_attention(
      a, static_cast<int>(partition_size), static_cast<int>(num_sms), tensor_cores);
  return {p.heads_per_block, p.queries_per_block, p.head_chunks, p.num_q_tiles, p.num_splits,
          p.partition_size, p.tc, p.tc_heads_per_block, p.tc_queries_per_block,
          p.tc_head_chunks, p.tc_q_tiles};
}

}  // namespace

TORCH_LIBRARY(octavo_cuda, m) {
  m.def("reshape_and_cache(Tensor key, Tensor value, Tensor(a!) key_cache, "
        "Tensor(b!) value_cache, Tensor slot_mapping) -> ()");
  m.def("paged_attention(Tensor(a!) out, Tensor query, Tensor key_cache, Tensor value_cache, "
        "Tensor block_tables, Tensor seq_lens, Tensor query_start_loc, int max_query_len, "
        "int max_seq_len, float scale, Tensor? alibi_slopes, int sliding_window, "
        "float logits_soft_cap, int partition_size, bool tensor_cores) -> ()");
  m.def("attention_plan(int num_tokens, int num_seqs, int num_heads, int num_kv_heads, "
        "int max_query_len, int max_seq_len, int partition_size, int num_sms, "
        "bool tensor_cores) -> int[]",
        &attention_plan);
}

TORCH_LIBRARY_IMPL(octavo_cuda, CUDA, m) {
  m.impl("reshape_and_cache", &reshape_and_cache);
  m.impl("paged_attention", &paged_attention);
}
