// Dense product y = x @ W.T (+ bias) on the CPU, float32, with W packed once into panels.
//
// Ops (namespace torch.ops.octavo_cpu; the library itself is defined in paged_attention.cpp):
//   pack_linear_weight(weight) -> packed
//       weight [N, K] float32 -> packed [ceil(N / NR), K, NR]: panel p holds output features
//       p*NR .. p*NR+NR-1, K-major (the NR weights of one input feature are adjacent), the
//       last panel zero-padded. NR is two SIMD registers of floats: 16 with AVX2, 32 with
//       AVX-512, so a packed weight belongs to the build (the ISA level) that made it.
//   linear(x, packed, n, bias?) -> y        x [M, K] float32 (copied unless its stride along
//                                           K is 1), y [M, n]
//   linear_out(out!, x, packed, n, bias?)   the same into out [M, n] (unit stride along n,
//                                           any row stride: a column slice of a wider tensor)
//   linear_panel_width() -> NR
//
// The micro-kernel keeps an MR x NR block of y in registers (MR <= 6 on AVX2, <= 12 on
// AVX-512) and, per input feature k, loads the panel's NR weights once and broadcasts x[r, k]
// of each of the MR rows: 2 * MR FMAs per two loads of weights. A chunk of rows of x stays
// in L2, and so does a panel while the chunk's row blocks read it (K is blocked only past
// 2048 on AVX2); the next panel is prefetched meanwhile. Threads take work items (groups of
// consecutive panels x chunks of rows, see run) as each finishes one. One row (decode) is a
// pure stream of the weight, bound by memory bandwidth.
//
// Accumulation is float32 in a fixed order (the K blocks in sequence, each k once, fused
// multiply-adds), bias added with the first block; no fast-math.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <optional>
#include <utility>

