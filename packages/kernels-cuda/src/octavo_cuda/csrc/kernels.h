// Host API of the octavo_cuda kernels: raw pointers and strides, no torch, no CUDA headers.
//
// The torch binding (binding.cpp) and the CPU simulator of the tests call these; each launcher
// returns nullptr on success or a static error message.
#pragma once

#include <cstdint>

namespace octavo {

enum class DType : int { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2 };

inline int dtype_size(DType dtype) { return dtype == DType::kFloat32 ? 4 : 2; }

// Copies each token's K/V rows into the paged cache at slot_mapping (negative slots skipped).
// Every stride is in elements; a token's [num_kv_heads, head_size] row is contiguous.
struct ReshapeAndCacheArgs {
  const void* key;          // [num_tokens, num_kv_heads, head_size]
  const void* value;        // [num_tokens, num_kv_heads, head_size]
  void* key_cache;          // [num_blocks, block_size, num_kv_heads, head_size]
  void* value_cache;        // same shape and strides as key_cache
  const int64_t* slot_mapping;  // [num_tokens]
  int64_t key_token_stride;
  int64_t value_token_stride;
  int64_t cache_block_stride;
  int64_t cache_token_stride;
  int64_t num_slots;        // num_blocks * block_size; larger slots are skipped too
  int num_tokens;
  int row_elems;            // num_kv_heads * head_size
  int block_size;
  DType dtype;
};

const char* launch_reshape_and_cache(const ReshapeAndCacheArgs& args, void* stream);

// Paged attention over a packed batch; see octavo/attention/base.py for the metadata.
struct PagedAttentionArgs {
  void* out;                      // [num_tokens, num_heads, head_size]
  const void* query;              // [num_tokens, num_heads, head_size]
  const void* key_cache;          // [num_blocks, block_size, num_kv_heads, head_size]
  const void* value_cache;        // same shape and strides as key_cache
  const int32_t* block_tables;    // [num_seqs, block_table_stride]
  const int32_t* seq_lens;        // [num_seqs]
  const int32_t* query_start_loc; // [num_seqs + 1]
  const float* alibi_slopes;      // [num_heads] or nullptr
  float* tmp_out;                 // split-KV workspace (see PagedAttentionPlan), or nullptr
  float* tmp_max;
  float* tmp_sum;
  int64_t q_token_stride, q_head_stride;      // elements; the head dim is contiguous
  int64_t out_token_stride, out_head_stride;  // elements; 16-byte aligned rows
  int64_t cache_block_stride, cache_token_stride;  // elements; [kv_head, dim] contiguous
  int64_t block_table_stride;
  int num_tokens;    // rows of query/out (may exceed query_start_loc[num_seqs])
  int num_seqs;
  int num_heads;
  int num_kv_heads;
  int head_size;
  int block_size;
  int max_query_len;
  int max_seq_len;
  int sliding_window;     // <= 0: none
  float scale;
  float logits_soft_cap;  // <= 0: none
  DType dtype;
};

// How a paged attention call is cut into thread blocks.
struct PagedAttentionPlan {
  int heads_per_block;    // query heads of one KV head per block (GB)
  int queries_per_block;  // query tokens of one request per block (QB)
  int head_chunks;        // ceil(group / GB)
  int num_q_tiles;        // grid.x: upper bound on query tiles over all requests
  int num_splits;         // KV partitions per row; > 1 needs the workspace below
  int partition_size;     // tokens per KV partition (a multiple of the tile size)
  // Tensor-core kernel (fp16/bf16) for requests with >= 16 new tokens; the fields above then
  // describe the CUDA-core kernel, which takes the shorter requests.
  int tc;                    // 1: launch it
  int tc_heads_per_block;
  int tc_queries_per_block;
  int tc_head_chunks;
  int tc_q_tiles;
  // Workspace for num_splits > 1, float32: tmp_out [num_tokens, num_heads, num_splits,
  // head_size]; tmp_max and tmp_sum [num_tokens, num_heads, num_splits].
  int num_tokens;
  int num_heads;
  int head_size;

  int64_t workspace_stat_elems() const {
    return num_splits > 1 ? int64_t(num_tokens) * num_heads * num_splits : 0;
  }
  int64_t workspace_out_elems() const { return workspace_stat_elems() * head_size; }
};

// Chooses the plan. partition_size: > 0 forces split-KV with partitions of about that many
// tokens (rounded up to the tile; for tests), 0 chooses automatically, < 0 never splits.
// tensor_cores: whether the tensor-core kernel may take the requests of 16+ new tokens.
PagedAttentionPlan plan_paged_attention(const PagedAttentionArgs& args, int partition_size,
                                        int num_sms, bool tensor_cores);

bool paged_attention_supports_head_size(int head_size);

// Whether the current device runs the tensor-core kernel for this dtype and head size.
bool tensor_cores_usable(DType dtype, int head_size);

const char* launch_paged_attention(const PagedAttentionArgs& args,
                                   const PagedAttentionPlan& plan, void* stream);

// Multiprocessor count of the current CUDA device.
int current_device_num_sms();

}  // namespace octavo
