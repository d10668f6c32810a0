// A CPU simulator of the CUDA built-ins the octavo_cuda kernels use, for tests without a GPU.
//
// Each thread block runs its threads as cooperative fibers (ucontext) on one OS thread:
// __syncthreads and warp shuffles switch fibers, so every interleaving the barriers allow is a
// legal one, shared memory is a static array, and blocks run one after another. The simulator
// is strict where hardware is lenient:
//   * a barrier that not every thread of the block (or warp) reaches is a deadlock error;
//   * shuffles must use the full mask;
//   * every global access goes through OCT_VALID and must fall inside a registered tensor.
//   * WMMA (nvcuda::wmma) is emulated with every lane holding the whole 16x16 tile, so only
//     layout-agnostic use is possible; pointers must be 32-byte aligned, inside the dynamic
//     shared memory, with a legal leading dimension.
// Errors are collected and returned by oct_last_error() like a failed launch.
#pragma once

#define OCTAVO_SIM_RUNTIME_INCLUDED 1

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <setjmp.h>
#include <ucontext.h>
#include <vector_functions.h>
#include <vector_types.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

// The CUDA headers define these for nvcc's host pass; the simulator compiles device code as
// plain C++.
#undef __global__
#undef __device__
#undef __host__
#undef __forceinline__
#undef __launch_bounds__
#undef __shared__
#undef __align__
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static
#define __align__(n) __attribute__((aligned(n)))

using std::max;
using std::min;

inline uint3 threadIdx;
inline uint3 blockIdx;
inline dim3 blockDim;
inline dim3 gridDim;

inline float __expf(float x) { return std::exp(x); }

