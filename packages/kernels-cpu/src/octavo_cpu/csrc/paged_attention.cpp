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

#if defined(__AVX__)
#include <immintrin.h>
#endif

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <optional>
#include <type_traits>
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

// Sums of kKeys accumulators, one float each, into out[0:kKeys]. With AVX the accumulators
// are reduced together, a transpose by horizontal adds (8 sums in 9 instructions instead of 8
// separate trees of extracts and adds).
#if defined(__AVX__)
inline Vec8 narrow8(Vec8 v) { return v; }
#if defined(__AVX512F__)
inline Vec8 narrow8(Vec16 v) { return add_halves<Vec8>(v); }
#endif

template <int kKeys>
inline void reduce_store(const Vec* acc, float* out) {
  if constexpr (kKeys == 8) {
    const __m256 a01 = _mm256_hadd_ps(narrow8(acc[0]), narrow8(acc[1]));
    const __m256 a23 = _mm256_hadd_ps(narrow8(acc[2]), narrow8(acc[3]));
    const __m256 a45 = _mm256_hadd_ps(narrow8(acc[4]), narrow8(acc[5]));
    const __m256 a67 = _mm256_hadd_ps(narrow8(acc[6]), narrow8(acc[7]));
    const __m256 a0123 = _mm256_hadd_ps(a01, a23);  // [0 1 2 3 | 0 1 2 3]: halves of each
    const __m256 a4567 = _mm256_hadd_ps(a45, a67);
    const __m256 sums = _mm256_add_ps(_mm256_permute2f128_ps(a0123, a4567, 0x20),
                                      _mm256_permute2f128_ps(a0123, a4567, 0x31));
    _mm256_storeu_ps(out, sums);
  } else if constexpr (kKeys == 4) {
    const __m256 a0123 = _mm256_hadd_ps(_mm256_hadd_ps(narrow8(acc[0]), narrow8(acc[1])),
                                        _mm256_hadd_ps(narrow8(acc[2]), narrow8(acc[3])));
    _mm_storeu_ps(out, _mm_add_ps(_mm256_castps256_ps128(a0123),
                                  _mm256_extractf128_ps(a0123, 1)));
  } else {
    for (int t = 0; t < kKeys; ++t) out[t] = sum_lanes(acc[t]);
  }
}
#else
template <int kKeys>
inline void reduce_store(const Vec* acc, float* out) {
  for (int t = 0; t < kKeys; ++t) out[t] = sum_lanes(acc[t]);
}
#endif

// out[t] = q . k[t * stride : +d] for kKeys rows: q's vectors are loaded once for all the
// rows, and the rows' sums are independent chains (8 keep both FMA pipes busy).
template <int kKeys>
inline void dot_rows(const float* q, const float* k, int64_t stride, int64_t d, float* out) {
  Vec acc[kKeys];
#pragma GCC unroll 8
  for (int t = 0; t < kKeys; ++t) acc[t] = Vec{};
  int64_t i = 0;
  for (; i + kLanes <= d; i += kLanes) {
    const Vec qv = load(q + i);
#pragma GCC unroll 8
    for (int t = 0; t < kKeys; ++t) acc[t] += qv * load(k + t * stride + i);
  }
  reduce_store<kKeys>(acc, out);
  for (; i < d; ++i)
    for (int t = 0; t < kKeys; ++t) out[t] += q[i] * k[t * stride + i];
}

// out[0:n] = q . k[t * stride : +d] for each of n rows.
inline void dot_block(const float* q, const float* k, int64_t stride, int64_t d, int64_t n,
                      float* out) {
  int64_t t = 0;
  for (; t + 8 <= n; t += 8) dot_rows<8>(q, k + t * stride, stride, d, out + t);
  if (t + 4 <= n) {
    dot_rows<4>(q, k + t * stride, stride, d, out + t);
    t += 4;
  }
  for (; t < n; ++t) dot_rows<1>(q, k + t * stride, stride, d, out + t);
}

// acc[0:kVecs * kLanes] = acc * correction + sum over t < n of p[t] * v[t * stride : ...]:
// the accumulator stays in registers over the block's rows.
template <int kVecs>
inline void axpy_rows(float* acc, float correction, const float* p, const float* v,
                      int64_t stride, int64_t n) {
  Vec a[kVecs];
#pragma GCC unroll 8
  for (int j = 0; j < kVecs; ++j) a[j] = load(acc + j * kLanes) * correction;
  for (int64_t t = 0; t < n; ++t) {
    const float pt = p[t];
    const float* row = v + t * stride;
#pragma GCC unroll 8
    for (int j = 0; j < kVecs; ++j) a[j] += pt * load(row + j * kLanes);
  }
#pragma GCC unroll 8
  for (int j = 0; j < kVecs; ++j) store(acc + j * kLanes, a[j]);
}

