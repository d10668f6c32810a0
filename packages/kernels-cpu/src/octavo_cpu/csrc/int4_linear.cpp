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
// Per panel and block of up to 4 rows, the kernel keeps the 4 x 16 block of y in registers;
// per input feature it loads the panel's 8 bytes of codes once, unpacks them in registers
// (broadcast, variable shift, mask, convert: 2 vectors of 8 weights), dequantizes with one
// FMA per vector and feeds every row of the block. One row (decode) streams the 4-bit weight
// once: an eighth of the bytes of the float32 product. Threads split the panels
// (at::parallel_for). Accumulation is float32 in order of k; no fast-math. Without AVX2 and
// FMA (the generic build) a scalar loop computes the same products.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
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

void store_block(const Int4Args& a, int64_t row, const float* values) {
  float* out = a.y + row * a.ldy;
  for (int64_t c = 0; c < a.cols; ++c) out[c] = values[c] + (a.bias ? a.bias[c] : 0.0f);
}

#ifdef OCTAVO_INT4_AVX2
template <int Rows>
void panel_block(const Int4Args& a) {
  __m256 acc[Rows][2];
  for (int r = 0; r < Rows; ++r) acc[r][0] = acc[r][1] = _mm256_setzero_ps();
  const __m256i shifts = _mm256_setr_epi32(0, 4, 8, 12, 16, 20, 24, 28);
  const __m256i mask = _mm256_set1_epi32(0xF);
  int64_t k = 0;
  for (int64_t g = 0; g < a.groups; ++g) {
    const float* sz = a.scale_zero + g * 2 * kPanel;
    const __m256 s0 = _mm256_loadu_ps(sz), s1 = _mm256_loadu_ps(sz + 8);
    const __m256 z0 = _mm256_loadu_ps(sz + 16), z1 = _mm256_loadu_ps(sz + 24);
    for (const int64_t end = a.group_ends[g]; k < end; ++k) {
      const uint32_t* w = a.words + 2 * k;
      const __m256i q0 = _mm256_and_si256(
          _mm256_srlv_epi32(_mm256_set1_epi32(static_cast<int>(w[0])), shifts), mask);
      const __m256i q1 = _mm256_and_si256(
          _mm256_srlv_epi32(_mm256_set1_epi32(static_cast<int>(w[1])), shifts), mask);
      const __m256 w0 = _mm256_fmsub_ps(_mm256_cvtepi32_ps(q0), s0, z0);
      const __m256 w1 = _mm256_fmsub_ps(_mm256_cvtepi32_ps(q1), s1, z1);
      for (int r = 0; r < Rows; ++r) {
        const __m256 xb = _mm256_broadcast_ss(a.x + r * a.ldx + k);
        acc[r][0] = _mm256_fmadd_ps(w0, xb, acc[r][0]);
        acc[r][1] = _mm256_fmadd_ps(w1, xb, acc[r][1]);
      }
    }
  }
  alignas(32) float values[kPanel];
  for (int r = 0; r < Rows; ++r) {
    _mm256_store_ps(values, acc[r][0]);
    _mm256_store_ps(values + 8, acc[r][1]);
    store_block(a, r, values);
  }
}
// The panel's weights as float32 [K, 16], for blocks of many rows: unpacked once, not once
// per block of 4 rows.
void dequantize_panel(const Int4Args& a, int64_t k_dim, float* w) {
  const __m256i shifts = _mm256_setr_epi32(0, 4, 8, 12, 16, 20, 24, 28);
  const __m256i mask = _mm256_set1_epi32(0xF);
  int64_t k = 0;
  for (int64_t g = 0; g < a.groups; ++g) {
    const float* sz = a.scale_zero + g * 2 * kPanel;
    const __m256 s0 = _mm256_loadu_ps(sz), s1 = _mm256_loadu_ps(sz + 8);
    const __m256 z0 = _mm256_loadu_ps(sz + 16), z1 = _mm256_loadu_ps(sz + 24);
    for (const int64_t end = a.group_ends[g]; k < end; ++k) {
      const uint32_t* q = a.words + 2 * k;
      const __m256i q0 = _mm256_and_si256(
          _mm256_srlv_epi32(_mm256_set1_epi32(static_cast<int>(q[0])), shifts), mask);
      const __m256i q1 = _mm256_and_si256(
          _mm256_srlv_epi32(_mm256_set1_epi32(static_cast<int>(q[1])), shifts), mask);
      _mm256_storeu_ps(w + k * kPanel, _mm256_fmsub_ps(_mm256_cvtepi32_ps(q0), s0, z0));
      _mm256_storeu_ps(w + k * kPanel + 8, _mm256_fmsub_ps(_mm256_cvtepi32_ps(q1), s1, z1));
    }
  }
  (void)k_dim;
}

template <int Rows>
void dense_block(const Int4Args& a, const float* w, int64_t k_dim) {
  __m256 acc[Rows][2];
  for (int r = 0; r < Rows; ++r) acc[r][0] = acc[r][1] = _mm256_setzero_ps();
  for (int64_t k = 0; k < k_dim; ++k) {
    const __m256 w0 = _mm256_loadu_ps(w + k * kPanel), w1 = _mm256_loadu_ps(w + k * kPanel + 8);
    for (int r = 0; r < Rows; ++r) {
      const __m256 xb = _mm256_broadcast_ss(a.x + r * a.ldx + k);
      acc[r][0] = _mm256_fmadd_ps(w0, xb, acc[r][0]);
      acc[r][1] = _mm256_fmadd_ps(w1, xb, acc[r][1]);
    }
  }
  alignas(32) float values[kPanel];
  for (int r = 0; r < Rows; ++r) {
    _mm256_store_ps(values, acc[r][0]);
    _mm256_store_ps(values + 8, acc[r][1]);
    store_block(a, r, values);
  }
}

void panel_rows_dense(Int4Args a, int64_t rows, int64_t k_dim) {
  thread_local std::vector<float> buffer;
  if (static_cast<int64_t>(buffer.size()) < k_dim * kPanel) buffer.resize(k_dim * kPanel);
  dequantize_panel(a, k_dim, buffer.data());
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
  for (int r = 0; r < Rows; ++r) store_block(a, r, acc[r]);
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