namespace octsim {

constexpr int kMaxThreads = 1024;
constexpr size_t kStackBytes = 128 * 1024;

enum class FiberState { kReady, kBlockBarrier, kWarpBarrier, kDone };

// A fiber enters through makecontext/swapcontext once; after that every switch is a
// _setjmp/_longjmp pair, which saves no signal mask and so needs no system call.
struct Fiber {
  ucontext_t ctx;
  jmp_buf env;
  bool started = false;
  FiberState state = FiberState::kReady;
  unsigned shuffle_phase = 0;
};

struct BlockRun {
  std::vector<Fiber> fibers;
  std::vector<std::vector<char>> stacks;
  ucontext_t entry_from;  // scratch for the first swapcontext into a fiber
  jmp_buf scheduler;
  int current = 0;
  int num_threads = 0;
  int block_arrived = 0;
  int warp_arrived[kMaxThreads / 32] = {};
  uint64_t shuffle_buf[kMaxThreads / 32][2][32] = {};
  std::function<void()> body;
  std::vector<int> order;  // the fibers' run order, reshuffled every round
  uint64_t rng = 0x9e3779b97f4a7c15ull;
};

inline BlockRun g_run;
inline std::string g_error;
inline std::vector<unsigned char> g_dynamic_smem_storage;
inline unsigned char* g_dynamic_smem = nullptr;  // 128-byte aligned, per launch
inline size_t g_dynamic_smem_bytes = 0;
inline std::vector<std::pair<uintptr_t, uintptr_t>> g_ranges;
inline int g_num_sms = 132;

inline void fail(const std::string& msg) {
  if (g_error.empty()) g_error = msg;
}

inline bool valid(const void* ptr, size_t bytes) {
  const uintptr_t lo = reinterpret_cast<uintptr_t>(ptr);
  for (const auto& r : g_ranges) {
    if (lo >= r.first && lo + bytes <= r.second) return true;
  }
  fail("out-of-bounds global access of " + std::to_string(bytes) + " bytes by block (" +
       std::to_string(blockIdx.x) + "," + std::to_string(blockIdx.y) + "," +
       std::to_string(blockIdx.z) + ") thread " + std::to_string(threadIdx.x));
  return false;
}

inline void set_thread_index(int t) {
  threadIdx.x = t % blockDim.x;
  threadIdx.y = (t / blockDim.x) % blockDim.y;
  threadIdx.z = t / (blockDim.x * blockDim.y);
}

inline void fiber_entry() {
  g_run.body();
  g_run.fibers[g_run.current].state = FiberState::kDone;
  _longjmp(g_run.scheduler, 1);  // never returns
}

inline void yield_to_scheduler() {
  Fiber& f = g_run.fibers[g_run.current];
  if (_setjmp(f.env) == 0) _longjmp(g_run.scheduler, 1);
}

inline void resume(int t) {
  BlockRun& r = g_run;
  Fiber& f = r.fibers[t];
  r.current = t;
  set_thread_index(t);
  if (_setjmp(r.scheduler) == 0) {
    if (!f.started) {
      f.started = true;
      swapcontext(&r.entry_from, &f.ctx);
    } else {
      _longjmp(f.env, 1);
    }
  }
}

inline void block_barrier() {
  BlockRun& r = g_run;
  if (++r.block_arrived == r.num_threads) {
    r.block_arrived = 0;
    for (auto& f : r.fibers) {
      if (f.state == FiberState::kBlockBarrier) f.state = FiberState::kReady;
    }
    return;
  }
  r.fibers[r.current].state = FiberState::kBlockBarrier;
  yield_to_scheduler();
}

inline void warp_barrier() {
  BlockRun& r = g_run;
  const int warp = r.current / 32;
  const int warp_size = std::min(32, r.num_threads - warp * 32);
  if (++r.warp_arrived[warp] == warp_size) {
    r.warp_arrived[warp] = 0;
    for (int t = warp * 32; t < warp * 32 + warp_size; ++t) {
      if (r.fibers[t].state == FiberState::kWarpBarrier) r.fibers[t].state = FiberState::kReady;
    }
    return;
  }
  r.fibers[r.current].state = FiberState::kWarpBarrier;
  yield_to_scheduler();
}

// Runs one block to completion; a state where no fiber can run is a deadlock.
inline void run_block() {
  BlockRun& r = g_run;
  for (int t = 0; t < r.num_threads; ++t) {
    Fiber& f = r.fibers[t];
    f.state = FiberState::kReady;
    f.started = false;
    f.shuffle_phase = 0;
    getcontext(&f.ctx);
    f.ctx.uc_stack.ss_sp = r.stacks[t].data();
    f.ctx.uc_stack.ss_size = r.stacks[t].size();
    f.ctx.uc_link = nullptr;
    makecontext(&f.ctx, fiber_entry, 0);
  }
  r.block_arrived = 0;
  std::fill(std::begin(r.warp_arrived), std::end(r.warp_arrived), 0);
  r.order.resize(r.num_threads);
  for (int t = 0; t < r.num_threads; ++t) r.order[t] = t;
  for (;;) {
    bool ran = false;
    int done = 0;
    // A fresh random order each round, so that a missing barrier shows up whichever thread
    // writes first (xorshift; deterministic per process).
    for (int t = r.num_threads - 1; t > 0; --t) {
      r.rng ^= r.rng << 13;
      r.rng ^= r.rng >> 7;
      r.rng ^= r.rng << 17;
      std::swap(r.order[t], r.order[r.rng % static_cast<uint64_t>(t + 1)]);
    }
    for (int t : r.order) {
      Fiber& f = r.fibers[t];
      if (f.state == FiberState::kDone) {
        ++done;
      } else if (f.state == FiberState::kReady) {
        resume(t);
        ran = true;
      }
    }
    if (done == r.num_threads) return;
    if (!ran) {
      int at_block = 0, at_warp = 0;
      for (const auto& f : r.fibers) {
        at_block += f.state == FiberState::kBlockBarrier;
        at_warp += f.state == FiberState::kWarpBarrier;
      }
      fail("deadlock in block (" + std::to_string(blockIdx.x) + "," +
           std::to_string(blockIdx.y) + "," + std::to_string(blockIdx.z) + "): " +
           std::to_string(at_block) + " threads at __syncthreads, " + std::to_string(at_warp) +
           " at a warp shuffle, " + std::to_string(done) + " exited");
      return;  // abandon the stuck fibers
    }
  }
}

inline void run_grid(dim3 grid, dim3 block, std::function<void()> body) {
  const int threads = static_cast<int>(block.x * block.y * block.z);
  if (threads <= 0 || threads > kMaxThreads) {
    fail("invalid block size " + std::to_string(threads));
    return;
  }
  if (grid.x == 0 || grid.y == 0 || grid.z == 0) {
    fail("empty grid");
    return;
  }
  BlockRun& r = g_run;
  r.num_threads = threads;
  r.fibers.assign(threads, Fiber{});
  if (static_cast<int>(r.stacks.size()) < threads) r.stacks.resize(threads);
  for (auto& s : r.stacks) s.resize(kStackBytes);
  r.body = std::move(body);
  gridDim = grid;
  blockDim = block;
  for (unsigned z = 0; z < grid.z; ++z) {
    for (unsigned y = 0; y < grid.y; ++y) {
      for (unsigned x = 0; x < grid.x; ++x) {
        blockIdx.x = x;
        blockIdx.y = y;
        blockIdx.z = z;
        run_block();
        if (!g_error.empty()) return;
      }
    }
  }
}

}  // namespace octsim

inline void __syncthreads() { octsim::block_barrier(); }
inline void __syncwarp(unsigned = 0xffffffffu) { octsim::warp_barrier(); }

