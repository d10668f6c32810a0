// Paged attention on the CPU: each query reads its context's K/V straight from the cache
// blocks (no gather into a padded copy), in one pass with an online softmax, float32
// accumulation.
//
// Op (namespace torch.ops.octavo_cpu), in place, returns nothing:
//   paged_attention(out!, query, key_cache, value_cache, block_tables, seq_lens,
//                   query_start_loc, seq_indices, scale, alibi_slopes?, sliding_window,
//                   logits_soft_cap)
// Only the sequences listed in seq_indices are computed (the caller runs the others, long
// prefill chunks, on matrix products). Layouts:
//   query, out: [num_tokens, num_heads, head_size]
//   key_cache, value_cache: [num_blocks, block_size, num_kv_heads, head_size]
//   block_tables: [num_seqs, max_blocks] int32; seq_lens: [num_seqs] int32;
//   query_start_loc: [num_seqs + 1] int32; seq_indices: [n] int32.
// Work is split over (sequence, KV head) pairs with ATen's thread pool; the query heads of one
// KV head share each K/V row they read.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <torch/library.h>

#include "cpu_math.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <optional>
#include <vector>

namespace {

using octavo_cpu::exp_nonpositive;

// One SIMD register of floats, by GCC's vector extension, at the build's native width: a
// vector wider than the hardware's (16 lanes on AVX2) is lowered through the stack, which
// made this kernel several times slower.
#if defined(__AVX512F__)
constexpr int kLanes = 16;
#elif defined(__AVX__)
constexpr int kLanes = 8;
#else
constexpr int kLanes = 4;
#endif
typedef float Vec __attribute__((vector_size(kLanes * sizeof(float))));

inline Vec load(const float* p) {
  Vec v;
  __builtin_memcpy(&v, p, sizeof(v));
  return v;
}

inline void store(float* p, Vec v) { __builtin_memcpy(p, &v, sizeof(v)); }

// A tree of halving adds: without fast-math a scalar loop over the lanes must keep its order.
template <typename Half, typename Whole>
inline Half add_halves(Whole v) {
  Half lo, hi;  // memcpy of each half: portable (GCC and Clang), lowered to register moves
  __builtin_memcpy(&lo, &v, sizeof(Half));
  __builtin_memcpy(&hi, reinterpret_cast<const char*>(&v) + sizeof(Half), sizeof(Half));
  return lo + hi;
}

typedef float Vec4 __attribute__((vector_size(4 * sizeof(float))));
inline float sum_lanes(Vec4 q) { return (q[0] + q[2]) + (q[1] + q[3]); }
#if defined(__AVX__)
typedef float Vec8 __attribute__((vector_size(8 * sizeof(float))));
inline float sum_lanes(Vec8 v) { return sum_lanes(add_halves<Vec4>(v)); }
#endif
#if defined(__AVX512F__)
typedef float Vec16 __attribute__((vector_size(16 * sizeof(float))));
inline float sum_lanes(Vec16 v) { return sum_lanes(add_halves<Vec8>(v)); }
#endif

// Dot product of two float rows of length d (a multiple of kLanes for the fast part).
inline float dot(const float* a, const float* b, int64_t d) {
  Vec acc0 = {}, acc1 = {};
  int64_t i = 0;
  for (; i + 2 * kLanes <= d; i += 2 * kLanes) {
    acc0 += load(a + i) * load(b + i);
    acc1 += load(a + i + kLanes) * load(b + i + kLanes);
  }
  for (; i + kLanes <= d; i += kLanes) acc0 += load(a + i) * load(b + i);
  float total = sum_lanes(acc0 + acc1);
  for (; i < d; ++i) total += a[i] * b[i];
  return total;
}

// acc[0:d] += p * row[0:d]
inline void axpy(float* acc, float p, const float* row, int64_t d) {
  int64_t i = 0;
  for (; i + kLanes <= d; i += kLanes) store(acc + i, load(acc + i) + p * load(row + i));
  for (; i < d; ++i) acc[i] += p * row[i];
}

// A K or V row as float32: the cache's own memory for float32, else converted into `buf`.
inline const float* as_float(const float* row, int64_t, float*) { return row; }

template <typename T>
inline const float* as_float(const T* row, int64_t d, float* buf) {
  for (int64_t i = 0; i < d; ++i) buf[i] = static_cast<float>(row[i]);
  return buf;
}

struct Shape {
  int64_t num_heads, num_kv_heads, head_size, block_size, max_blocks;
  int64_t q_token_stride, q_head_stride, k_block_stride, k_row_stride, k_head_stride;
};

struct Options {
  float scale;
  const float* alibi_slopes;  // [num_heads] or null
  int64_t sliding_window;      // <= 0: none
  float soft_cap;              // <= 0: none
};

// Attention of the query heads of KV heads [h0, h1) for one query token at position `pos`.
// Rows of consecutive KV heads are adjacent in the cache, so a work item that takes every
// KV head reads each block as one contiguous run.
template <typename T>
void attend_token(const T* q_token, T* out_token, const T* key_cache, const T* value_cache,
                  const int32_t* block_table, int64_t pos, int64_t h0, int64_t h1,
                  const Shape& s, const Options& o, std::vector<float>& scratch) {
  const int64_t G = s.num_heads / s.num_kv_heads, D = s.head_size, B = s.block_size;
  const int64_t H = (h1 - h0) * G;  // query heads of this item
  scratch.resize(H * D * 2 + H * B + 2 * H + D);
  float* q = scratch.data();         // [H][D], scaled
  float* acc = q + H * D;            // [H][D]
  float* scores = acc + H * D;       // [H][B]
  float* running_max = scores + H * B;
  float* running_sum = running_max + H;
  float* row_buf = running_sum + H;  // [D], a converted K/V row
  for (int64_t h = 0; h < H; ++h) {
    const T* src = q_token + (h0 * G + h) * s.q_head_stride;
    for (int64_t d = 0; d < D; ++d) q[h * D + d] = static_cast<float>(src[d]) * o.scale;
    running_max[h] = -INFINITY;
    running_sum[h] = 0.0f;
  }
  std::fill(acc, acc + H * D, 0.0f);

  const int64_t first = o.sliding_window > 0 ? std::max<int64_t>(0, pos - o.sliding_window + 1) : 0;
  for (int64_t block = first / B; block <= pos / B; ++block) {
    const int64_t lo = std::max(first, block * B), hi = std::min(pos + 1, (block + 1) * B);
    const int64_t n = hi - lo;
    const int64_t row0 = block_table[block] * s.k_block_stride + (lo - block * B) * s.k_row_stride;
    // The next block sits anywhere in the pool, out of the hardware prefetcher's sight: ask
    // for its rows now, a row per row of this block, so they arrive while this one computes.
    const int64_t next_row0 = block < pos / B ? block_table[block + 1] * s.k_block_stride : -1;
    for (int64_t t = 0; t < n; ++t) {
      if (next_row0 >= 0) {
        const int64_t at = next_row0 + t * s.k_row_stride + h0 * s.k_head_stride;
        const int64_t bytes = (h1 - h0) * s.k_head_stride * static_cast<int64_t>(sizeof(T));
        for (int64_t line = 0; line < bytes; line += 64) {
          __builtin_prefetch(reinterpret_cast<const char*>(key_cache + at) + line);
          __builtin_prefetch(reinterpret_cast<const char*>(value_cache + at) + line);
        }
      }
      for (int64_t kv = h0; kv < h1; ++kv) {
        const float* k = as_float(key_cache + row0 + t * s.k_row_stride + kv * s.k_head_stride,
                                  D, row_buf);
        for (int64_t g = 0; g < G; ++g) {
          const int64_t h = (kv - h0) * G + g;
          scores[h * B + t] = dot(q + h * D, k, D);
        }
      }
    }
    for (int64_t h = 0; h < H; ++h) {
      float* sh = scores + h * B;
      if (o.soft_cap > 0.0f)
        for (int64_t t = 0; t < n; ++t) sh[t] = o.soft_cap * std::tanh(sh[t] / o.soft_cap);
      if (o.alibi_slopes != nullptr) {
        const float slope = o.alibi_slopes[h0 * G + h];
        for (int64_t t = 0; t < n; ++t) sh[t] += slope * static_cast<float>(lo + t - pos);
      }
      float block_max = running_max[h];
      for (int64_t t = 0; t < n; ++t) block_max = std::max(block_max, sh[t]);
      const float correction = exp_nonpositive(running_max[h] - block_max);
      float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
      for (int64_t t = 0; t < n; ++t) {
        sh[t] = exp_nonpositive(sh[t] - block_max);
        sum += sh[t];
      }
      running_sum[h] = running_sum[h] * correction + sum;
      running_max[h] = block_max;
      if (correction != 1.0f) {
        float* ah = acc + h * D;
        for (int64_t d = 0; d < D; ++d) ah[d] *= correction;
      }
    }
    for (int64_t t = 0; t < n; ++t) {
      for (int64_t kv = h0; kv < h1; ++kv) {
        const float* v = as_float(value_cache + row0 + t * s.k_row_stride + kv * s.k_head_stride,
                                  D, row_buf);
        for (int64_t g = 0; g < G; ++g) {
          const int64_t h = (kv - h0) * G + g;
          axpy(acc + h * D, scores[h * B + t], v, D);
        }
      }
    }
  }
  for (int64_t h = 0; h < H; ++h) {
    const float inv = 1.0f / running_sum[h];
    T* dst = out_token + (h0 * G + h) * s.q_head_stride;
    const float* ah = acc + h * D;
    for (int64_t d = 0; d < D; ++d) dst[d] = static_cast<T>(ah[d] * inv);
  }
}

template <typename T>
void run(at::Tensor& out, const at::Tensor& query, const at::Tensor& key_cache,
         const at::Tensor& value_cache, const at::Tensor& block_tables,
         const at::Tensor& seq_lens, const at::Tensor& query_start_loc,
         const at::Tensor& seq_indices, const Shape& s, const Options& o) {
  const T* q = query.data_ptr<T>();
  T* dst = out.data_ptr<T>();
  const T* kc = key_cache.data_ptr<T>();
  const T* vc = value_cache.data_ptr<T>();
  const int32_t* tables = block_tables.data_ptr<int32_t>();
  const int32_t* lens = seq_lens.data_ptr<int32_t>();
  const int32_t* starts = query_start_loc.data_ptr<int32_t>();
  const int32_t* seqs = seq_indices.data_ptr<int32_t>();
  // One item per sequence reads whole cache rows; with fewer sequences than twice the
  // threads, one per (sequence, KV head) keeps every thread busy.
  const int64_t num_seqs = seq_indices.numel();
  const int64_t split = num_seqs >= 2 * at::get_num_threads() ? 1 : s.num_kv_heads;
  const int64_t heads_per_item = s.num_kv_heads / split;
  at::parallel_for(0, num_seqs * split, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> scratch;
    for (int64_t item = begin; item < end; ++item) {
      const int64_t seq = seqs[item / split], h0 = (item % split) * heads_per_item;
      const int64_t q_lo = starts[seq], q_hi = starts[seq + 1], seq_len = lens[seq];
      for (int64_t token = q_lo; token < q_hi; ++token) {
        const int64_t pos = seq_len - (q_hi - token);
        attend_token<T>(q + token * s.q_token_stride, dst + token * s.q_token_stride, kc, vc,
                        tables + seq * s.max_blocks, pos, h0, h0 + heads_per_item, s, o,
                        scratch);
      }
    }
  });
}

