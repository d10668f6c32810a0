// 8-bit group-quantized product y = x @ W.T (+ bias) on the CPU, float32 activations.
//
// Op (namespace torch.ops.octavo_cpu; the library itself is defined in paged_attention.cpp):
//   int8_linear(x, packed, scale_zero, group_ends, n, bias?) -> y
//       x [M, K] float32 (copied unless its stride along K is 1), y [M, n] float32
//       packed [P, K, 16] uint8, P = ceil(n / 16): panel p holds output features p*16 ..
//           p*16+15; byte j of input feature k is the code of feature p*16+j (zero past n)
//       scale_zero [P, G, 32] float32: per panel and group, the 16 scales, then the 16
//           products scale * zero (zero-padded past n), as int4_linear's
//       group_ends [G] int64: group g covers input features group_ends[g-1] .. group_ends[g]-1
//           (contiguous runs; a desc_act weight is permuted into group order by the caller)
//   W[o, k] = scale[g, o] * q[k, o] - (scale * zero)[g, o]
//
// The layout is int4_linear's (csrc/int4_linear.cpp) with a byte per code, and so is the
// schedule from 16 rows: each panel is dequantized once (codes zero-extended and converted in
// registers, one FMA per vector) into a per-thread float32 buffer [K, 16] that blocks of rows
// (as even as possible, at most 6 with AVX2, 12 with AVX-512) read as the dense kernel reads
// its panels. Up to 15 rows, per panel and block of rows (as even as possible, at most 6 with
// AVX2, 12 with AVX-512), the weight is not dequantized: per input feature the panel's 16 codes are widened to floats
// (2 x 8 lanes with AVX2, 1 x 16 with AVX-512) and each row adds x * q into a per-run sum;
// at the end of a run of one group the sum enters y as scale * sum - (scale * zero) *
// (the run's sum of x, computed once per call): one FMA per row, vector and input feature,
// instead of a dequantizing FMA more (measured: 1 row 25% faster). The packer cuts groups
// into runs of at most 128 (a group of -1 too), so the sums stay short: within float32
// rounding of the dequantized product, as F.linear is. One row (decode) streams the 8-bit
// weight once, a quarter of the bytes of the float32 product, with two sets of sums (even
// and odd k). Threads split the panels (at::parallel_for). float32 arithmetic; no fast-math.
//
// Written with GCC vector types of the ISA's width (not __m256 arrays, which may alias any
// memory and were kept on the stack in int4_linear's first version; not 16-lane vectors on
// AVX2, which spill); the generic build runs the same code on 4-lane vectors.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <optional>
#include <vector>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