template <typename T>
inline T __shfl_xor_sync(unsigned mask, T value, int lane_mask) {
  static_assert(sizeof(T) <= 8 && std::is_trivially_copyable_v<T>);
  octsim::BlockRun& r = octsim::g_run;
  if (mask != 0xffffffffu) octsim::fail("__shfl_xor_sync with a partial mask");
  const int t = r.current;
  const int warp = t / 32;
  const int lane = t % 32;
  octsim::Fiber& f = r.fibers[t];
  uint64_t* buf = r.shuffle_buf[warp][f.shuffle_phase & 1];
  uint64_t bits = 0;
  std::memcpy(&bits, &value, sizeof(T));
  buf[lane] = bits;
  octsim::warp_barrier();
  T out;
  const uint64_t got = buf[lane ^ lane_mask];
  std::memcpy(&out, &got, sizeof(T));
  ++r.fibers[t].shuffle_phase;
  return out;
}

#define OCT_VALID(ptr, bytes) (::octsim::valid((ptr), (bytes)))
#define OCT_DYNAMIC_SMEM(name) unsigned char* name = ::octsim::g_dynamic_smem

namespace octsim {

// Filled with 0xff bytes (NaN as float, NaN as fp16/bf16) so that reads before writes show.
inline void prepare_dynamic_smem(size_t bytes) {
  g_dynamic_smem_storage.assign(bytes + 128, 0xff);
  const uintptr_t base = reinterpret_cast<uintptr_t>(g_dynamic_smem_storage.data());
  g_dynamic_smem = g_dynamic_smem_storage.data() + ((128 - base % 128) % 128);
  g_dynamic_smem_bytes = bytes;
}

inline float elem_to_float(float x) { return x; }
inline float elem_to_float(__half x) { return __half2float(x); }
inline float elem_to_float(__nv_bfloat16 x) { return __bfloat162float(x); }

// A WMMA operand: 32-byte aligned, inside the dynamic shared memory, legal leading dimension.
inline void check_wmma(const void* ptr, unsigned ldm, size_t elem_bytes, int rows, int cols,
                       bool col_major) {
  const uintptr_t p = reinterpret_cast<uintptr_t>(ptr);
  const uintptr_t lo = reinterpret_cast<uintptr_t>(g_dynamic_smem);
  const size_t span = elem_bytes * ((col_major ? cols - 1 : rows - 1) * size_t(ldm) +
                                    (col_major ? rows : cols));
  if (p % 32 != 0) fail("WMMA pointer not 32-byte aligned");
  if (ldm * elem_bytes % 16 != 0) fail("WMMA leading dimension not a multiple of 16 bytes");
  if (p < lo || p + span > lo + g_dynamic_smem_bytes) fail("WMMA access outside shared memory");
}

}  // namespace octsim

