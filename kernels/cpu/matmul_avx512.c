/* Matrix kernels for AVX-512 (F/BW/VL/DQ + VNNI + BF16), picked at run time. The 256-bit
 * kernels of matmul_simd.inc with vpdpbusd for the integer dots, plus 512-bit float dots. */
#ifdef SVLM_X86
#include "kernels/cpu/cpu_kernels.h"

#include <immintrin.h>

#define DOT_U8S8(u, s) _mm256_dpbusd_epi32(_mm256_setzero_si256(), u, s)
#define BITS_TO_BYTES(b) _mm256_movm_epi8((__mmask32)(b))
#define FN(name) name##_avx512
#include "kernels/cpu/matmul_simd.inc"

void svlm_cpu_matmul_init_avx512(svlm_cpu_matmul_ops *ops) { install_simd256(ops); }
#endif