namespace {

constexpr int64_t kPanel = 16;  // output features per panel
#if defined(__AVX512F__)
constexpr int kLanes = 16;
constexpr int64_t kDenseRows = 12;  // 12 accumulators + weight + broadcast of 32 zmm
#elif defined(__AVX2__)
constexpr int kLanes = 8;
constexpr int64_t kDenseRows = 6;  // 12 accumulators + 2 weights + broadcast of 16 ymm
#else
constexpr int kLanes = 4;  // SSE2 (or another ISA's 128-bit vectors)
constexpr int64_t kDenseRows = 3;  // 12 accumulators + 4 weights of 16 xmm
#endif
constexpr int kVecs = kPanel / kLanes;  // vectors per panel row
constexpr int64_t kBlockRows = kDenseRows;  // rows per register block of run sums
// From this many rows, dequantize each panel once into a buffer. Measured (AVX2, SmolLM2
// shapes): run sums 1.05-1.1x faster at 8 rows, even at 16, 1.05-1.1x slower at 64.
constexpr int64_t kDenseFrom = 16;

typedef float Vec __attribute__((vector_size(kLanes * sizeof(float))));

inline Vec load(const float* p) {
  Vec v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

struct Int8Args {
  const float* x;
  int64_t ldx;
  const uint8_t* codes;  // this panel's [K, 16]
  const float* scale_zero;  // this panel's [G, 32]
  const int64_t* group_ends;
  int64_t groups;
  const float* bias;  // this panel's 16 (or nullptr)
  float* y;
  int64_t ldy;
  int64_t cols;  // valid output features of this panel (<= 16)
  const float* xsum;  // [rows, G]: each row's sum of x over each group (few rows only)
};

// Writes the Rows x 16 accumulators (plus the bias) to the valid columns of y.
template <int Rows>
inline void store_block(const Int8Args& a, Vec (&acc)[Rows][kVecs]) {
  for (int r = 0; r < Rows; ++r) {
    float values[kPanel];
    std::memcpy(values, acc[r], sizeof(values));
    float* out = a.y + r * a.ldy;
    for (int64_t c = 0; c < a.cols; ++c) out[c] = values[c] + (a.bias ? a.bias[c] : 0.0f);
  }
}

struct Group {
  Vec s[kVecs], z[kVecs];
};

inline Group load_group(const Int8Args& a, int64_t g) {
  const float* sz = a.scale_zero + g * 2 * kPanel;
  Group out;
  for (int v = 0; v < kVecs; ++v) {
    out.s[v] = load(sz + v * kLanes);
    out.z[v] = load(sz + kPanel + v * kLanes);
  }
  return out;
}

// kLanes codes widened to floats: zero-extended to int32 (one vpmovzxbd from memory with AVX2
// and AVX-512; GCC's __builtin_convertvector widened byte by byte) and converted.
inline Vec widen(const uint8_t* q) {
#if defined(__AVX512F__)
  return (Vec)_mm512_cvtepi32_ps(
      _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(q))));
#elif defined(__AVX2__)
  return (Vec)_mm256_cvtepi32_ps(
      _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(q))));
#elif defined(__SSE2__)
  int32_t bits;
  std::memcpy(&bits, q, sizeof(bits));
  const __m128i zero = _mm_setzero_si128();
  const __m128i bytes = _mm_cvtsi32_si128(bits);
  return (Vec)_mm_cvtepi32_ps(_mm_unpacklo_epi16(_mm_unpacklo_epi8(bytes, zero), zero));
#else
  Vec v;
  for (int i = 0; i < kLanes; ++i) v[i] = static_cast<float>(q[i]);
  return v;
#endif
}

// The 16 weights of input feature k, dequantized as q * scale - scale * zero (one FMA where
// the ISA has it: not the generic build).
inline void dequantize16(const uint8_t* codes, int64_t k, const Group& g, Vec (&w)[kVecs]) {
  for (int v = 0; v < kVecs; ++v) w[v] = widen(codes + k * kPanel + v * kLanes) * g.s[v] - g.z[v];
}

// A block of up to kBlockRows rows. Per run of one group, the codes (as floats) times x are
// summed without the scale, and the run's sum enters y as scale * sum - (scale * zero) *
// (the run's sum of x): per input feature one FMA per row and vector, no dequantization.
// One row keeps two sets of sums (even and odd k) so consecutive FMAs do not wait on each
// other.
template <int Rows>
void panel_block(const Int8Args& a) {
  constexpr int kSets = Rows == 1 ? 2 : 1;
  Vec acc[Rows][kVecs] = {};
  const float* xr[Rows];
  for (int r = 0; r < Rows; ++r) xr[r] = a.x + r * a.ldx;
  int64_t k = 0;
  for (int64_t g = 0; g < a.groups; ++g) {
    Vec sum[kSets][Rows][kVecs] = {};
    const int64_t end = a.group_ends[g];
    for (; k + kSets <= end; k += kSets) {
      for (int u = 0; u < kSets; ++u) {
        Vec q[kVecs];
        for (int v = 0; v < kVecs; ++v) q[v] = widen(a.codes + (k + u) * kPanel + v * kLanes);
        for (int r = 0; r < Rows; ++r) {
          const float xv = xr[r][k + u];
          for (int v = 0; v < kVecs; ++v) sum[u][r][v] += xv * q[v];
        }
      }
    }
    for (; k < end; ++k) {
      Vec q[kVecs];
      for (int v = 0; v < kVecs; ++v) q[v] = widen(a.codes + k * kPanel + v * kLanes);
      for (int r = 0; r < Rows; ++r) {
        const float xv = xr[r][k];
        for (int v = 0; v < kVecs; ++v) sum[0][r][v] += xv * q[v];
      }
    }
    const Group group = load_group(a, g);
    for (int r = 0; r < Rows; ++r) {
      const float xs = a.xsum[r * a.groups + g];
      for (int v = 0; v < kVecs; ++v) {
        Vec total = sum[0][r][v];
        for (int u = 1; u < kSets; ++u) total += sum[u][r][v];
        acc[r][v] += total * group.s[v] - xs * group.z[v];
      }
    }
  }
  store_block<Rows>(a, acc);
}

