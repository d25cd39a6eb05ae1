/*
 * Programmatic dependent launch (PDL, compute capability 9.0 and newer) for the kernels of a
 * decode step. A step is some 180 kernels of a few microseconds each, and between two of them
 * the GPU drains one grid before it launches and ramps up the next. Launched with pdl_launch, a
 * kernel may start while the kernel before it in the stream still runs: it may read what no
 * kernel writes (its weights, prefetched into L2 by pdl_prefetch_warp) and then waits (pdl_wait)
 * until the kernel before has completed and its writes are visible.
 *
 * The rule for a kernel launched with pdl_launch: every thread calls pdl_wait before any other
 * global read or write and before any return. The exceptions are data no kernel writes: weights
 * (prefetched, or copied whole into shared memory by the staged products) and what a copy wrote
 * before the step's kernels began (decode attention's items, read to prefetch their rows). A kernel that
 * never waited could end before the one ahead of it, and a later kernel, which waits only on its own
 * predecessor, would then run ahead of that one. pdl_launch_dependents (right after the wait) lets the next
 * kernel's blocks start their prefetches while this one runs.
 *
 * Each backend decides when it is made (cu_ctx.pdl: compute capability 9.0 and newer, kernels
 * compiled for it, unless SVLM_CUDA_PDL=0) and passes it to the launchers; launched without it,
 * the wait and the trigger do nothing.
 */
#ifndef SVLM_KERNELS_CUDA_PDL_CUH
#define SVLM_KERNELS_CUDA_PDL_CUH

#include <cuda_runtime.h>
#include <stdint.h>

#include <utility>

__device__ __forceinline__ void pdl_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

__device__ __forceinline__ void pdl_launch_dependents() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

/* The 128-byte lines of [p, p + bytes) into L2: this warp takes lines share, share + shares, ...
 * (the warps that split a row each take their share). Only for data that no kernel writes (the
 * weights): it may run before pdl_wait. Kernels prefetch only when launched with PDL (the kernel
 * before still runs then), so SVLM_CUDA_PDL=0 is the code as it was. */
__device__ __forceinline__ void pdl_prefetch_warp(const void *p, size_t bytes, int share, int shares) {
    const uintptr_t first = reinterpret_cast<uintptr_t>(p) & ~(uintptr_t)127,
                    end = reinterpret_cast<uintptr_t>(p) + bytes;
    const uintptr_t lane = threadIdx.x % 32;
    for (uintptr_t a = first + ((uintptr_t)share + (uintptr_t)shares * lane) * 128; a < end;
         a += (uintptr_t)shares * 32 * 128)
        asm volatile("prefetch.L2 [%0];" ::"l"(a));
}

/* kernel<<<grid, block, smem, s>>>(args...), with the PDL attribute when pdl; returns the launch's
 * error and clears it, as cudaGetLastError after <<<>>> does. */
template <typename... Exp, typename... Act>
int pdl_launch(bool pdl, void (*kernel)(Exp...), dim3 grid, dim3 block, size_t smem, cudaStream_t s,
               Act &&...args) {
    cudaLaunchAttribute attr[1];
    attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attr[0].val.programmaticStreamSerializationAllowed = 1;
    cudaLaunchConfig_t cfg = {};
    cfg.gridDim = grid;
    cfg.blockDim = block;
    cfg.dynamicSmemBytes = smem;
    cfg.stream = s;
    cfg.attrs = attr;
    cfg.numAttrs = pdl ? 1 : 0;
    const cudaError_t e = cudaLaunchKernelEx(&cfg, kernel, std::forward<Act>(args)...);
    const cudaError_t last = cudaGetLastError();
    return (int)(e != cudaSuccess ? e : last);
}

#endif