void check_int32(const at::Tensor& t, int64_t dim, const char* what) {
  TORCH_CHECK(t.device().is_cpu() && t.scalar_type() == at::kInt && t.dim() == dim &&
                  t.is_contiguous(),
              what, " must be a contiguous CPU int32 tensor of ", dim, " dims");
}

void paged_attention(at::Tensor& out, const at::Tensor& query, const at::Tensor& key_cache,
                     const at::Tensor& value_cache, const at::Tensor& block_tables,
                     const at::Tensor& seq_lens, const at::Tensor& query_start_loc,
                     const at::Tensor& seq_indices, double scale,
                     const std::optional<at::Tensor>& alibi_slopes, int64_t sliding_window,
                     double logits_soft_cap) {
  TORCH_CHECK(query.device().is_cpu() && query.dim() == 3 && query.stride(2) == 1,
              "query must be a CPU [num_tokens, num_heads, head_size] tensor with unit "
              "last stride");
  TORCH_CHECK(out.sizes() == query.sizes() && out.strides() == query.strides() &&
                  out.scalar_type() == query.scalar_type(),
              "out must match query in shape, strides and dtype");
  TORCH_CHECK(key_cache.dim() == 4 && key_cache.is_contiguous() &&
                  value_cache.sizes() == key_cache.sizes() && value_cache.is_contiguous(),
              "key_cache and value_cache must be contiguous [num_blocks, block_size, "
              "num_kv_heads, head_size] tensors of one shape");
  TORCH_CHECK(key_cache.scalar_type() == query.scalar_type() &&
                  value_cache.scalar_type() == query.scalar_type(),
              "query and the caches must share a dtype");
  check_int32(block_tables, 2, "block_tables");
  check_int32(seq_lens, 1, "seq_lens");
  check_int32(query_start_loc, 1, "query_start_loc");
  check_int32(seq_indices, 1, "seq_indices");
  const int64_t num_heads = query.size(1), num_kv_heads = key_cache.size(2);
  TORCH_CHECK(key_cache.size(3) == query.size(2), "head sizes differ between query and cache");
  TORCH_CHECK(num_heads % num_kv_heads == 0, "num_heads must be a multiple of num_kv_heads");
  TORCH_CHECK(query.stride(1) == query.size(2), "query heads must be contiguous");
  const float* slopes = nullptr;
  if (alibi_slopes.has_value()) {
    const at::Tensor& a = *alibi_slopes;
    TORCH_CHECK(a.device().is_cpu() && a.scalar_type() == at::kFloat && a.is_contiguous() &&
                    a.numel() == num_heads,
                "alibi_slopes must be a contiguous float32 CPU tensor of num_heads entries");
    slopes = a.data_ptr<float>();
  }
  const Shape s{num_heads, num_kv_heads, query.size(2), key_cache.size(1), block_tables.size(1),
                query.stride(0), query.stride(1), key_cache.stride(0), key_cache.stride(1),
                key_cache.stride(2)};
  const Options o{static_cast<float>(scale), slopes, sliding_window,
                  static_cast<float>(logits_soft_cap)};
  switch (query.scalar_type()) {
    case at::kFloat:
      run<float>(out, query, key_cache, value_cache, block_tables, seq_lens, query_start_loc,
                 seq_indices, s, o);
      break;
    case at::kBFloat16:
      run<c10::BFloat16>(out, query, key_cache, value_cache, block_tables, seq_lens,
                         query_start_loc, seq_indices, s, o);
      break;
    case at::kHalf:
      run<c10::Half>(out, query, key_cache, value_cache, block_tables, seq_lens,
                     query_start_loc, seq_indices, s, o);
      break;
    default:
      TORCH_CHECK(false, "paged_attention supports float32, bfloat16 and float16, not ",
                  query.scalar_type());
  }
}

}  // namespace

TORCH_LIBRARY(octavo_cpu, m) {
  m.def(
      "paged_attention(Tensor(a!) out, Tensor query, Tensor key_cache, Tensor value_cache, "
      "Tensor block_tables, Tensor seq_lens, Tensor query_start_loc, Tensor seq_indices, "
      "float scale, Tensor? alibi_slopes, int sliding_window, float logits_soft_cap) -> ()");
}

TORCH_LIBRARY_IMPL(octavo_cpu, CPU, m) { m.impl("paged_attention", &paged_attention); }
