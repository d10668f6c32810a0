// Portability layer between nvcc and the CPU simulator of the test suite.
//
// The kernels include only this header for their CUDA built-ins. Under nvcc it maps onto the
// CUDA runtime. When OCTAVO_CUDA_SIM is defined (tests/kernels_cuda/sim), the simulator has
// already defined threadIdx, __syncthreads, __shfl_xor_sync, oct_launch, ... for plain g++,
// and OCT_VALID checks every global memory access against the tensors the test registered.
#pragma once

#include <cstdint>

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#if defined(OCTAVO_CUDA_SIM)

#ifndef OCTAVO_SIM_RUNTIME_INCLUDED
#error "include the simulator runtime before the octavo_cuda kernels"
#endif

#else  // nvcc

#include <cuda_runtime.h>

#include <utility>

// A global access of `bytes` bytes at `ptr` is in bounds (checked by the simulator only).
#define OCT_VALID(ptr, bytes) true

namespace octavo {

using Stream = cudaStream_t;

// Launches `kernel` on `stream` with no dynamic shared memory.
template <typename... KernelArgs, typename... Args>
inline void oct_launch(void (*kernel)(KernelArgs...), dim3 grid, dim3 block, Stream stream,
                       Args&&... args) {
  kernel<<<grid, block, 0, stream>>>(std::forward<Args>(args)...);
}

// The error of the last launch on this host thread, or nullptr.
inline const char* oct_last_error() {
  const cudaError_t err = cudaGetLastError();
  return err == cudaSuccess ? nullptr : cudaGetErrorString(err);
}

// Multiprocessor count of the current device (cached per device).
inline int oct_num_sms() {
  static int cached[64] = {0};
  int device = 0;
  if (cudaGetDevice(&device) != cudaSuccess || device < 0 || device >= 64) return 1;
  if (cached[device] == 0) {
    int count = 0;
    if (cudaDeviceGetAttribute(&count, cudaDevAttrMultiProcessorCount, device) != cudaSuccess ||
        count <= 0) {
      (void)cudaGetLastError();  // do not leave the error for the next launch check
      return 1;
    }
    cached[device] = count;
  }
  return cached[device];
}

}  // namespace octavo

#endif  // OCTAVO_CUDA_SIM
