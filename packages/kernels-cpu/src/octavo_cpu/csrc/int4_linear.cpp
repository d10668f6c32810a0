// 4-bit group-quantized product y = x @ W.T (+ bias) on the CPU, float32 activations.
//
// Op (namespace torch.ops.octavo_cpu; the library itself is defined in paged_attention.cpp):
//   int4_linear(x, packed, scale_zero, group_ends, n, bias?) -> y
//       x [M, K] float32 (copied unless contiguous), y [M, n] float32
//       packed [P, K, 2] int32, P = ceil(n / 16): panel p holds output features p*16 ..
//           p*16+15; word j of input feature k holds the 4-bit codes of features p*16+j*8 ..
//           p*16+j*8+7, feature p*16+j*8+i in bits 4i .. 4i+3 (zero-padded past n)
//       scale_zero [P, G, 32] float32: per panel and group, the 16 scales, then the 16
//           products scale * zero (zero-padded past n)
//       group_ends [G] int64: group g covers input features group_ends[g-1] .. group_ends[g]-1
//           (contiguous runs; a desc_act weight is permuted into group order by the caller)
//   W[o, k] = scale[g, o] * q[k, o] - (scale * zero)[g, o], computed as one fused multiply-add.
//
// Up to 7 rows: per panel and block of up to 4 rows, the kernel keeps the block of y in
// registers; per input feature it loads the panel's 8 bytes of codes, unpacks them in
// registers (broadcast, variable shift, mask, convert: 2 vectors of 8 weights), dequantizes
// with one FMA per vector and feeds every row of the block. One row (decode) streams the 4-bit
// weight once, an eighth of the bytes of the float32 product, with two sets of accumulators
// (even and odd k). From 8 rows: each panel is unpacked once into a per-thread float32 buffer
// [K, 16], which blocks of 6 rows then read as the dense kernel reads its panels. Threads split
// the panels (at::parallel_for). Accumulation is float32, each k once; no fast-math. Without
// AVX2 and FMA (the generic build) a scalar loop computes the same products.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <optional>
#include <vector>

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define OCTAVO_INT4_AVX2 1
#endif

