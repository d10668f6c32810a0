// What the CUDA-core (attention_kernels.cuh) and tensor-core (attention_tc.cuh) paged attention
// kernels share: which request a block of the grid serves, and where the K/V rows of a tile of
// that request's context lie in the paged cache.
#pragma once

#include "compat.cuh"
#include "dtypes.cuh"
#include "kernels.h"

namespace octavo {

// First query tile of request `seq` in a grid of tiles of qb queries (plan_paged_attention).
__device__ __forceinline__ int first_tile_of(const int32_t* query_start_loc, int seq, int qb) {
  const int start = load_global(query_start_loc + seq);
  return qb > 1 ? start / qb + seq : start;
}

// The request of query tile `tile`: the last one whose first tile is <= tile (block-uniform).
__device__ __forceinline__ int request_of_tile(const int32_t* query_start_loc, int num_seqs,
                                               int tile, int qb) {
  int seq = 0;
  int hi = num_seqs - 1;
  while (seq < hi) {
    const int mid = (seq + hi + 1) / 2;
    if (first_tile_of(query_start_loc, mid, qb) <= tile) seq = mid;
    else hi = mid - 1;
  }
  return seq;
}

// Element offsets of the K/V rows of context tokens tile_begin + j, j < n_tile, in the cache,
// from the request's block table -> s_off[j]; -1 for n_tile <= j < kTileSize. Threads
// tid < kTileSize write one entry each; the caller synchronizes before reading s_off.
template <int kTileSize>
__device__ __forceinline__ void tile_kv_offsets(const PagedAttentionArgs& args,
                                                const int32_t* block_table, int tile_begin,
                                                int n_tile, int tid, int64_t* s_off) {
  if (tid >= kTileSize) return;
  int64_t off = -1;
  if (tid < n_tile) {
    const int pos = tile_begin + tid;
    const int64_t block = load_global(block_table + pos / args.block_size);
    off = block * args.cache_block_stride +
          int64_t(pos % args.block_size) * args.cache_token_stride;
  }
  s_off[tid] = off;
}

}  // namespace octavo