// The panel's weights as float32 [K, 16], for many rows: dequantized once, not per block.
void dequantize_panel(const Int8Args& a, float* w) {
  int64_t k = 0;
  for (int64_t g = 0; g < a.groups; ++g) {
    const Group group = load_group(a, g);
    for (const int64_t end = a.group_ends[g]; k < end; ++k) {
      Vec wk[kVecs];
      dequantize16(a.codes, k, group, wk);
      // one store per vector (a memcpy of the array went through the stack: 20% of 16 rows)
      for (int v = 0; v < kVecs; ++v) std::memcpy(w + k * kPanel + v * kLanes, &wk[v], sizeof(Vec));
    }
  }
}

template <int Rows>
void dense_block(const Int8Args& a, const float* w, int64_t k_dim) {
  Vec acc[Rows][kVecs] = {};
  const float* xr[Rows];
  for (int r = 0; r < Rows; ++r) xr[r] = a.x + r * a.ldx;
  for (int64_t k = 0; k < k_dim; ++k) {
    Vec wk[kVecs];
    for (int v = 0; v < kVecs; ++v) wk[v] = load(w + k * kPanel + v * kLanes);
    for (int r = 0; r < Rows; ++r) {
      const float xv = xr[r][k];
      for (int v = 0; v < kVecs; ++v) acc[r][v] += xv * wk[v];
    }
  }
  store_block<Rows>(a, acc);
}

template <int Rows>
void dense_rows(const Int8Args& a, const float* w, int64_t k_dim, int64_t rows) {
  if constexpr (Rows > 1) {
    if (rows < Rows) return dense_rows<Rows - 1>(a, w, k_dim, rows);
  }
  dense_block<Rows>(a, w, k_dim);
}

void panel_rows_dense(const Int8Args& a, int64_t rows, int64_t k_dim) {
  thread_local std::vector<float> buffer;
  if (static_cast<int64_t>(buffer.size()) < k_dim * kPanel) buffer.resize(k_dim * kPanel);
  dequantize_panel(a, buffer.data());
  // blocks of rows as even as possible, none over kDenseRows (8 rows: 4 + 4, not 6 + 2)
  const int64_t blocks = (rows + kDenseRows - 1) / kDenseRows;
  for (int64_t b = 0, r = 0; b < blocks; ++b) {
    const int64_t size = rows / blocks + (b < rows % blocks ? 1 : 0);
    Int8Args block = a;
    block.x = a.x + r * a.ldx;
    block.y = a.y + r * a.ldy;
    dense_rows<kDenseRows>(block, buffer.data(), k_dim, size);
    r += size;
  }
}

template <int Rows>
void sum_rows(const Int8Args& a, int64_t rows) {
  if constexpr (Rows > 1) {
    if (rows < Rows) return sum_rows<Rows - 1>(a, rows);
  }
  panel_block<Rows>(a);
}

void panel_rows(const Int8Args& a, int64_t rows, int64_t k_dim) {
  if (rows >= kDenseFrom) return panel_rows_dense(a, rows, k_dim);
  // blocks of rows as even as possible, none over kBlockRows (AVX2: 8 rows 4 + 4, 13 rows 5 + 4 + 4)
  const int64_t blocks = (rows + kBlockRows - 1) / kBlockRows;
  for (int64_t b = 0, r = 0; b < blocks; ++b) {
    const int64_t size = rows / blocks + (b < rows % blocks ? 1 : 0);
    Int8Args block = a;
    block.x = a.x + r * a.ldx;
    block.y = a.y + r * a.ldy;
    block.xsum = a.xsum + r * a.groups;
    sum_rows<kBlockRows>(block, size);
    r += size;
  }
}

