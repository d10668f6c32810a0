// Paged attention for packed batches of decodes and prefill chunks.
//
// One thread block owns up to kMaxRows query rows of ONE request and ONE KV head: QB query
// tokens x GB query heads of that KV head's group (GQA: K/V are read once for all of them).
// A decode batch uses QB = 1, so a block is (request, KV head); prefill chunks tile their
// queries QB at a time, each row with its own causal (and sliding-window) bound. The block
// walks the request's context in tiles of kTile tokens with an online softmax in float32:
//
//   1. the tile's K/V row offsets from the block table     -> s_off
//   2. scores: 8 lanes per key split the head dim, shuffles reduce the dot products -> s_p
//   3. softmax: the warp that owns a row rescales its running max/sum -> probabilities, alpha
//   4. P @ V: each thread owns one 16-byte slice of the head dim for a subset of the tokens
//
// Long contexts with few blocks are split over grid.z into KV partitions (flash-decoding);
// combine_splits_kernel then merges the partial outputs by their max and sum. With fp16/bf16,
// requests of at least tc::kMinQueries new tokens go to the tensor-core kernel instead
// (attention_tc.cuh); each kernel skips the other's requests.
#pragma once

#include <cmath>
#include <type_traits>

#include "attention_common.cuh"
#include "attention_tc.cuh"
#include "compat.cuh"
#include "dtypes.cuh"
#include "kernels.h"

namespace octavo {

namespace attn {
constexpr int kThreads = 128;
constexpr int kWarps = kThreads / 32;
constexpr int kTile = 32;       // KV tokens per tile: one per lane in the softmax step
constexpr int kMaxRows = 8;     // query rows (token x head) per block
constexpr int kScoreLanes = 8;  // lanes sharing one key in the score step
constexpr int kRowsPerWarp = kMaxRows / kWarps;
constexpr int kMaxSplits = 256;
constexpr int kMinPartition = 256;  // automatic split-KV never cuts finer than this
static_assert(kMaxRows % kWarps == 0, "rows are spread evenly over the warps");
static_assert(kTile == 32, "the softmax step maps one tile token to each lane");
}  // namespace attn

template <typename T, int HEAD_SIZE>
struct AttentionConfig {
  static constexpr int kVec = Vec16<T>::kSize;      // elements per 16-byte chunk
  static constexpr int kChunks = HEAD_SIZE / kVec;  // chunks per K/V row
  static constexpr int kChunksPerLane = (kChunks + attn::kScoreLanes - 1) / attn::kScoreLanes;
  static constexpr int kTokensPerPass = attn::kThreads / attn::kScoreLanes;
  static constexpr int kPasses = attn::kTile / kTokensPerPass;
  static constexpr int kPvGroups = attn::kThreads / kChunks;  // token groups in the P @ V step
  static constexpr int kPvTokens = (attn::kTile + kPvGroups - 1) / kPvGroups;  // per thread
  // V rows are fetched with the K rows, before the scores, when they fit in a few registers.
  static constexpr bool kEarlyV = kPvTokens <= 4;
  static_assert(HEAD_SIZE % kVec == 0, "head size must be a multiple of 16 bytes");
  static_assert(attn::kTile % kTokensPerPass == 0, "score passes must cover the tile");
  static_assert(kPvGroups >= 1, "head size too large for the block");
};

__device__ __forceinline__ float warp_max(float x) {
#pragma unroll
  for (int mask = 16; mask > 0; mask /= 2) x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, mask));
  return x;
}

__device__ __forceinline__ float warp_sum(float x) {
#pragma unroll
  for (int mask = 16; mask > 0; mask /= 2) x += __shfl_xor_sync(0xffffffffu, x, mask);
  return x;
}