// acc[0:d] = acc * correction + sum over t < n of p[t] * v[t * stride : +d], in column tiles
// of at most 8 registers.
inline void axpy_block(float* acc, float correction, const float* p, const float* v,
                       int64_t stride, int64_t d, int64_t n) {
  int64_t i = 0;
  for (; i + 8 * kLanes <= d; i += 8 * kLanes) axpy_rows<8>(acc + i, correction, p, v + i, stride, n);
  if (i + 4 * kLanes <= d) {
    axpy_rows<4>(acc + i, correction, p, v + i, stride, n);
    i += 4 * kLanes;
  }
  if (i + 2 * kLanes <= d) {
    axpy_rows<2>(acc + i, correction, p, v + i, stride, n);
    i += 2 * kLanes;
  }
  for (; i + kLanes <= d; i += kLanes) axpy_rows<1>(acc + i, correction, p, v + i, stride, n);
  for (; i < d; ++i) {
    float a = acc[i] * correction;
    for (int64_t t = 0; t < n; ++t) a += p[t] * v[t * stride + i];
    acc[i] = a;
  }
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

// Rows [lo, lo + n) of KV heads [h0, h1) of one block, as float32: the cache's own memory for
// float32, else converted into `buf` ([n][h1 - h0][D]). Returns the first row of head h0 and
// sets the row stride.
inline const float* block_rows(const float* cache, int64_t row0, int64_t n, int64_t h0,
                               int64_t h1, const Shape& s, float*, int64_t& row_stride) {
  row_stride = s.k_row_stride;
  (void)n, (void)h1;
  return cache + row0 + h0 * s.k_head_stride;
}

template <typename T>
inline const float* block_rows(const T* cache, int64_t row0, int64_t n, int64_t h0, int64_t h1,
                               const Shape& s, float* buf, int64_t& row_stride) {
  const int64_t D = s.head_size, width = (h1 - h0) * D;
  row_stride = width;
  for (int64_t t = 0; t < n; ++t)
    for (int64_t kv = h0; kv < h1; ++kv) {
      const T* src = cache + row0 + t * s.k_row_stride + kv * s.k_head_stride;
      float* dst = buf + t * width + (kv - h0) * D;
      for (int64_t d = 0; d < D; ++d) dst[d] = octavo_cpu::to_float(src[d]);
    }
  return buf;
}

// Prefetch of the K and V rows of a block (rows `row_stride` elements apart, each
// `row_elems` long; one run when they are adjacent), a share of the lines at each step of the
// current block's work: a burst of hundreds of prefetches would wait on the core's few
// outstanding misses instead of computing.
struct Prefetcher {
  const char* k = nullptr;
  const char* v = nullptr;
  int64_t runs = 0, run_stride = 0, run_bytes = 0, per_step = 0;
  int64_t run = 0, offset = 0;  // the next line to ask for

  template <typename T>
  void start(const T* k_rows, const T* v_rows, int64_t rows, int64_t row_stride,
             int64_t row_elems, int64_t steps) {
    k = reinterpret_cast<const char*>(k_rows);
    v = reinterpret_cast<const char*>(v_rows);
    run_stride = row_stride * static_cast<int64_t>(sizeof(T));
    run_bytes = row_elems * static_cast<int64_t>(sizeof(T));
    runs = rows;
    if (run_bytes == run_stride) {  // one contiguous run
      run_bytes *= rows;
      runs = 1;
    }
    const int64_t lines = runs * ((run_bytes + 63) / 64);
    per_step = (lines + steps - 1) / steps;
  }

  inline void step() {
    for (int64_t left = per_step; left > 0 && run < runs;) {
      const char* kr = k + run * run_stride;
      const char* vr = v + run * run_stride;
      const int64_t end = std::min(run_bytes, offset + left * 64);
      for (; offset < end; offset += 64, --left) {
        __builtin_prefetch(kr + offset);
        __builtin_prefetch(vr + offset);
      }
      if (offset >= run_bytes) {
        offset = 0;
        ++run;
      }
    }
  }
};

// Attention of the query heads of KV heads [h0, h1) for one query token at position `pos`.
// Rows of consecutive KV heads are adjacent in the cache, so a work item that takes every
// KV head reads each block as one contiguous run. Per block: the scores of each query head
// (its K rows in L1 after the group's first head), an online-softmax step, then each head's
// weighted sum of the V rows with its accumulator in registers.
template <typename T>
void attend_token(const T* q_token, T* out_token, const T* key_cache, const T* value_cache,
                  const int32_t* block_table, int64_t pos, int64_t h0, int64_t h1,
                  const Shape& s, const Options& o, std::vector<float>& scratch) {
  const int64_t G = s.num_heads / s.num_kv_heads, D = s.head_size, B = s.block_size;
  const int64_t H = (h1 - h0) * G;  // query heads of this item
  const int64_t conv = std::is_same_v<T, float> ? 0 : B * (h1 - h0) * D;  // converted rows
  scratch.resize(H * D * 2 + H * B + 3 * H + 2 * conv);
  float* q = scratch.data();         // [H][D], scaled
  float* acc = q + H * D;            // [H][D]
  float* scores = acc + H * D;       // [H][B]
  float* running_max = scores + H * B;
  float* running_sum = running_max + H;
  float* correction = running_sum + H;
  float* k_buf = correction + H;     // [B][h1 - h0][D], converted K rows
  float* v_buf = k_buf + conv;
  for (int64_t h = 0; h < H; ++h) {
    const T* src = q_token + (h0 * G + h) * s.q_head_stride;
    for (int64_t d = 0; d < D; ++d) q[h * D + d] = octavo_cpu::to_float(src[d]) * o.scale;
    running_max[h] = -INFINITY;
    running_sum[h] = 0.0f;
  }
  std::fill(acc, acc + H * D, 0.0f);

  const int64_t first = o.sliding_window > 0 ? std::max<int64_t>(0, pos - o.sliding_window + 1) : 0;
  for (int64_t block = first / B; block <= pos / B; ++block) {
    const int64_t lo = std::max(first, block * B), hi = std::min(pos + 1, (block + 1) * B);
    const int64_t n = hi - lo;
    const int64_t row0 = block_table[block] * s.k_block_stride + (lo - block * B) * s.k_row_stride;
    // The next block sits anywhere in the pool, out of the hardware prefetcher's sight: its
    // rows are prefetched a few lines after each head's work on this block.
    Prefetcher next;
    if (block < pos / B) {
      const int64_t at = block_table[block + 1] * s.k_block_stride + h0 * s.k_head_stride;
      next.start(key_cache + at, value_cache + at, std::min(B, pos + 1 - (block + 1) * B),
                 s.k_row_stride, (h1 - h0) * s.k_head_stride, 2 * H);
    }
    int64_t stride;
    const float* k = block_rows(key_cache, row0, n, h0, h1, s, k_buf, stride);
    const int64_t head_stride = std::is_same_v<T, float> ? s.k_head_stride : D;
    for (int64_t kv = h0; kv < h1; ++kv)
      for (int64_t g = 0; g < G; ++g) {
        const int64_t h = (kv - h0) * G + g;
        dot_block(q + h * D, k + (kv - h0) * head_stride, stride, D, n, scores + h * B);
        next.step();
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
#pragma omp simd reduction(max : block_max)
      for (int64_t t = 0; t < n; ++t) block_max = sh[t] > block_max ? sh[t] : block_max;
      correction[h] = exp_nonpositive(running_max[h] - block_max);
      float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
      for (int64_t t = 0; t < n; ++t) {
        sh[t] = exp_nonpositive(sh[t] - block_max);
        sum += sh[t];
      }
      running_sum[h] = running_sum[h] * correction[h] + sum;
      running_max[h] = block_max;
    }
    const float* v = block_rows(value_cache, row0, n, h0, h1, s, v_buf, stride);
    for (int64_t kv = h0; kv < h1; ++kv)
      for (int64_t g = 0; g < G; ++g) {
        const int64_t h = (kv - h0) * G + g;
        axpy_block(acc + h * D, correction[h], scores + h * B, v + (kv - h0) * head_stride,
                   stride, D, n);
        next.step();
      }
  }
  for (int64_t h = 0; h < H; ++h) {
    const float inv = 1.0f / running_sum[h];
    T* dst = out_token + (h0 * G + h) * s.q_head_stride;
    const float* ah = acc + h * D;
    for (int64_t d = 0; d < D; ++d) dst[d] = octavo_cpu::from_float<T>(ah[d] * inv);
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