namespace {

#if defined(__AVX512F__)
constexpr int kLanes = 16;
constexpr int kMaxRows = 12;  // 24 accumulators + 2 weight vectors + 1 broadcast of 32 zmm
#else
constexpr int kLanes = 8;
constexpr int kMaxRows = 6;  // 12 accumulators + 2 weight vectors + 1 broadcast of 16 ymm
#endif
constexpr int kNR = 2 * kLanes;  // output features per panel
typedef float Vec __attribute__((vector_size(kLanes * sizeof(float))));

inline Vec load(const float* p) {
  Vec v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

inline void store(float* p, Vec v) { std::memcpy(p, &v, sizeof(v)); }

// Panel slice budget: K is split into blocks only when a panel's slice would pass this many
// bytes (K > 2048 with AVX2), so the slice stays in L2 while the chunk's row blocks read it.
// Smaller blocks (a slice in L1) measured slower here: each block stores and reloads y.
constexpr int64_t kPanelSliceBytes = 128 * 1024;
// Bytes of x kept in L2 while the panels stream past them (half of a 512 KB L2).
constexpr int64_t kChunkBytes = 256 * 1024;

struct Tile {
  const float* x;     // x[row0, k0]
  int64_t ldx;        // x row stride
  const float* w;     // panel slice: [kc][kNR]
  int64_t kc;         // input features in this block
  float* y;           // y[row0, col0]
  int64_t ldy;        // y row stride
  int64_t cols;       // valid output columns of this panel (kNR but in the last panel)
  const float* bias;  // bias[col0] (first K block only) or null
  bool first;         // first K block: y = acc (+ bias); else y += acc
  int64_t ahead;      // bytes from w to the same k of the next panel (0: last panel)
};

// Writes the MR x NR accumulators of a tile to y.
template <int MR>
inline void store_tile(const Tile& t, Vec (&acc)[MR][2]) {
  if (t.bias != nullptr) {
    float b[kNR] = {};
    std::memcpy(b, t.bias, t.cols * sizeof(float));
    const Vec b0 = load(b), b1 = load(b + kLanes);
    for (int r = 0; r < MR; ++r) {
      acc[r][0] += b0;
      acc[r][1] += b1;
    }
  }
  for (int r = 0; r < MR; ++r) {
    float* yr = t.y + r * t.ldy;
    if (t.cols == kNR) {
      if (!t.first) {
        acc[r][0] += load(yr);
        acc[r][1] += load(yr + kLanes);
      }
      store(yr, acc[r][0]);
      store(yr + kLanes, acc[r][1]);
    } else {  // the zero-padded last panel: only its valid columns exist in y
      float buf[kNR];
      store(buf, acc[r][0]);
      store(buf + kLanes, acc[r][1]);
      for (int64_t c = 0; c < t.cols; ++c) yr[c] = t.first ? buf[c] : yr[c] + buf[c];
    }
  }
}

// MR rows of x times one panel slice, MR x NR accumulators in registers. While it computes,
// it asks L2 for the same k of the next panel, so that panel's memory arrives during the
// compute instead of stalling the next panel's first row block (measured: +15-25% at 16-64
// rows; one row, a pure stream, does better on the hardware prefetcher alone).
template <int MR>
void micro_kernel(const Tile& t) {
  Vec acc[MR][2] = {};
  const float* w = t.w;
  const float* xr[MR];
  for (int r = 0; r < MR; ++r) xr[r] = t.x + r * t.ldx;
#pragma GCC unroll 4
  for (int64_t k = 0; k < t.kc; ++k) {
    if (t.ahead != 0) {
      const char* next = reinterpret_cast<const char*>(w + k * kNR) + t.ahead;
      for (int line = 0; line < kNR * static_cast<int>(sizeof(float)); line += 64)
        __builtin_prefetch(next + line, 0, 2);
    }
    const Vec w0 = load(w + k * kNR), w1 = load(w + k * kNR + kLanes);
    for (int r = 0; r < MR; ++r) {
      const float x = xr[r][k];
      acc[r][0] += x * w0;
      acc[r][1] += x * w1;
    }
  }
  store_tile<MR>(t, acc);
}

// One row (a decode): a stream of the weight, no software prefetch. Four independent sets
// of accumulators hide the FMA latency; they are summed in a fixed order at the end.
template <>
void micro_kernel<1>(const Tile& t) {
  Vec a[4][2] = {};
  const float* w = t.w;
  const float* x = t.x;
  int64_t k = 0;
  for (; k + 4 <= t.kc; k += 4, w += 4 * kNR) {
    for (int u = 0; u < 4; ++u) {
      a[u][0] += x[k + u] * load(w + u * kNR);
      a[u][1] += x[k + u] * load(w + u * kNR + kLanes);
    }
  }
  for (; k < t.kc; ++k, w += kNR) {
    a[0][0] += x[k] * load(w);
    a[0][1] += x[k] * load(w + kLanes);
  }
  Vec acc[1][2] = {{(a[0][0] + a[1][0]) + (a[2][0] + a[3][0]),
                    (a[0][1] + a[1][1]) + (a[2][1] + a[3][1])}};
  store_tile<1>(t, acc);
}

using Kernel = void (*)(const Tile&);

template <int... R>
constexpr std::array<Kernel, sizeof...(R)> make_kernels(std::integer_sequence<int, R...>) {
  return {&micro_kernel<R + 1>...};
}

// kKernels[r - 1] computes r rows.
constexpr auto kKernels = make_kernels(std::make_integer_sequence<int, kMaxRows>{});

struct Problem {
  const float* x;
  int64_t ldx;
  const float* packed;
  int64_t K, N, num_panels;
  float* y;
  int64_t ldy;
  const float* bias;
};

// Input features per K block (see kPanelSliceBytes), as even as possible.
int64_t k_block(int64_t K) {
  constexpr int64_t target = kPanelSliceBytes / (kNR * sizeof(float));
  const int64_t blocks = (K + target - 1) / target;
  return (K + blocks - 1) / blocks;
}

// Row blocks of a chunk as even as possible, none over kMaxRows (16 rows on AVX2: 6, 5, 5).
struct RowBlocks {
  int64_t count, base, extra;
  explicit RowBlocks(int64_t rows)
      : count((rows + kMaxRows - 1) / kMaxRows), base(rows / count), extra(rows % count) {}
  int64_t size(int64_t b) const { return base + (b < extra ? 1 : 0); }
};

// y[r0:r1, panels p0:p1]: the panels in memory order, each panel's K blocks in order, and
// for each block every row block of the chunk (the slice is read from memory by the first).
void compute_block(const Problem& p, int64_t r0, int64_t r1, int64_t p0, int64_t p1) {
  const int64_t rows = r1 - r0;
  if (rows <= 0 || p0 >= p1) return;
  const int64_t kc_max = k_block(p.K);
  const RowBlocks blocks(rows);
  const int64_t panel_bytes = p.K * kNR * static_cast<int64_t>(sizeof(float));
  for (int64_t panel = p0; panel < p1; ++panel) {
    const float* w_panel = p.packed + panel * p.K * kNR;
    const int64_t col0 = panel * kNR;
    const int64_t cols = std::min<int64_t>(kNR, p.N - col0);
    const int64_t ahead = panel + 1 < p1 ? panel_bytes : 0;
    for (int64_t k0 = 0; k0 < p.K; k0 += kc_max) {
      const int64_t kc = std::min(kc_max, p.K - k0);
      int64_t row = r0;
      for (int64_t b = 0; b < blocks.count; ++b) {
        const int64_t mr = blocks.size(b);
        const Tile t{p.x + row * p.ldx + k0, p.ldx, w_panel + k0 * kNR, kc,
                     p.y + row * p.ldy + col0, p.ldy, cols,
                     k0 == 0 && p.bias != nullptr ? p.bias + col0 : nullptr, k0 == 0, ahead};
        kKernels[mr - 1](t);
        row += mr;
      }
    }
  }
}

// Rows of x kept in L2 while the panels stream past them.
int64_t row_chunk(int64_t K) {
  const int64_t rows = kChunkBytes / (std::max<int64_t>(K, 1) * static_cast<int64_t>(sizeof(float)));
  return std::max<int64_t>(kMaxRows, rows / kMaxRows * kMaxRows);
}

// Waking the other threads costs about 10 us (OMP_WAIT_POLICY=PASSIVE): a product that one
// thread finishes in a few times that runs on the calling thread (a weight under 256 KB and
// under 4 MFLOP: 64x64 at one row took 15 us on two threads, 3 us on one).
bool serial_is_faster(const Problem& p, int64_t M) {
  const int64_t weight_bytes = p.num_panels * p.K * kNR * static_cast<int64_t>(sizeof(float));
  return weight_bytes < 256 * 1024 && 2 * M * p.N * p.K < 4'000'000;
}

// Work items per thread: threads take the next item as they finish one, so a thread slowed
// by another process on its core (a shared machine) leaves its share to the others.
constexpr int64_t kItemsPerThread = 4;
// With several chunks of rows, a group holds about this many bytes of weight: it stays in L2
// while the threads take the group's chunks one after the other, so each weight is read from
// memory once whatever M (the LM head's 113 MB too), and x (a chunk at a time) from L3.
constexpr int64_t kGroupBytes = 64 * 1024;

// Items: (group of consecutive panels) x (chunk of rows). One chunk (up to ~100 rows): a
// few groups per thread. Several chunks: groups of kGroupBytes, group-major. With too few
// panels for the threads the rows split into smaller chunks instead.
void run(const Problem& p, int64_t M) {
  const int64_t threads = at::get_num_threads();
  const int64_t wanted = threads * kItemsPerThread;
  int64_t chunk = row_chunk(p.K);
  int64_t chunks = (M + chunk - 1) / chunk;
  int64_t groups = std::min(p.num_panels, wanted);  // of P / groups panels, +-1
  bool group_major = false;
  if (chunks > 1) {
    const int64_t panel_bytes = p.K * kNR * static_cast<int64_t>(sizeof(float));
    groups = std::max(groups, std::min(p.num_panels, p.num_panels * panel_bytes / kGroupBytes));
    group_major = true;
  } else if (groups < wanted && M > kMaxRows) {
    const int64_t rows = (M * groups + wanted - 1) / wanted;
    chunk = std::min(chunk, std::max<int64_t>(kMaxRows, rows));
    chunks = (M + chunk - 1) / chunk;
  }
  chunk = (M + chunks - 1) / chunks;  // as even as possible
  const int64_t items = groups * chunks;
  const auto compute_item = [&](int64_t item) {
    const int64_t c = group_major ? item % chunks : item / groups;
    const int64_t g = group_major ? item / chunks : item % groups;
    compute_block(p, c * chunk, std::min(M, (c + 1) * chunk), g * p.num_panels / groups,
                  (g + 1) * p.num_panels / groups);
  };
  if (threads == 1 || items == 1 || serial_is_faster(p, M)) {
    for (int64_t item = 0; item < items; ++item) compute_item(item);
    return;
  }
  std::atomic<int64_t> next{0};
  at::parallel_for(0, std::min(threads, items), 1, [&](int64_t, int64_t) {
    for (int64_t item = next++; item < items; item = next++) compute_item(item);
  });
}

void check_packed(const at::Tensor& packed, int64_t n) {
  TORCH_CHECK(packed.device().is_cpu() && packed.scalar_type() == at::kFloat &&
                  packed.dim() == 3 && packed.is_contiguous(),
              "packed must be a contiguous float32 CPU tensor from pack_linear_weight");
  TORCH_CHECK(packed.size(2) == kNR, "packed has panels of ", packed.size(2),
              " features but this build (ISA level) uses ", kNR,
              ": pack the weight with this build's pack_linear_weight");
  TORCH_CHECK(n > (packed.size(0) - 1) * kNR && n <= packed.size(0) * kNR,
              "n=", n, " does not match the ", packed.size(0), " panels of packed");
}

at::Tensor pack_linear_weight(const at::Tensor& weight) {
  TORCH_CHECK(weight.device().is_cpu() && weight.scalar_type() == at::kFloat &&
                  weight.dim() == 2,
              "weight must be a float32 CPU tensor [out_features, in_features]");
  const at::Tensor w = weight.contiguous();
  const int64_t N = w.size(0), K = w.size(1);
  const int64_t panels = (N + kNR - 1) / kNR;
  at::Tensor packed = at::empty({panels, K, kNR}, w.options());
  const float* src = w.data_ptr<float>();
  float* dst = packed.data_ptr<float>();
  at::parallel_for(0, panels, 1, [&](int64_t begin, int64_t end) {
    for (int64_t p = begin; p < end; ++p) {
      float* out = dst + p * K * kNR;
      for (int64_t j = 0; j < kNR; ++j) {
        const int64_t n = p * kNR + j;
        if (n < N) {
          const float* row = src + n * K;
          for (int64_t k = 0; k < K; ++k) out[k * kNR + j] = row[k];
        } else {
          for (int64_t k = 0; k < K; ++k) out[k * kNR + j] = 0.0f;
        }
      }
    }
  });
  return packed;
}

void linear_out(at::Tensor& out, const at::Tensor& x_in, const at::Tensor& packed, int64_t n,
                const std::optional<at::Tensor>& bias) {
  check_packed(packed, n);
  TORCH_CHECK(x_in.device().is_cpu() && x_in.scalar_type() == at::kFloat && x_in.dim() == 2,
              "x must be a float32 CPU tensor [M, in_features]");
  const int64_t M = x_in.size(0), K = packed.size(1);
  TORCH_CHECK(x_in.size(1) == K, "x has ", x_in.size(1), " features, the weight ", K);
  TORCH_CHECK(out.device().is_cpu() && out.scalar_type() == at::kFloat && out.dim() == 2 &&
                  out.size(0) == M && out.size(1) == n && (out.stride(1) == 1 || n <= 1),
              "out must be a float32 CPU tensor [M, n] with unit stride along n");
  const at::Tensor x = x_in.stride(1) == 1 || K <= 1 ? x_in : x_in.contiguous();
  const float* b = nullptr;
  at::Tensor bias_c;
  if (bias.has_value()) {
    TORCH_CHECK(bias->device().is_cpu() && bias->scalar_type() == at::kFloat &&
                    bias->dim() == 1 && bias->size(0) == n,
                "bias must be a float32 CPU tensor of n entries");
    bias_c = bias->contiguous();
    b = bias_c.data_ptr<float>();
  }
  if (M == 0 || n == 0) return;
  if (K == 0) {  // an empty sum
    if (b != nullptr) out.copy_(bias_c.unsqueeze(0).expand({M, n}));
    else out.zero_();
    return;
  }
  const Problem p{x.data_ptr<float>(), x.stride(0), packed.data_ptr<float>(), K, n,
                  packed.size(0), out.data_ptr<float>(), out.stride(0), b};
  run(p, M);
}

at::Tensor linear(const at::Tensor& x, const at::Tensor& packed, int64_t n,
                  const std::optional<at::Tensor>& bias) {
  TORCH_CHECK(x.dim() == 2, "x must be [M, in_features]");
  at::Tensor out = at::empty({x.size(0), n}, x.options());
  linear_out(out, x, packed, n, bias);
  return out;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(octavo_cpu, m) {
  m.def("pack_linear_weight(Tensor weight) -> Tensor");
  m.def("linear(Tensor x, Tensor packed, int n, Tensor? bias) -> Tensor");
  m.def("linear_out(Tensor(a!) out, Tensor x, Tensor packed, int n, Tensor? bias) -> ()");
  m.def("linear_panel_width() -> int", []() -> int64_t { return kNR; });
}

TORCH_LIBRARY_IMPL(octavo_cpu, CPU, m) {
  m.impl("pack_linear_weight", &pack_linear_weight);
  m.impl("linear", &linear);
  m.impl("linear_out", &linear_out);
}
