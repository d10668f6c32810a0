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
#include <mma.h>

#include <utility>

// A global access of `bytes` bytes at `ptr` is in bounds (checked by the simulator only).
#define OCT_VALID(ptr, bytes) true

// The block's dynamic shared memory, as bytes aligned to 128.
#define OCT_DYNAMIC_SMEM(name) extern __shared__ __align__(128) unsigned char name[]

namespace octavo {

using Stream = cudaStream_t;

// Launches `kernel` on `stream` with no dynamic shared memory.
template <typename... KernelArgs, typename... Args>
inline void oct_launch(void (*kernel)(KernelArgs...), dim3 grid, dim3 block, Stream stream,
                       Args&&... args) {
  kernel<<<grid, block, 0, stream>>>(std::forward<Args>(args)...);
}

// Launches `kernel` on `stream` with `smem_bytes` of dynamic shared memory.
template <typename... KernelArgs, typename... Args>
inline void oct_launch_smem(void (*kernel)(KernelArgs...), dim3 grid, dim3 block,
                            size_t smem_bytes, Stream stream, Args&&... args) {
  kernel<<<grid, block, smem_bytes, stream>>>(std::forward<Args>(args)...);
}

// Lets `kernel` use `bytes` of dynamic shared memory (above the default 48 KiB needs opt-in).
template <typename... KernelArgs>
inline const char* oct_allow_dynamic_smem(void (*kernel)(KernelArgs...), size_t bytes) {
  if (bytes <= 48 * 1024) return nullptr;
  const cudaError_t err = cudaFuncSetAttribute(
      kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes));
  return err == cudaSuccess ? nullptr : cudaGetErrorString(err);
}

// The error of the last launch on this host thread, or nullptr.
inline const char* oct_last_error() {
  const cudaError_t err = cudaGetLastError();
  return err == cudaSuccess ? nullptr : cudaGetErrorString(err);
}

namespace detail {
// A device attribute of the current device, cached per device; `fallback` on any error.
template <cudaDeviceAttr kAttr>
inline int cached_device_attribute(int fallback) {
  static int cached[64] = {0};
  int device = 0;
  if (cudaGetDevice(&device) != cudaSuccess || device < 0 || device >= 64) {
    (void)cudaGetLastError();  // do not leave the error for the next launch check
    return fallback;
  }
  if (cached[device] == 0) {
    int value = 0;
    if (cudaDeviceGetAttribute(&value, kAttr, device) != cudaSuccess || value <= 0) {
      (void)cudaGetLastError();
      return fallback;
    }
    cached[device] = value;
  }
  return cached[device];
}
}  // namespace detail

// The current device, or -1.
inline int oct_current_device() {
  int device = -1;
  if (cudaGetDevice(&device) != cudaSuccess) {
    (void)cudaGetLastError();
    return -1;
  }
  return device;
}

// Multiprocessor count of the current device.
inline int oct_num_sms() {
  return detail::cached_device_attribute<cudaDevAttrMultiProcessorCount>(1);
}

// Compute capability (major) of the current device.
inline int oct_cc_major() {
  return detail::cached_device_attribute<cudaDevAttrComputeCapabilityMajor>(0);
}

// Shared memory one block may opt in to on the current device.
inline int oct_max_smem_optin() {
  return detail::cached_device_attribute<cudaDevAttrMaxSharedMemoryPerBlockOptin>(48 * 1024);
}

}  // namespace octavo

#endif  // OCTAVO_CUDA_SIM
