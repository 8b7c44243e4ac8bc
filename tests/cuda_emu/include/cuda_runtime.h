// An emulated GPU for tests: the subset of the CUDA runtime that hyco's CUDA backend uses, so that
// kernels/cuda/ compiles as plain C++ (tests/cuda_emu/make_emu_source.py rewrites the kernel
// launches) and runs on the CPU in CI. Device memory is host memory; streams are synchronous.
//
// Threads: each CUDA thread of a block that synchronises is a fiber (ucontext); a scheduler
// resumes the fibers in turn, each until its next synchronisation point. All lanes of a warp
// pass the same points (the kernels' warp-level code is uniform), so one round moves a whole
// warp through one shuffle or __syncwarp; a fiber at __syncthreads is not resumed until every
// fiber of the block has arrived, and then all resume in the same round. Kernels that never
// synchronise run their threads one after another ("direct"; a synchronisation there aborts).
// Blocks run one after another; __shared__ variables are function statics.
#pragma once

#include <ucontext.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <type_traits>
#include <utility>
#include <vector>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static
#define __align__(n) alignas(n)
#define HYCO_DYNAMIC_SMEM(name) unsigned char* name = emu::dynamic_smem

struct dim3 {
  unsigned x, y, z;
  constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};
inline dim3 threadIdx, blockIdx, gridDim, blockDim;

struct float2 {
  float x, y;
};
struct float4 {
  float x, y, z, w;
};
struct uint2 {
  uint32_t x, y;
};
struct uint4 {
  uint32_t x, y, z, w;
};

namespace emu {

struct Fiber {
  ucontext_t ctx;
  std::vector<char> stack;
  bool done = false;
};
inline ucontext_t scheduler_ctx;
inline std::vector<Fiber> fibers;
inline std::vector<char> at_barrier;  // per fiber: waiting in __syncthreads
inline int current = 0;
inline bool direct = false;           // running a kernel without fibers
inline const char* kernel_name = "";
inline uint64_t shfl_buf[64][32];     // per warp, per lane
inline float mma_buf[64][16][16];     // per warp: lane 0's WMMA product
alignas(128) inline unsigned char dynamic_smem[256 * 1024];
inline std::function<void()> body;

inline void yield() {
  if (direct) {
    std::fprintf(stderr, "emulated GPU: kernel %s synchronises: launch it with fibers\n", kernel_name);
    std::abort();
  }
  swapcontext(&fibers[size_t(current)].ctx, &scheduler_ctx);
}
inline void syncthreads() {
  if (!direct) at_barrier[size_t(current)] = 1;
  yield();
}
template <class T>
T shfl(T v, int src) {
  static_assert(sizeof(T) <= 8, "up to 8 bytes");
  const int warp = int(threadIdx.x) / 32, lane = int(threadIdx.x) % 32;
  std::memcpy(&shfl_buf[warp][lane], &v, sizeof(T));
  yield();  // every lane of the warp has written
  T r;
  std::memcpy(&r, &shfl_buf[warp][src], sizeof(T));
  yield();  // every lane has read before any writes again
  return r;
}

inline void fiber_main() {
  body();
  fibers[size_t(current)].done = true;
  swapcontext(&fibers[size_t(current)].ctx, &scheduler_ctx);
}
// (getcontext returns twice: kept out of launch, whose variables it could clobber)
[[gnu::noinline]] inline void make_fiber(Fiber& f) {
  if (f.stack.empty()) f.stack.assign(128 * 1024, 0);
  f.done = false;
  getcontext(&f.ctx);
  f.ctx.uc_stack.ss_sp = f.stack.data();
  f.ctx.uc_stack.ss_size = f.stack.size();
  f.ctx.uc_link = nullptr;
  makecontext(&f.ctx, fiber_main, 0);
}

// Runs kernel() for every thread of every block of the grid.
template <class F>
void launch(const char* name, bool with_fibers, dim3 grid, dim3 block, F kernel) {
  kernel_name = name;
  const unsigned threads = block.x * block.y * block.z;
  gridDim = grid;
  blockDim = block;
  if (with_fibers && fibers.size() < threads) fibers.resize(threads);
  for (unsigned z = 0; z < grid.z; ++z)
    for (unsigned y = 0; y < grid.y; ++y)
      for (unsigned x = 0; x < grid.x; ++x) {
        blockIdx = dim3(x, y, z);
        if (!with_fibers) {
          direct = true;
          for (unsigned t = 0; t < threads; ++t) {
            threadIdx = dim3(t % block.x, t / block.x % block.y, t / (block.x * block.y));
            kernel();
          }
          direct = false;
          continue;
        }
        at_barrier.assign(threads, 0);
        for (unsigned t = 0; t < threads; ++t) make_fiber(fibers[t]);
        body = [&] { kernel(); };
        size_t left = threads;
        while (left) {
          size_t waiting = 0;
          for (unsigned t = 0; t < threads; ++t) waiting += !fibers[t].done && at_barrier[t];
          if (waiting == left) std::fill(at_barrier.begin(), at_barrier.end(), 0);
          for (unsigned t = 0; t < threads; ++t) {
            if (fibers[t].done || at_barrier[t]) continue;
            current = int(t);
            threadIdx = dim3(t % block.x, t / block.x % block.y, t / (block.x * block.y));
            swapcontext(&scheduler_ctx, &fibers[t].ctx);
            if (fibers[t].done) --left;
          }
        }
      }
}

// What make_emu_source.py turns `kernel<<<grid, block, ...>>>(args)` into.
template <class F, class G, class B, class... Rest>
void launch_kernel(const char* name, bool with_fibers, F kernel, G grid, B block, Rest...) {
  const auto to_dim3 = [](auto v) {
    if constexpr (std::is_same_v<decltype(v), dim3>) return v;
    else return dim3(unsigned(v));
  };
  launch(name, with_fibers, to_dim3(grid), to_dim3(block), kernel);
}

}  // namespace emu