at::Tensor int8_linear(const at::Tensor& x_in, const at::Tensor& packed,
                       const at::Tensor& scale_zero, const at::Tensor& group_ends, int64_t n,
                       const std::optional<at::Tensor>& bias) {
  TORCH_CHECK(x_in.device().is_cpu() && x_in.dim() == 2 && x_in.scalar_type() == at::kFloat,
              "int8_linear: x must be a float32 CPU tensor [M, K]");
  TORCH_CHECK(packed.dim() == 3 && packed.size(2) == kPanel &&
                  packed.scalar_type() == at::kByte && packed.is_contiguous(),
              "int8_linear: packed must be a contiguous [P, K, 16] uint8 tensor");
  const int64_t rows = x_in.size(0), k_dim = x_in.size(1), panels = packed.size(0);
  const int64_t groups = group_ends.numel();
  TORCH_CHECK(packed.size(1) == k_dim, "int8_linear: x has ", k_dim, " features, the weight ",
              packed.size(1));
  TORCH_CHECK(n > 0 && panels == (n + kPanel - 1) / kPanel,
              "int8_linear: n does not match the panels");
  TORCH_CHECK(scale_zero.is_contiguous() && scale_zero.scalar_type() == at::kFloat &&
                  scale_zero.dim() == 3 && scale_zero.size(0) == panels &&
                  scale_zero.size(1) == groups && scale_zero.size(2) == 2 * kPanel,
              "int8_linear: scale_zero must be a contiguous [P, G, 32] float32 tensor");
  TORCH_CHECK(group_ends.scalar_type() == at::kLong && group_ends.is_contiguous() &&
                  groups > 0 && group_ends.data_ptr<int64_t>()[groups - 1] == k_dim,
              "int8_linear: group_ends must be int64 and end at K");
  const at::Tensor x = x_in.stride(1) == 1 ? x_in : x_in.contiguous();
  at::Tensor b;
  if (bias.has_value() && bias->defined()) {
    b = bias->contiguous();
    TORCH_CHECK(b.scalar_type() == at::kFloat && b.numel() == n, "int8_linear: bias must be [n]");
  }
  at::Tensor y = at::empty({rows, n}, x.options());
  if (rows == 0) return y;
  const float* xp = x.data_ptr<float>();
  const uint8_t* codes = packed.data_ptr<uint8_t>();
  const float* sz = scale_zero.data_ptr<float>();
  const int64_t* ends = group_ends.data_ptr<int64_t>();
  const float* bp = b.defined() ? b.data_ptr<float>() : nullptr;
  float* yp = y.data_ptr<float>();
  const int64_t ldx = x.stride(0);
  std::vector<float> xsum;
  if (rows < kDenseFrom) {
    xsum.assign(rows * groups, 0.0f);
    for (int64_t r = 0; r < rows; ++r) {
      int64_t k = 0;
      for (int64_t g = 0; g < groups; ++g) {
        float total = 0.0f;
        for (; k < ends[g]; ++k) total += xp[r * ldx + k];
        xsum[r * groups + g] = total;
      }
    }
  }
  at::parallel_for(0, panels, 1, [&](int64_t begin, int64_t end) {
    for (int64_t p = begin; p < end; ++p) {
      const Int8Args a{xp, ldx, codes + p * k_dim * kPanel, sz + p * groups * 2 * kPanel,
                       ends, groups, bp ? bp + p * kPanel : nullptr, yp + p * kPanel, n,
                       std::min(kPanel, n - p * kPanel), xsum.data()};
      panel_rows(a, rows, k_dim);
    }
  });
  return y;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(octavo_cpu, m) {
  m.def("int8_linear(Tensor x, Tensor packed, Tensor scale_zero, Tensor group_ends, int n, "
        "Tensor? bias) -> Tensor");
}

TORCH_LIBRARY_IMPL(octavo_cpu, CPU, m) { m.impl("int8_linear", &int8_linear); }
