// Host side of the kernels.h API: planning, validation and dtype dispatch.
//
// Compiled once by api.cu (the typed attention kernels live in attention_<dtype>.cu) and
// included whole by the CPU simulator of the tests.
#pragma once

#include <algorithm>

#include "attention_tc.cuh"
#include "cache_kernels.cuh"
#include "compat.cuh"
#include "kernels.h"

namespace octavo {

template <typename T>
const char* launch_attention_typed(const PagedAttentionArgs& args,
                                   const PagedAttentionPlan& plan, Stream stream);

namespace plan_detail {
constexpr int kTile = 32;       // == attn::kTile
constexpr int kMaxRows = 8;     // == attn::kMaxRows
constexpr int kMaxSplits = 256;  // == attn::kMaxSplits
constexpr int kMinPartition = 256;

inline int ceil_div(int a, int b) { return (a + b - 1) / b; }
inline int round_up(int a, int b) { return ceil_div(a, b) * b; }
}  // namespace plan_detail

bool paged_attention_supports_head_size(int head_size) {
  return head_size == 64 || head_size == 80 || head_size == 96 || head_size == 128 ||
         head_size == 256;
}

bool tensor_cores_usable(DType dtype, int head_size) {
  return dtype != DType::kFloat32 && paged_attention_supports_head_size(head_size) &&
         oct_cc_major() >= 8 && tc_smem_bytes(head_size) <= oct_max_smem_optin();
}

PagedAttentionPlan plan_paged_attention(const PagedAttentionArgs& a, int partition_size,
                                        int num_sms, bool tensor_cores) {
  using namespace plan_detail;
  PagedAttentionPlan p{};
  p.num_tokens = a.num_tokens;
  p.num_heads = a.num_heads;
  p.head_size = a.head_size;
  const int group = a.num_kv_heads > 0 ? std::max(1, a.num_heads / a.num_kv_heads) : 1;
  // The tensor-core kernel takes requests of tc::kMinQueries+ tokens, if there may be any.
  p.tc = tensor_cores && a.max_query_len >= tc::kMinQueries ? 1 : 0;
  if (p.tc) {
    p.tc_heads_per_block = std::min(group, tc::kRows);
    p.tc_head_chunks = ceil_div(group, p.tc_heads_per_block);
    p.tc_queries_per_block = tc::kRows / p.tc_heads_per_block;
    p.tc_q_tiles = p.tc_queries_per_block > 1
                       ? a.num_tokens / p.tc_queries_per_block + a.num_seqs : a.num_tokens;
  }
  const int core_max_query_len = p.tc ? std::min(a.max_query_len, tc::kMinQueries - 1)
                                      : a.max_query_len;
  p.heads_per_block = std::min(group, kMaxRows);
  p.head_chunks = ceil_div(group, p.heads_per_block);
  p.queries_per_block = std::max(1, std::min(kMaxRows / p.heads_per_block, core_max_query_len));
  // Request s's tiles start at query_start_loc[s] / QB + s (QB > 1): that leaves each request
  // at least ceil(query_len / QB) tiles, and the last one ends by num_tokens / QB + num_seqs.
  p.num_q_tiles = p.queries_per_block > 1
                      ? a.num_tokens / p.queries_per_block + a.num_seqs : a.num_tokens;

  const int max_seq_len = std::max(a.max_seq_len, 1);
  int splits = 1;
  int part = round_up(max_seq_len, kTile);
  if (partition_size > 0) {
    part = round_up(partition_size, kTile);
  } else if (partition_size == 0) {
    const int64_t blocks = int64_t(p.num_q_tiles) * a.num_kv_heads * p.head_chunks;
    if (blocks < num_sms && max_seq_len >= 2 * kMinPartition) {
      const int wanted = std::min(ceil_div(2 * num_sms, static_cast<int>(std::max<int64_t>(blocks, 1))),
                                  max_seq_len / kMinPartition);
      part = round_up(ceil_div(max_seq_len, std::max(wanted, 1)), kTile);
    }
  }
  splits = ceil_div(max_seq_len, part);
  if (splits > kMaxSplits) {
    part = round_up(ceil_div(max_seq_len, kMaxSplits), kTile);
    splits = ceil_div(max_seq_len, part);
  }
  p.num_splits = std::max(splits, 1);
  p.partition_size = part;
  return p;
}

const char* launch_paged_attention(const PagedAttentionArgs& a, const PagedAttentionPlan& p,
                                   void* stream) {
  if (a.num_tokens <= 0 || a.num_seqs <= 0) return nullptr;
  if (a.num_kv_heads <= 0 || a.num_heads % a.num_kv_heads != 0)
    return "paged_attention: num_heads must be a positive multiple of num_kv_heads";
  if (!paged_attention_supports_head_size(a.head_size))
    return "paged_attention: unsupported head size (64, 80, 96, 128 or 256)";
  if (a.block_size <= 0) return "paged_attention: block_size must be positive";
  if (p.num_splits < 1 || p.num_splits > plan_detail::kMaxSplits || p.partition_size <= 0 ||
      p.num_q_tiles <= 0)
    return "paged_attention: invalid plan";
  if (p.num_splits > 1 && (a.tmp_out == nullptr || a.tmp_max == nullptr || a.tmp_sum == nullptr))
    return "paged_attention: split-KV plan without a workspace";
  if (p.tc && (a.dtype == DType::kFloat32 || p.tc_q_tiles <= 0 || p.tc_queries_per_block <= 0))
    return "paged_attention: invalid tensor-core plan";
  const Stream s = static_cast<Stream>(stream);
  switch (a.dtype) {
    case DType::kFloat32: return launch_attention_typed<float>(a, p, s);
    case DType::kFloat16: return launch_attention_typed<__half>(a, p, s);
    case DType::kBFloat16: return launch_attention_typed<__nv_bfloat16>(a, p, s);
  }
  return "paged_attention: unsupported dtype";
}

const char* launch_reshape_and_cache(const ReshapeAndCacheArgs& a, void* stream) {
  return reshape_and_cache_impl(a, static_cast<Stream>(stream));
}

int current_device_num_sms() { return oct_num_sms(); }

}  // namespace octavo