template <typename T, int HEAD_SIZE>
__global__ void __launch_bounds__(attn::kThreads)
paged_attention_kernel(const PagedAttentionArgs args, const PagedAttentionPlan plan) {
  using Cfg = AttentionConfig<T, HEAD_SIZE>;
  using namespace attn;
  constexpr int VEC = Cfg::kVec;
  constexpr int CHUNKS = Cfg::kChunks;
  constexpr float kNegInf = -INFINITY;

  __shared__ __align__(16) float s_q[kMaxRows][HEAD_SIZE];  // scaled queries, then the output
  __shared__ float s_p[kMaxRows][kTile];                    // scores, then probabilities
  __shared__ float s_alpha[kMaxRows];                       // rescale of the running output
  __shared__ float s_sum[kMaxRows];
  __shared__ float s_max[kMaxRows];
  __shared__ float s_slope[kMaxRows];
  __shared__ int s_qpos[kMaxRows];  // position of the row's query; -1 for an idle row
  __shared__ int64_t s_off[kTile];  // element offset of each tile token's K/V row

  const int tid = threadIdx.x;
  const int lane = tid % 32;
  const int warp = tid / 32;
  const int qb = plan.queries_per_block;
  const int gb = plan.heads_per_block;

  // --- which request and which of its query tiles (block-uniform) ---
  const int tile = blockIdx.x;
  const int seq = request_of_tile(args.query_start_loc, args.num_seqs, tile, qb);
  const int q_begin = load_global(args.query_start_loc + seq);
  const int query_len = load_global(args.query_start_loc + seq + 1) - q_begin;
  if (plan.tc && query_len >= tc::kMinQueries) return;  // the tensor-core kernel's request
  const int q_start = (tile - first_tile_of(args.query_start_loc, seq, qb)) * qb;
  if (q_start >= query_len) return;
  const int seq_len = load_global(args.seq_lens + seq);
  const int q_count = min(qb, query_len - q_start);
  const int first_pos = seq_len - query_len + q_start;  // position of the tile's first query
  const int num_rows = q_count * gb;  // row r: query q_start + r / gb, head head0 + r % gb

  const int group = args.num_heads / args.num_kv_heads;
  const int kv_head = blockIdx.y / plan.head_chunks;
  const int head_chunk = blockIdx.y % plan.head_chunks;
  const int head0 = kv_head * group + head_chunk * gb;
  const int heads_here = min(gb, group - head_chunk * gb);

  // --- rows and queries into shared memory ---
  if (tid < kMaxRows) {
    const bool valid = tid < num_rows && tid % gb < heads_here;
    s_qpos[tid] = valid ? first_pos + tid / gb : -1;
    s_slope[tid] = (valid && args.alibi_slopes != nullptr)
                       ? load_global(args.alibi_slopes + head0 + tid % gb) : 0.f;
  }
  const T* query = static_cast<const T*>(args.query);
  for (int idx = tid; idx < kMaxRows * HEAD_SIZE; idx += kThreads) {
    const int r = idx / HEAD_SIZE;
    const int d = idx % HEAD_SIZE;
    float q = 0.f;
    if (r < num_rows && r % gb < heads_here) {
      const int64_t token = q_begin + q_start + r / gb;
      const int64_t head = head0 + r % gb;
      q = to_float(load_global(query + token * args.q_token_stride +
                               head * args.q_head_stride + d)) * args.scale;
    }
    s_q[r][d] = q;
  }

  // --- the KV range of this block: causal bound of its last query, window of its first ---
  int kv_begin = 0;
  if (args.sliding_window > 0) kv_begin = max(0, first_pos - args.sliding_window + 1);
  int kv_end = first_pos + q_count;
  if (plan.num_splits > 1) {
    const int part = blockIdx.z;
    kv_begin = max(kv_begin, part * plan.partition_size);
    if (part + 1 < plan.num_splits) kv_end = min(kv_end, (part + 1) * plan.partition_size);
  }

  const int32_t* block_table = args.block_tables + int64_t(seq) * args.block_table_stride;
  const T* k_cache = static_cast<const T*>(args.key_cache) + int64_t(kv_head) * HEAD_SIZE;
  const T* v_cache = static_cast<const T*>(args.value_cache) + int64_t(kv_head) * HEAD_SIZE;
  const int window = args.sliding_window;
  const float soft_cap = args.logits_soft_cap;

  // Running max and sum of the rows this warp owns (r = warp + i * kWarps), in every lane.
  float row_max[kRowsPerWarp];
  float row_sum[kRowsPerWarp];
#pragma unroll
  for (int i = 0; i < kRowsPerWarp; ++i) {
    row_max[i] = kNegInf;
    row_sum[i] = 0.f;
  }
  // P @ V: this thread's 16-byte slice of the head dim, for tokens pv_group + k * kPvGroups.
  const int pv_chunk = tid % CHUNKS;
  const int pv_group = tid / CHUNKS;
  const bool pv_active = pv_group < Cfg::kPvGroups;
  float acc[kMaxRows][VEC];
#pragma unroll
  for (int r = 0; r < kMaxRows; ++r) {
#pragma unroll
    for (int e = 0; e < VEC; ++e) acc[r][e] = 0.f;
  }
  const int score_lane = tid % kScoreLanes;
  const int score_token = tid / kScoreLanes;

  __syncthreads();

  for (int tile_begin = kv_begin; tile_begin < kv_end; tile_begin += kTile) {
    const int n_tile = min(kTile, kv_end - tile_begin);

    // 1. K/V row offsets of the tile's tokens.
    tile_kv_offsets<kTile>(args, block_table, tile_begin, n_tile, tid, s_off);
    __syncthreads();

    // 2. Scores of every row against every tile token. All of the tile's K loads of this
    // thread (and its V loads, kEarlyV) are issued first, so that they are in flight together.
    uint4 k_raw[Cfg::kPasses][Cfg::kChunksPerLane];
#pragma unroll
    for (int pass = 0; pass < Cfg::kPasses; ++pass) {
      const int j = pass * Cfg::kTokensPerPass + score_token;
#pragma unroll
      for (int i = 0; i < Cfg::kChunksPerLane; ++i) {
        const int c = score_lane + i * kScoreLanes;
        k_raw[pass][i] = (j < n_tile && c < CHUNKS) ? load_raw16(k_cache + s_off[j] + c * VEC)
                                                    : make_uint4(0, 0, 0, 0);
      }
    }
    uint4 v_raw[Cfg::kEarlyV ? Cfg::kPvTokens : 1];
    if (Cfg::kEarlyV && pv_active) {
#pragma unroll
      for (int t = 0; t < (Cfg::kEarlyV ? Cfg::kPvTokens : 1); ++t) {
        const int j = pv_group + t * Cfg::kPvGroups;
        v_raw[t] = j < n_tile ? load_raw16(v_cache + s_off[j] + pv_chunk * VEC)
                              : make_uint4(0, 0, 0, 0);
      }
    }
#pragma unroll
    for (int pass = 0; pass < Cfg::kPasses; ++pass) {
      const int j = pass * Cfg::kTokensPerPass + score_token;
      const int pos = tile_begin + j;
      const bool in_tile = j < n_tile;
      float k[Cfg::kChunksPerLane][VEC];
#pragma unroll
      for (int i = 0; i < Cfg::kChunksPerLane; ++i) unpack16<T>(k_raw[pass][i], k[i]);
#pragma unroll
      for (int r = 0; r < kMaxRows; ++r) {
        if (r >= num_rows) break;  // block-uniform
        float dot = 0.f;
#pragma unroll
        for (int i = 0; i < Cfg::kChunksPerLane; ++i) {
          const int c = score_lane + i * kScoreLanes;
          if (c < CHUNKS) {
#pragma unroll
            for (int e = 0; e < VEC; ++e) dot += s_q[r][c * VEC + e] * k[i][e];
          }
        }
#pragma unroll
        for (int mask = kScoreLanes / 2; mask > 0; mask /= 2) {
          dot += __shfl_xor_sync(0xffffffffu, dot, mask);
        }
        if (score_lane == 0) {
          const int qpos = s_qpos[r];
          float s = kNegInf;
          if (in_tile && qpos >= 0 && pos <= qpos && (window <= 0 || pos > qpos - window)) {
            s = dot;
            if (soft_cap > 0.f) s = soft_cap * tanhf(s / soft_cap);
            s += s_slope[r] * static_cast<float>(pos - qpos);
          }
          s_p[r][j] = s;
        }
      }
    }
    __syncthreads();

    // 3. Online softmax: the owning warp updates its rows; lane j holds tile token j.
#pragma unroll
    for (int i = 0; i < kRowsPerWarp; ++i) {
      const int r = warp + i * kWarps;
      if (r < num_rows) {  // warp-uniform
        const float s = s_p[r][lane];
        const float new_max = fmaxf(row_max[i], warp_max(s));
        const float p = new_max == kNegInf ? 0.f : __expf(s - new_max);
        const float alpha = new_max == kNegInf ? 1.f : __expf(row_max[i] - new_max);
        row_sum[i] = row_sum[i] * alpha + warp_sum(p);
        row_max[i] = new_max;
        s_p[r][lane] = p;
        if (lane == 0) s_alpha[r] = alpha;
      }
    }
    __syncthreads();

    // 4. acc = acc * alpha + P @ V over this thread's tokens and head-dim slice.
    if (pv_active) {
#pragma unroll
      for (int r = 0; r < kMaxRows; ++r) {
        if (r >= num_rows) break;
        const float alpha = s_alpha[r];
#pragma unroll
        for (int e = 0; e < VEC; ++e) acc[r][e] *= alpha;
      }
#pragma unroll
      for (int t = 0; t < Cfg::kPvTokens; ++t) {
        const int j = pv_group + t * Cfg::kPvGroups;
        if (j >= n_tile) break;
        float v[VEC];
        if constexpr (Cfg::kEarlyV) {
          unpack16<T>(v_raw[t], v);
        } else {
          load_vec16(v_cache + s_off[j] + pv_chunk * VEC, v);
        }
#pragma unroll
        for (int r = 0; r < kMaxRows; ++r) {
          if (r >= num_rows) break;
          const float p = s_p[r][j];
#pragma unroll
          for (int e = 0; e < VEC; ++e) acc[r][e] += p * v[e];
        }
      }
    }
    __syncthreads();
  }

  // --- merge the token groups' partial outputs in s_q (free now), group by group ---
  if (lane == 0) {
#pragma unroll
    for (int i = 0; i < kRowsPerWarp; ++i) {
      const int r = warp + i * kWarps;
      if (r < num_rows) {
        s_sum[r] = row_sum[i];
        s_max[r] = row_max[i];
      }
    }
  }
  for (int g = 0; g < Cfg::kPvGroups; ++g) {
    if (pv_active && pv_group == g) {
#pragma unroll
      for (int r = 0; r < kMaxRows; ++r) {
        if (r >= num_rows) break;
#pragma unroll
        for (int e = 0; e < VEC; ++e) {
          float& o = s_q[r][pv_chunk * VEC + e];
          o = (g == 0 ? 0.f : o) + acc[r][e];
        }
      }
    }
    __syncthreads();
  }

  // --- write the normalized rows (or this partition's partial rows) ---
  const bool split = plan.num_splits > 1;
  T* out = static_cast<T*>(args.out);
  for (int idx = tid; idx < num_rows * HEAD_SIZE; idx += kThreads) {
    const int r = idx / HEAD_SIZE;
    const int d = idx % HEAD_SIZE;
    if (s_qpos[r] < 0) continue;
    const int64_t token = q_begin + q_start + r / gb;
    const int64_t head = head0 + r % gb;
    const float sum = s_sum[r];
    const float o = sum > 0.f ? s_q[r][d] / sum : 0.f;
    if (!split) {
      store_global(out + token * args.out_token_stride + head * args.out_head_stride + d,
                   from_float<T>(o));
    } else {
      const int64_t row = (token * args.num_heads + head) * plan.num_splits + blockIdx.z;
      store_global(args.tmp_out + row * HEAD_SIZE + d, o);
      if (d == 0) {
        store_global(args.tmp_max + row, s_max[r]);
        store_global(args.tmp_sum + row, sum);
      }
    }
  }
}

