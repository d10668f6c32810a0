// Tensor-core (WMMA) paged attention for fp16/bf16 prefill chunks.
//
// Requests with at least kTcMinQueries new tokens go here; shorter ones (decodes) stay on the
// CUDA-core kernel of attention_kernels.cuh. A block owns 64 query rows of one request and one
// KV head (rows = query tokens x heads of the group, as in the CUDA-core kernel), 16 per warp,
// and walks the context in tiles of N tokens (FlashAttention-2 style):
//
//   1. K and V tiles of the block table's slots -> shared memory (zero past the tile)
//   2. S = Q K^T with 16x16x16 WMMA, each warp its 16 rows      -> shared memory, float
//   3. scale, soft cap, ALiBi, causal/window mask and online softmax: a lane pair per row,
//      P rounded to the input type                                -> shared memory
//   4. O = O * alpha + P V with WMMA; O stays in accumulator fragments in registers
//
// WMMA's fragment layout is unspecified, so the only element-wise work on fragments is the
// per-row rescale of O; the row of each fragment element is learned once per block by loading
// an accumulator from a matrix whose entries are their own row index.
#pragma once

#include <cmath>

#include "attention_common.cuh"
#include "compat.cuh"
#include "dtypes.cuh"
#include "kernels.h"

namespace octavo {

namespace tc {
constexpr int kThreads = 128;
constexpr int kWarps = kThreads / 32;
constexpr int kRows = 16 * kWarps;  // query rows per block
constexpr int kMinQueries = 16;     // requests with fewer new tokens use the CUDA-core kernel
}  // namespace tc

// Shared memory layout of the tensor-core kernel for head size D (16-bit types).
template <int D>
struct TcLayout {
  static constexpr int N = D > 128 ? 32 : 64;  // KV tokens per tile
  static constexpr int kLdX = D + 8;            // Q/K/V row stride (elements); 16-byte pad
  static constexpr int kLdS = N + 4;            // S row stride (floats)
  static constexpr int kLdP = N + 8;            // P row stride (elements)
  static constexpr int kLdO = D + 4;            // output staging row stride (floats)
  static constexpr int kOffQ = 0;
  static constexpr int kOffK = kOffQ + tc::kRows * kLdX * 2;
  static constexpr int kOffV = kOffK + N * kLdX * 2;
  static constexpr int kOffS = kOffV + N * kLdX * 2;
  static constexpr int kOffP = kOffS + tc::kRows * kLdS * 4;
  static constexpr int kMainBytes = kOffP + tc::kRows * kLdP * 2;
  static constexpr int kOutBytes = tc::kRows * kLdO * 4;  // aliases Q, K, V (, S) at the end
  static constexpr int kBytes = kMainBytes > kOutBytes ? kMainBytes : kOutBytes;
  static_assert(D % 16 == 0 && N % 16 == 0, "WMMA tiles are 16 x 16");
  static_assert(kOffK % 128 == 0 && kOffV % 128 == 0 && kOffS % 128 == 0 && kOffP % 128 == 0,
                "WMMA pointers need 32-byte alignment");
};

inline int tc_smem_bytes(int head_size) {
  switch (head_size) {
    case 64: return TcLayout<64>::kBytes;
    case 80: return TcLayout<80>::kBytes;
    case 96: return TcLayout<96>::kBytes;
    case 128: return TcLayout<128>::kBytes;
    case 256: return TcLayout<256>::kBytes;
    default: return 0;
  }
}

template <typename T, int D>
__global__ void __launch_bounds__(tc::kThreads)
paged_attention_tc_kernel(const PagedAttentionArgs args, const PagedAttentionPlan plan) {
#if defined(OCTAVO_CUDA_SIM) || !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 800
  namespace wmma = nvcuda::wmma;
  using L = TcLayout<D>;
  using FragA = wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major>;
  using FragBCol = wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::col_major>;
  using FragBRow = wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::row_major>;
  using FragAcc = wmma::fragment<wmma::accumulator, 16, 16, 16, float>;
  constexpr int N = L::N;
  constexpr int kVec = 8;  // 16-bit elements per 16-byte copy
  constexpr float kNegInf = -INFINITY;

  OCT_DYNAMIC_SMEM(smem);
  T* s_q = reinterpret_cast<T*>(smem + L::kOffQ);  // [kRows][kLdX] queries (unscaled)
  T* s_k = reinterpret_cast<T*>(smem + L::kOffK);  // [N][kLdX]
  T* s_v = reinterpret_cast<T*>(smem + L::kOffV);  // [N][kLdX]
  float* s_s = reinterpret_cast<float*>(smem + L::kOffS);  // [kRows][kLdS] scores
  T* s_p = reinterpret_cast<T*>(smem + L::kOffP);          // [kRows][kLdP] probabilities
  float* s_o = reinterpret_cast<float*>(smem);             // [kRows][kLdO] output, at the end
  __shared__ int s_qpos[tc::kRows];  // position of the row's query; -1 for an idle row
  __shared__ float s_slope[tc::kRows];
  __shared__ float s_alpha[tc::kRows];
  __shared__ float s_sum[tc::kRows];
  __shared__ int64_t s_off[N];

  const int tid = threadIdx.x;
  const int lane = tid % 32;
  const int warp = tid / 32;
  const int qb = plan.tc_queries_per_block;
  const int gb = plan.tc_heads_per_block;

  // --- which request and which of its query tiles (block-uniform) ---
  const int tile = blockIdx.x;
  const int seq = request_of_tile(args.query_start_loc, args.num_seqs, tile, qb);
  const int q_begin = load_global(args.query_start_loc + seq);
  const int query_len = load_global(args.query_start_loc + seq + 1) - q_begin;
  if (query_len < tc::kMinQueries) return;  // the CUDA-core kernel's request
  const int q_start = (tile - first_tile_of(args.query_start_loc, seq, qb)) * qb;
  if (q_start >= query_len) return;
  const int seq_len = load_global(args.seq_lens + seq);
  const int q_count = min(qb, query_len - q_start);
  const int first_pos = seq_len - query_len + q_start;
  const int num_rows = q_count * gb;

  const int group = args.num_heads / args.num_kv_heads;
  const int kv_head = blockIdx.y / plan.tc_head_chunks;
  const int head_chunk = blockIdx.y % plan.tc_head_chunks;
  const int head0 = kv_head * group + head_chunk * gb;
  const int heads_here = min(gb, group - head_chunk * gb);

  // --- rows and queries into shared memory ---
  if (tid < tc::kRows) {
    const bool valid = tid < num_rows && tid % gb < heads_here;
    s_qpos[tid] = valid ? first_pos + tid / gb : -1;
    s_slope[tid] = (valid && args.alibi_slopes != nullptr)
                       ? load_global(args.alibi_slopes + head0 + tid % gb) : 0.f;
  }
  const T* query = static_cast<const T*>(args.query);
  for (int idx = tid; idx < tc::kRows * D; idx += tc::kThreads) {
    const int r = idx / D;
    const int d = idx % D;
    T q = from_float<T>(0.f);
    if (r < num_rows && r % gb < heads_here) {
      const int64_t token = q_begin + q_start + r / gb;
      const int64_t head = head0 + r % gb;
      q = load_global(query + token * args.q_token_stride + head * args.q_head_stride + d);
    }
    s_q[r * L::kLdX + d] = q;
  }

  // --- the row of each accumulator element, from a probe matrix whose entries are rows ---
  const int warp_row0 = warp * 16;
  int row_of[FragAcc::num_elements];
  {
    float* probe_src = s_s + warp_row0 * L::kLdS;
    for (int idx = lane; idx < 256; idx += 32) {
      probe_src[(idx / 16) * L::kLdS + idx % 16] = static_cast<float>(idx / 16);
    }
    __syncwarp();
    FragAcc probe;
    wmma::load_matrix_sync(probe, probe_src, L::kLdS, wmma::mem_row_major);
#pragma unroll
    for (int i = 0; i < FragAcc::num_elements; ++i) row_of[i] = static_cast<int>(probe.x[i]);
    __syncwarp();
  }

  int kv_begin = 0;
  if (args.sliding_window > 0) kv_begin = max(0, first_pos - args.sliding_window + 1);
  const int kv_end = first_pos + q_count;

  const int32_t* block_table = args.block_tables + int64_t(seq) * args.block_table_stride;
  const T* k_cache = static_cast<const T*>(args.key_cache) + int64_t(kv_head) * D;
  const T* v_cache = static_cast<const T*>(args.value_cache) + int64_t(kv_head) * D;
  const int window = args.sliding_window;
  const float soft_cap = args.logits_soft_cap;
  const float scale = args.scale;

  // Softmax state: lanes 2i and 2i+1 share row warp_row0 + i, each half of the tile's columns.
  const int my_row = warp_row0 + lane / 2;
  const int my_half = lane % 2;
  float row_max = kNegInf;
  float row_sum = 0.f;
  const bool warp_active = warp_row0 < num_rows;  // warp-uniform

  FragAcc o[D / 16];
#pragma unroll
  for (int dt = 0; dt < D / 16; ++dt) wmma::fill_fragment(o[dt], 0.f);

  __syncthreads();

  for (int tile_begin = kv_begin; tile_begin < kv_end; tile_begin += N) {
    const int n_tile = min(N, kv_end - tile_begin);

    // 1. Slots of the tile, then its K and V rows (zero past the tile: 0 * NaN is NaN).
    tile_kv_offsets<N>(args, block_table, tile_begin, n_tile, tid, s_off);
    __syncthreads();
    for (int idx = tid; idx < N * (D / kVec); idx += tc::kThreads) {
      const int j = idx / (D / kVec);
      const int c = idx % (D / kVec);
      uint4 kk = make_uint4(0, 0, 0, 0);
      uint4 vv = make_uint4(0, 0, 0, 0);
      if (j < n_tile) {
        kk = load_raw16(k_cache + s_off[j] + c * kVec);
        vv = load_raw16(v_cache + s_off[j] + c * kVec);
      }
      *reinterpret_cast<uint4*>(s_k + j * L::kLdX + c * kVec) = kk;
      *reinterpret_cast<uint4*>(s_v + j * L::kLdX + c * kVec) = vv;
    }
    __syncthreads();

    if (warp_active) {
      // 2. S = Q K^T for this warp's 16 rows.
#pragma unroll
      for (int nt = 0; nt < N / 16; ++nt) {
        FragAcc s;
        wmma::fill_fragment(s, 0.f);
#pragma unroll
        for (int kt = 0; kt < D / 16; ++kt) {
          FragA a;
          FragBCol b;
          wmma::load_matrix_sync(a, s_q + warp_row0 * L::kLdX + kt * 16, L::kLdX);
          wmma::load_matrix_sync(b, s_k + nt * 16 * L::kLdX + kt * 16, L::kLdX);
          wmma::mma_sync(s, a, b, s);
        }
        wmma::store_matrix_sync(s_s + warp_row0 * L::kLdS + nt * 16, s, L::kLdS,
                                wmma::mem_row_major);
      }
      __syncwarp();

      // 3. Masks and online softmax; P in the input type.
      {
        const int qpos = s_qpos[my_row];
        const float slope = s_slope[my_row];
        float* srow = s_s + my_row * L::kLdS;
        T* prow = s_p + my_row * L::kLdP;
        float tile_max = kNegInf;
        for (int jj = 0; jj < N / 2; ++jj) {
          const int j = my_half * (N / 2) + jj;
          const int pos = tile_begin + j;
          float s = kNegInf;
          if (j < n_tile && qpos >= 0 && pos <= qpos && (window <= 0 || pos > qpos - window)) {
            s = srow[j] * scale;
            if (soft_cap > 0.f) s = soft_cap * tanhf(s / soft_cap);
            s += slope * static_cast<float>(pos - qpos);
          }
          srow[j] = s;
          tile_max = fmaxf(tile_max, s);
        }
        tile_max = fmaxf(tile_max, __shfl_xor_sync(0xffffffffu, tile_max, 1));
        const float new_max = fmaxf(row_max, tile_max);
        const float alpha = new_max == kNegInf ? 1.f : __expf(row_max - new_max);
        float sum = 0.f;
        for (int jj = 0; jj < N / 2; ++jj) {
          const int j = my_half * (N / 2) + jj;
          const T p = from_float<T>(new_max == kNegInf ? 0.f : __expf(srow[j] - new_max));
          prow[j] = p;
          sum += to_float(p);  // normalize by what P @ V actually sums
        }
        sum += __shfl_xor_sync(0xffffffffu, sum, 1);
        row_sum = row_sum * alpha + sum;
        row_max = new_max;
        if (my_half == 0) s_alpha[my_row] = alpha;
      }
      __syncwarp();

      // 4. O = O * alpha + P V.
      FragA pa[N / 16];
#pragma unroll
      for (int kt = 0; kt < N / 16; ++kt) {
        wmma::load_matrix_sync(pa[kt], s_p + warp_row0 * L::kLdP + kt * 16, L::kLdP);
      }
      float alpha_of[FragAcc::num_elements];
#pragma unroll
      for (int i = 0; i < FragAcc::num_elements; ++i) alpha_of[i] = s_alpha[warp_row0 + row_of[i]];
#pragma unroll
      for (int dt = 0; dt < D / 16; ++dt) {
#pragma unroll
        for (int i = 0; i < FragAcc::num_elements; ++i) o[dt].x[i] *= alpha_of[i];
#pragma unroll
        for (int kt = 0; kt < N / 16; ++kt) {
          FragBRow b;
          wmma::load_matrix_sync(b, s_v + kt * 16 * L::kLdX + dt * 16, L::kLdX);
          wmma::mma_sync(o[dt], pa[kt], b, o[dt]);
        }
      }
    }
    // No barrier here: the next tile rewrites K and V only after its first barrier, and s_off
    // is read before this tile's second one.
  }

  // --- normalize, stage as float (over Q/K/V, no longer read), write the valid rows ---
  if (warp_active && my_half == 0) s_sum[my_row] = row_sum;
  __syncthreads();
  if (warp_active) {
    float inv_of[FragAcc::num_elements];
#pragma unroll
    for (int i = 0; i < FragAcc::num_elements; ++i) {
      const float sum = s_sum[warp_row0 + row_of[i]];
      inv_of[i] = sum > 0.f ? 1.f / sum : 0.f;
    }
#pragma unroll
    for (int dt = 0; dt < D / 16; ++dt) {
#pragma unroll
      for (int i = 0; i < FragAcc::num_elements; ++i) o[dt].x[i] *= inv_of[i];
      wmma::store_matrix_sync(s_o + warp_row0 * L::kLdO + dt * 16, o[dt], L::kLdO,
                              wmma::mem_row_major);
    }
  }
  __syncthreads();
  T* out = static_cast<T*>(args.out);
  for (int idx = tid; idx < num_rows * D; idx += tc::kThreads) {
    const int r = idx / D;
    const int d = idx % D;
    if (s_qpos[r] < 0) continue;
    const int64_t token = q_begin + q_start + r / gb;
    const int64_t head = head0 + r % gb;
    store_global(out + token * args.out_token_stride + head * args.out_head_stride + d,
                 from_float<T>(s_o[r * L::kLdO + d]));
  }
#endif
}

}  // namespace octavo
