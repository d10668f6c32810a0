// C entry points of the simulated octavo_cuda kernels, called through ctypes by the tests.
//
// Mirrors binding.cpp: the same host API (api_impl.cuh) plans and launches the same kernels,
// with the simulator standing in for the GPU. Every pointer the kernels may touch must be
// registered with octsim_register first.
#include "sim_runtime.h"

// clang-format off
#include "api_impl.cuh"
#include "attention_kernels.cuh"
// clang-format on

#include <string>
#include <vector>

namespace {
std::string g_message;

const char* finish(const char* err) {
  if (err == nullptr) return nullptr;
  g_message = err;
  return g_message.c_str();
}
}  // namespace

extern "C" {

void octsim_reset(int num_sms) {
  octsim::g_error.clear();
  octsim::g_ranges.clear();
  octsim::g_num_sms = num_sms;
}

void octsim_register(const void* ptr, int64_t bytes) {
  const auto lo = reinterpret_cast<uintptr_t>(ptr);
  octsim::g_ranges.emplace_back(lo, lo + static_cast<uintptr_t>(bytes));
}

const char* octsim_reshape_and_cache(const void* key, const void* value, void* key_cache,
                                     void* value_cache, const int64_t* slot_mapping,
                                     int64_t key_token_stride, int64_t value_token_stride,
                                     int64_t cache_block_stride, int64_t cache_token_stride,
                                     int64_t num_slots, int num_tokens, int row_elems,
                                     int block_size, int dtype) {
  octavo::ReshapeAndCacheArgs a{};
  a.key = key;
  a.value = value;
  a.key_cache = key_cache;
  a.value_cache = value_cache;
  a.slot_mapping = slot_mapping;
  a.key_token_stride = key_token_stride;
  a.value_token_stride = value_token_stride;
  a.cache_block_stride = cache_block_stride;
  a.cache_token_stride = cache_token_stride;
  a.num_slots = num_slots;
  a.num_tokens = num_tokens;
  a.row_elems = row_elems;
  a.block_size = block_size;
  a.dtype = static_cast<octavo::DType>(dtype);
  return finish(octavo::launch_reshape_and_cache(a, nullptr));
}

// plan_out: [heads_per_block, queries_per_block, head_chunks, num_q_tiles, num_splits,
// partition_size, tc, tc_heads_per_block, tc_queries_per_block, tc_head_chunks, tc_q_tiles]
const char* octsim_paged_attention(
    void* out, const void* query, const void* key_cache, const void* value_cache,
    const int32_t* block_tables, const int32_t* seq_lens, const int32_t* query_start_loc,
    const float* alibi_slopes, int64_t q_token_stride, int64_t q_head_stride,
    int64_t out_token_stride, int64_t out_head_stride, int64_t cache_block_stride,
    int64_t cache_token_stride, int64_t block_table_stride, int num_tokens, int num_seqs,
    int num_heads, int num_kv_heads, int head_size, int block_size, int max_query_len,
    int max_seq_len, int sliding_window, float scale, float logits_soft_cap, int dtype,
    int partition_size, int tensor_cores, int64_t* plan_out) {
  octavo::PagedAttentionArgs a{};
  a.out = out;
  a.query = query;
  a.key_cache = key_cache;
  a.value_cache = value_cache;
  a.block_tables = block_tables;
  a.seq_lens = seq_lens;
  a.query_start_loc = query_start_loc;
  a.alibi_slopes = alibi_slopes;
  a.q_token_stride = q_token_stride;
  a.q_head_stride = q_head_stride;
  a.out_token_stride = out_token_stride;
  a.out_head_stride = out_head_stride;
  a.cache_block_stride = cache_block_stride;
  a.cache_token_stride = cache_token_stride;
  a.block_table_stride = block_table_stride;
  a.num_tokens = num_tokens;
  a.num_seqs = num_seqs;
  a.num_heads = num_heads;
  a.num_kv_heads = num_kv_heads;
  a.head_size = head_size;
  a.block_size = block_size;
  a.max_query_len = max_query_len;
  a.max_seq_len = max_seq_len;
  a.sliding_window = sliding_window;
  a.scale = scale;
  a.logits_soft_cap = logits_soft_cap;
  a.dtype = static_cast<octavo::DType>(dtype);
  const octavo::PagedAttentionPlan plan = octavo::plan_paged_attention(
      a, partition_size, octavo::oct_num_sms(),
      tensor_cores != 0 && octavo::tensor_cores_usable(a.dtype, a.head_size));
  const int64_t plan_values[11] = {
      plan.heads_per_block, plan.queries_per_block, plan.head_chunks,
      plan.num_q_tiles,     plan.num_splits,        plan.partition_size,
      plan.tc,              plan.tc_heads_per_block, plan.tc_queries_per_block,
      plan.tc_head_chunks,  plan.tc_q_tiles};
  for (int i = 0; i < 11; ++i) plan_out[i] = plan_values[i];
  // NaN-filled like a fresh allocation may be: the kernels must write before they read.
  std::vector<float> tmp_out(static_cast<size_t>(plan.workspace_out_elems()), NAN);
  std::vector<float> tmp_stats(static_cast<size_t>(2 * plan.workspace_stat_elems()), NAN);
  if (plan.num_splits > 1) {
    a.tmp_out = tmp_out.data();
    a.tmp_max = tmp_stats.data();
    a.tmp_sum = a.tmp_max + plan.workspace_stat_elems();
    octsim_register(tmp_out.data(), static_cast<int64_t>(tmp_out.size() * sizeof(float)));
    octsim_register(tmp_stats.data(), static_cast<int64_t>(tmp_stats.size() * sizeof(float)));
  }
  const char* err = octavo::launch_paged_attention(a, plan, nullptr);
  return finish(err);
}

}  // extern "C"