// Merges the num_splits partial rows of one (token, head): grid (num_tokens, num_heads).
template <typename T>
__global__ void __launch_bounds__(attn::kThreads)
combine_splits_kernel(const PagedAttentionArgs args, const PagedAttentionPlan plan) {
  __shared__ float s_weight[attn::kMaxSplits];
  const int num_splits = plan.num_splits;
  const int token = blockIdx.x;
  const int64_t head = blockIdx.y;
  if (token >= load_global(args.query_start_loc + args.num_seqs)) return;  // padding row
  if (plan.tc) {  // rows of the tensor-core kernel's requests are final already
    int seq = 0;
    int hi = args.num_seqs - 1;
    while (seq < hi) {  // the request holding this token
      const int mid = (seq + hi + 1) / 2;
      if (load_global(args.query_start_loc + mid) <= token) seq = mid;
      else hi = mid - 1;
    }
    const int query_len = load_global(args.query_start_loc + seq + 1) -
                          load_global(args.query_start_loc + seq);
    if (query_len >= tc::kMinQueries) return;
  }
  const int64_t row = (int64_t(token) * args.num_heads + head) * num_splits;
  float max_all = -INFINITY;
  for (int p = 0; p < num_splits; ++p) max_all = fmaxf(max_all, load_global(args.tmp_max + row + p));
  for (int p = threadIdx.x; p < num_splits; p += blockDim.x) {
    const float m = load_global(args.tmp_max + row + p);
    s_weight[p] = m == -INFINITY ? 0.f : load_global(args.tmp_sum + row + p) * __expf(m - max_all);
  }
  __syncthreads();
  float total = 0.f;
  for (int p = 0; p < num_splits; ++p) total += s_weight[p];
  const float inv_total = total > 0.f ? 1.f / total : 0.f;
  T* out = static_cast<T*>(args.out) + token * args.out_token_stride + head * args.out_head_stride;
  for (int d = threadIdx.x; d < args.head_size; d += blockDim.x) {
    float o = 0.f;
    for (int p = 0; p < num_splits; ++p) {
      const float w = s_weight[p];
      if (w != 0.f) o += w * load_global(args.tmp_out + (row + p) * args.head_size + d);
    }
    store_global(out + d, from_float<T>(o * inv_total));
  }
}