namespace {

constexpr int64_t kPanel = 16;  // output features per panel
constexpr int64_t kBlockRows = 4;  // rows of y per register block, unpacking per block
constexpr int64_t kDenseFrom = 8;  // from this many rows, unpack the panel once into a buffer
constexpr int64_t kDenseRows = 6;  // rows of y per register block on the unpacked panel


struct Int4Args {
  const float* x;
  int64_t ldx;
  const uint32_t* words;  // this panel's [K, 2]
  const float* scale_zero;  // this panel's [G, 32]
  const int64_t* group_ends;
  int64_t groups;
  const float* bias;  // this panel's 16 (or nullptr)
  float* y;
  int64_t ldy;
  int64_t cols;  // valid output features of this panel (<= 16)
};

void store_row(const Int4Args& a, int64_t row, const float* values) {
  float* out = a.y + row * a.ldy;
  for (int64_t c = 0; c < a.cols; ++c) out[c] = values[c] + (a.bias ? a.bias[c] : 0.0f);
}

#ifdef OCTAVO_INT4_AVX2
// Accumulators: a plain vector type, not __m256, which may alias any memory and so would make
// the compiler keep an array of them in memory, stored on every iteration.
typedef float Acc __attribute__((vector_size(32)));

// Writes the Rows x 16 accumulators.
template <int Rows>
inline void store_block(const Int4Args& a, Acc (&acc)[Rows][2]) {
  alignas(32) float values[kPanel];
  for (int r = 0; r < Rows; ++r) {
    _mm256_store_ps(values, (__m256)acc[r][0]);
    _mm256_store_ps(values + 8, (__m256)acc[r][1]);
    store_row(a, r, values);
  }
}

// The 16 weights of input feature k: the two words unpacked (broadcast, shift each lane by
// 4 * lane, mask) and dequantized as q * scale - scale * zero.
inline void unpack16(const uint32_t* words, int64_t k, const __m256 s[2], const __m256 z[2],
                     Acc& w0, Acc& w1) {
  const __m256i shifts = _mm256_setr_epi32(0, 4, 8, 12, 16, 20, 24, 28);
  const __m256i mask = _mm256_set1_epi32(0xF);
  const __m256i q0 = _mm256_and_si256(
      _mm256_srlv_epi32(_mm256_set1_epi32(static_cast<int>(words[2 * k])), shifts), mask);
  const __m256i q1 = _mm256_and_si256(
      _mm256_srlv_epi32(_mm256_set1_epi32(static_cast<int>(words[2 * k + 1])), shifts), mask);
  w0 = (Acc)_mm256_fmsub_ps(_mm256_cvtepi32_ps(q0), s[0], z[0]);
  w1 = (Acc)_mm256_fmsub_ps(_mm256_cvtepi32_ps(q1), s[1], z[1]);
}

inline void load_group(const Int4Args& a, int64_t g, __m256 s[2], __m256 z[2]) {
  const float* sz = a.scale_zero + g * 2 * kPanel;
  s[0] = _mm256_loadu_ps(sz);
  s[1] = _mm256_loadu_ps(sz + 8);
  z[0] = _mm256_loadu_ps(sz + 16);
  z[1] = _mm256_loadu_ps(sz + 24);
}

// Up to 4 rows, the panel unpacked per block. One row keeps two sets of accumulators (even
// and odd k) so consecutive FMAs do not wait on each other; they are added at the end.
template <int Rows>
void panel_block(const Int4Args& a) {
  constexpr int kSets = Rows == 1 ? 2 : 1;
  Acc acc[kSets][Rows][2] = {};
  const float* xr[Rows];
  for (int r = 0; r < Rows; ++r) xr[r] = a.x + r * a.ldx;
  int64_t k = 0;
  for (int64_t g = 0; g < a.groups; ++g) {
    __m256 s[2], z[2];
    load_group(a, g, s, z);
    const int64_t end = a.group_ends[g];
    for (; k + kSets <= end; k += kSets) {
      for (int u = 0; u < kSets; ++u) {
        Acc w0, w1;
        unpack16(a.words, k + u, s, z, w0, w1);
        for (int r = 0; r < Rows; ++r) {
          const float xv = xr[r][k + u];
          acc[u][r][0] += xv * w0;
          acc[u][r][1] += xv * w1;
        }
      }
    }
    for (; k < end; ++k) {
      Acc w0, w1;
      unpack16(a.words, k, s, z, w0, w1);
      for (int r = 0; r < Rows; ++r) {
        const float xv = xr[r][k];
        acc[0][r][0] += xv * w0;
        acc[0][r][1] += xv * w1;
      }
    }
  }
  for (int u = 1; u < kSets; ++u)
    for (int r = 0; r < Rows; ++r) {
      acc[0][r][0] += acc[u][r][0];
      acc[0][r][1] += acc[u][r][1];
    }
  store_block<Rows>(a, acc[0]);
}

// The panel's weights as float32 [K, 16], for blocks of many rows: unpacked once, not once
// per block of 4 rows.
void dequantize_panel(const Int4Args& a, float* w) {
  int64_t k = 0;
  for (int64_t g = 0; g < a.groups; ++g) {
    __m256 s[2], z[2];
    load_group(a, g, s, z);
    for (const int64_t end = a.group_ends[g]; k < end; ++k) {
      Acc w0, w1;
      unpack16(a.words, k, s, z, w0, w1);
      std::memcpy(w + k * kPanel, &w0, sizeof(Acc));
      std::memcpy(w + k * kPanel + 8, &w1, sizeof(Acc));
    }
  }
}

template <int Rows>
void dense_block(const Int4Args& a, const float* w, int64_t k_dim) {
  Acc acc[Rows][2] = {};
  const float* xr[Rows];
  for (int r = 0; r < Rows; ++r) xr[r] = a.x + r * a.ldx;
  for (int64_t k = 0; k < k_dim; ++k) {
    Acc w0, w1;
    std::memcpy(&w0, w + k * kPanel, sizeof(Acc));
    std::memcpy(&w1, w + k * kPanel + 8, sizeof(Acc));
    for (int r = 0; r < Rows; ++r) {
      const float xv = xr[r][k];
      acc[r][0] += xv * w0;
      acc[r][1] += xv * w1;
    }
  }
  store_block<Rows>(a, acc);
}

void panel_rows_dense(Int4Args a, int64_t rows, int64_t k_dim) {
  thread_local std::vector<float> buffer;
  if (static_cast<int64_t>(buffer.size()) < k_dim * kPanel) buffer.resize(k_dim * kPanel);
  dequantize_panel(a, buffer.data());
  for (int64_t r = 0; r < rows; r += kDenseRows) {
    Int4Args block = a;
    block.x = a.x + r * a.ldx;
    block.y = a.y + r * a.ldy;
    switch (std::min(kDenseRows, rows - r)) {
      case 1: dense_block<1>(block, buffer.data(), k_dim); break;
      case 2: dense_block<2>(block, buffer.data(), k_dim); break;
      case 3: dense_block<3>(block, buffer.data(), k_dim); break;
      case 4: dense_block<4>(block, buffer.data(), k_dim); break;
      case 5: dense_block<5>(block, buffer.data(), k_dim); break;
      default: dense_block<6>(block, buffer.data(), k_dim); break;
    }
  }
}
#else
template <int Rows>
void panel_block(const Int4Args& a) {
  float acc[Rows][kPanel] = {};
  int64_t k = 0;
  for (int64_t g = 0; g < a.groups; ++g) {
    const float* sz = a.scale_zero + g * 2 * kPanel;
    for (const int64_t end = a.group_ends[g]; k < end; ++k) {
      float w[kPanel];
      for (int64_t c = 0; c < kPanel; ++c) {
        const uint32_t q = (a.words[2 * k + c / 8] >> (4 * (c % 8))) & 0xF;
        w[c] = std::fma(static_cast<float>(q), sz[c], -sz[kPanel + c]);
      }
      for (int r = 0; r < Rows; ++r) {
        const float xv = a.x[r * a.ldx + k];
        for (int64_t c = 0; c < kPanel; ++c) acc[r][c] = std::fma(w[c], xv, acc[r][c]);
      }
    }
  }
  for (int r = 0; r < Rows; ++r) store_row(a, r, acc[r]);
}
#endif

void panel_rows(Int4Args a, int64_t rows, int64_t k_dim) {
#ifdef OCTAVO_INT4_AVX2
  if (rows >= kDenseFrom) return panel_rows_dense(a, rows, k_dim);
#endif
  (void)k_dim;
  for (int64_t r = 0; r < rows; r += kBlockRows) {
    Int4Args block = a;
    block.x = a.x + r * a.ldx;
    block.y = a.y + r * a.ldy;
    switch (std::min(kBlockRows, rows - r)) {
      case 1: panel_block<1>(block); break;
      case 2: panel_block<2>(block); break;
      case 3: panel_block<3>(block); break;
      default: panel_block<4>(block); break;
    }
  }
}

at::Tensor int4_linear(const at::Tensor& x_in, const at::Tensor& packed,
                       const at::Tensor& scale_zero, const at::Tensor& group_ends, int64_t n,
                       const std::optional<at::Tensor>& bias) {
  TORCH_CHECK(x_in.dim() == 2 && x_in.scalar_type() == at::kFloat,
              "int4_linear: x must be [M, K] float32");
  TORCH_CHECK(packed.dim() == 3 && packed.size(2) == 2 && packed.scalar_type() == at::kInt &&
                  packed.is_contiguous(),
              "int4_linear: packed must be a contiguous [P, K, 2] int32 tensor");
  const int64_t rows = x_in.size(0), k_dim = x_in.size(1), panels = packed.size(0);
  const int64_t groups = group_ends.numel();
  TORCH_CHECK(packed.size(1) == k_dim, "int4_linear: x has ", k_dim, " features, the weight ",
              packed.size(1));
  TORCH_CHECK(panels == (n + kPanel - 1) / kPanel, "int4_linear: n does not match the panels");
  TORCH_CHECK(scale_zero.is_contiguous() && scale_zero.scalar_type() == at::kFloat &&
                  scale_zero.dim() == 3 && scale_zero.size(0) == panels &&
                  scale_zero.size(1) == groups && scale_zero.size(2) == 2 * kPanel,
              "int4_linear: scale_zero must be a contiguous [P, G, 32] float32 tensor");
  TORCH_CHECK(group_ends.scalar_type() == at::kLong && group_ends.is_contiguous() &&
                  groups > 0 && group_ends.data_ptr<int64_t>()[groups - 1] == k_dim,
              "int4_linear: group_ends must be int64 and end at K");
  const at::Tensor x = x_in.stride(1) == 1 ? x_in : x_in.contiguous();
  at::Tensor b;
  if (bias.has_value() && bias->defined()) {
    b = bias->contiguous();
    TORCH_CHECK(b.scalar_type() == at::kFloat && b.numel() == n, "int4_linear: bias must be [n]");
  }
  at::Tensor y = at::empty({rows, n}, x.options());
  const float* xp = x.data_ptr<float>();
  const auto* words = reinterpret_cast<const uint32_t*>(packed.data_ptr<int32_t>());
  const float* sz = scale_zero.data_ptr<float>();
  const int64_t* ends = group_ends.data_ptr<int64_t>();
  const float* bp = b.defined() ? b.data_ptr<float>() : nullptr;
  float* yp = y.data_ptr<float>();
  const int64_t ldx = x.stride(0);
  at::parallel_for(0, panels, 1, [&](int64_t begin, int64_t end) {
    for (int64_t p = begin; p < end; ++p) {
      Int4Args a{xp, ldx, words + p * k_dim * 2, sz + p * groups * 2 * kPanel, ends, groups,
                 bp ? bp + p * kPanel : nullptr, yp + p * kPanel, n,
                 std::min(kPanel, n - p * kPanel)};
      panel_rows(a, rows, k_dim);
    }
  });
  return y;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(octavo_cpu, m) {
  m.def("int4_linear(Tensor x, Tensor packed, Tensor scale_zero, Tensor group_ends, int n, "
        "Tensor? bias) -> Tensor");
}

TORCH_LIBRARY_IMPL(octavo_cpu, CPU, m) { m.impl("int4_linear", &int4_linear); }