inline void __syncthreads() { emu::syncthreads(); }
inline void __syncwarp(unsigned = 0xffffffffu) { emu::yield(); }
template <class T>
T __shfl_sync(unsigned, T v, int src) {
  return emu::shfl(v, src);
}
template <class T>
T __shfl_xor_sync(unsigned, T v, int mask) {
  return emu::shfl(v, (int(threadIdx.x) % 32) ^ mask);
}
inline float __uint_as_float(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }
template <class A, class B>
constexpr std::common_type_t<A, B> min(A a, B b) {
  return a < b ? a : b;
}
template <class A, class B>
constexpr std::common_type_t<A, B> max(A a, B b) {
  return a < b ? b : a;
}

// ---- runtime API -------------------------------------------------------------------------------
enum cudaError_t { cudaSuccess = 0, cudaErrorMemoryAllocation = 2 };
inline const char* cudaGetErrorString(cudaError_t e) { return e == cudaSuccess ? "no error" : "out of memory"; }
inline cudaError_t cudaGetLastError() { return cudaSuccess; }
struct CUstream_st {};
using cudaStream_t = CUstream_st*;
constexpr unsigned cudaStreamNonBlocking = 1;
enum cudaMemcpyKind { cudaMemcpyHostToHost, cudaMemcpyHostToDevice, cudaMemcpyDeviceToHost, cudaMemcpyDeviceToDevice };
enum cudaFuncAttribute { cudaFuncAttributeMaxDynamicSharedMemorySize = 8 };
enum cudaDataType_t { CUDA_R_32F = 0, CUDA_R_16F = 2, CUDA_R_16BF = 14 };
struct cudaDeviceProp {
  char name[256];
  size_t totalGlobalMem;
  int multiProcessorCount;
};

inline cudaError_t cudaGetDeviceCount(int* n) {
  *n = 1;
  return cudaSuccess;
}
inline cudaError_t cudaSetDevice(int) { return cudaSuccess; }
inline cudaError_t cudaGetDeviceProperties(cudaDeviceProp* p, int) {
  std::snprintf(p->name, sizeof p->name, "emulated GPU");
  p->totalGlobalMem = size_t(8) << 30;
  p->multiProcessorCount = 132;
  return cudaSuccess;
}
inline cudaError_t cudaStreamCreateWithFlags(cudaStream_t* s, unsigned) {
  *s = new CUstream_st;
  return cudaSuccess;
}
inline cudaError_t cudaStreamDestroy(cudaStream_t s) {
  delete s;
  return cudaSuccess;
}
inline cudaError_t cudaStreamSynchronize(cudaStream_t) { return cudaSuccess; }
// Device memory: HYCO_EMU_GPU_MIB (read at each call) caps what may be allocated in all, so
// that tests can see what the backend does when a model or KV pool does not fit.
namespace emu {
inline size_t allocated = 0;
inline std::vector<std::pair<void*, size_t>> blocks;
}  // namespace emu
inline cudaError_t cudaMalloc(void** p, size_t n) {
  const char* cap = std::getenv("HYCO_EMU_GPU_MIB");
  const size_t sz = (n + 255) / 256 * 256;
  *p = nullptr;
  if (cap && emu::allocated + sz > size_t(std::atoll(cap)) << 20) return cudaErrorMemoryAllocation;
  *p = std::aligned_alloc(256, sz ? sz : 256);
  if (!*p) return cudaErrorMemoryAllocation;
  std::memset(*p, 0xA5, n);  // garbage, as device memory is
  emu::allocated += sz;
  emu::blocks.emplace_back(*p, sz);
  return cudaSuccess;
}
inline cudaError_t cudaFree(void* p) {
  for (auto& b : emu::blocks)
    if (b.first == p) {
      emu::allocated -= b.second;
      b = emu::blocks.back();
      emu::blocks.pop_back();
      break;
    }
  std::free(p);
  return cudaSuccess;
}
inline cudaError_t cudaMallocHost(void** p, size_t n) { return cudaMalloc(p, n); }
inline cudaError_t cudaFreeHost(void* p) { return cudaFree(p); }
inline cudaError_t cudaMemcpyAsync(void* d, const void* s, size_t n, cudaMemcpyKind, cudaStream_t) {
  if (n) std::memmove(d, s, n);
  return cudaSuccess;
}
inline cudaError_t cudaMemsetAsync(void* d, int v, size_t n, cudaStream_t) {
  std::memset(d, v, n);
  return cudaSuccess;
}
template <class F>
cudaError_t cudaFuncSetAttribute(F, cudaFuncAttribute, int) {
  return cudaSuccess;
}