template <typename T, int HEAD_SIZE>
const char* launch_attention_head_size(const PagedAttentionArgs& args,
                                       const PagedAttentionPlan& plan, Stream stream) {
  const dim3 grid(plan.num_q_tiles, args.num_kv_heads * plan.head_chunks, plan.num_splits);
  oct_launch(&paged_attention_kernel<T, HEAD_SIZE>, grid, dim3(attn::kThreads), stream, args,
             plan);
  if (const char* err = oct_last_error()) return err;
  if constexpr (!std::is_same<T, float>::value) {
    if (plan.tc) {
      auto* kernel = &paged_attention_tc_kernel<T, HEAD_SIZE>;
      const size_t smem = TcLayout<HEAD_SIZE>::kBytes;
      // Opt in once per device (so never again inside a CUDA graph capture).
      static bool smem_ready[64] = {false};
      const int device = oct_current_device();
      if (device < 0 || device >= 64 || !smem_ready[device]) {
        if (const char* err = oct_allow_dynamic_smem(kernel, smem)) return err;
        if (device >= 0 && device < 64) smem_ready[device] = true;
      }
      const dim3 tc_grid(plan.tc_q_tiles, args.num_kv_heads * plan.tc_head_chunks);
      oct_launch_smem(kernel, tc_grid, dim3(tc::kThreads), smem, stream, args, plan);
      if (const char* err = oct_last_error()) return err;
    }
  }
  if (plan.num_splits > 1) {
    oct_launch(&combine_splits_kernel<T>, dim3(args.num_tokens, args.num_heads),
               dim3(attn::kThreads), stream, args, plan);
    if (const char* err = oct_last_error()) return err;
  }
  return nullptr;
}

// Head sizes with a compiled kernel; keep in sync with paged_attention_supports_head_size.
template <typename T>
const char* launch_attention_typed(const PagedAttentionArgs& args,
                                   const PagedAttentionPlan& plan, Stream stream) {
  switch (args.head_size) {
    case 64: return launch_attention_head_size<T, 64>(args, plan, stream);
    case 80: return launch_attention_head_size<T, 80>(args, plan, stream);
    case 96: return launch_attention_head_size<T, 96>(args, plan, stream);
    case 128: return launch_attention_head_size<T, 128>(args, plan, stream);
    case 256: return launch_attention_head_size<T, 256>(args, plan, stream);
    default: return "paged_attention: unsupported head size";
  }
}

}  // namespace octavo