namespace nvcuda {
namespace wmma {

struct matrix_a {};
struct matrix_b {};
struct accumulator {};
struct row_major {};
struct col_major {};
enum layout_t { mem_row_major, mem_col_major };

template <typename Use, int M, int N, int K>
struct shape_of;
template <int M, int N, int K>
struct shape_of<matrix_a, M, N, K> {
  static constexpr int rows = M, cols = K;
};
template <int M, int N, int K>
struct shape_of<matrix_b, M, N, K> {
  static constexpr int rows = K, cols = N;
};
template <int M, int N, int K>
struct shape_of<accumulator, M, N, K> {
  static constexpr int rows = M, cols = N;
};

// Every lane holds the whole tile, row-major.
template <typename Use, int M, int N, int K, typename T, typename Layout = void>
struct fragment {
  static constexpr int kRows = shape_of<Use, M, N, K>::rows;
  static constexpr int kCols = shape_of<Use, M, N, K>::cols;
  enum { num_elements = kRows * kCols };
  T x[num_elements];
};

template <typename Use, int M, int N, int K, typename T, typename Layout>
inline void load_matrix_sync(fragment<Use, M, N, K, T, Layout>& f, const T* p, unsigned ldm) {
  using F = fragment<Use, M, N, K, T, Layout>;
  constexpr bool col = std::is_same_v<Layout, col_major>;
  octsim::check_wmma(p, ldm, sizeof(T), F::kRows, F::kCols, col);
  for (int r = 0; r < F::kRows; ++r)
    for (int c = 0; c < F::kCols; ++c) f.x[r * F::kCols + c] = col ? p[c * ldm + r] : p[r * ldm + c];
}

template <int M, int N, int K>
inline void load_matrix_sync(fragment<accumulator, M, N, K, float>& f, const float* p,
                             unsigned ldm, layout_t layout) {
  const bool col = layout == mem_col_major;
  octsim::check_wmma(p, ldm, sizeof(float), M, N, col);
  for (int r = 0; r < M; ++r)
    for (int c = 0; c < N; ++c) f.x[r * N + c] = col ? p[c * ldm + r] : p[r * ldm + c];
}

template <int M, int N, int K>
inline void store_matrix_sync(float* p, const fragment<accumulator, M, N, K, float>& f,
                              unsigned ldm, layout_t layout) {
  const bool col = layout == mem_col_major;
  octsim::check_wmma(p, ldm, sizeof(float), M, N, col);
  for (int r = 0; r < M; ++r)
    for (int c = 0; c < N; ++c) (col ? p[c * ldm + r] : p[r * ldm + c]) = f.x[r * N + c];
}

template <typename Use, int M, int N, int K, typename T, typename Layout>
inline void fill_fragment(fragment<Use, M, N, K, T, Layout>& f, T value) {
  for (auto& e : f.x) e = value;
}

// The last product each warp computed, keyed by its inputs' bytes: the lanes of a warp hold
// identical tiles, so 31 of 32 reuse the first lane's result (a pure function of the inputs).
struct MmaMemo {
  std::vector<unsigned char> key;
  std::vector<float> out;
};
inline MmaMemo g_mma_memo[octsim::kMaxThreads / 32];

// d = a b + c with float products and sums; a warp-collective operation.
template <int M, int N, int K, typename T, typename LA, typename LB>
inline void mma_sync(fragment<accumulator, M, N, K, float>& d,
                     const fragment<matrix_a, M, N, K, T, LA>& a,
                     const fragment<matrix_b, M, N, K, T, LB>& b,
                     const fragment<accumulator, M, N, K, float>& c) {
  MmaMemo& memo = g_mma_memo[octsim::g_run.current / 32];
  const size_t na = sizeof(a.x), nb = sizeof(b.x), nc = sizeof(c.x);
  if (memo.key.size() == na + nb + nc && std::memcmp(memo.key.data(), a.x, na) == 0 &&
      std::memcmp(memo.key.data() + na, b.x, nb) == 0 &&
      std::memcmp(memo.key.data() + na + nb, c.x, nc) == 0) {
    std::memcpy(d.x, memo.out.data(), sizeof(d.x));
    octsim::warp_barrier();
    return;
  }
  memo.key.resize(na + nb + nc);
  std::memcpy(memo.key.data(), a.x, na);
  std::memcpy(memo.key.data() + na, b.x, nb);
  std::memcpy(memo.key.data() + na + nb, c.x, nc);
  float out[M * N];
  for (int r = 0; r < M; ++r) {
    for (int n = 0; n < N; ++n) {
      float acc = c.x[r * N + n];
      for (int k = 0; k < K; ++k) {
        acc += octsim::elem_to_float(a.x[r * K + k]) * octsim::elem_to_float(b.x[k * N + n]);
      }
      out[r * N + n] = acc;
    }
  }
  memo.out.assign(out, out + M * N);
  for (int i = 0; i < M * N; ++i) d.x[i] = out[i];
  octsim::warp_barrier();  // every lane of the warp must take part
}

}  // namespace wmma
}  // namespace nvcuda

namespace octavo {

using Stream = void*;

template <typename... KernelArgs, typename... Args>
inline void oct_launch_smem(void (*kernel)(KernelArgs...), dim3 grid, dim3 block,
                            size_t smem_bytes, Stream, Args&&... args) {
  std::tuple<std::decay_t<KernelArgs>...> copies(std::forward<Args>(args)...);
  octsim::prepare_dynamic_smem(smem_bytes);
  octsim::run_grid(grid, block, [&] { std::apply(kernel, copies); });
}

template <typename... KernelArgs, typename... Args>
inline void oct_launch(void (*kernel)(KernelArgs...), dim3 grid, dim3 block, Stream stream,
                       Args&&... args) {
  oct_launch_smem(kernel, grid, block, 0, stream, std::forward<Args>(args)...);
}

inline size_t g_max_smem_optin = 227 * 1024;  // an H100/H200

template <typename... KernelArgs>
inline const char* oct_allow_dynamic_smem(void (*)(KernelArgs...), size_t bytes) {
  return bytes <= g_max_smem_optin ? nullptr : "too much dynamic shared memory";
}

inline int oct_cc_major() { return 9; }
inline int oct_current_device() { return 0; }
inline int oct_max_smem_optin() { return static_cast<int>(g_max_smem_optin); }

inline const char* oct_last_error() {
  return octsim::g_error.empty() ? nullptr : octsim::g_error.c_str();
}

inline int oct_num_sms() { return octsim::g_num_sms; }

}  // namespace octavo
