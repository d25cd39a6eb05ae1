/* Matrix kernels for AVX2 + FMA + F16C (compiled with those flags, picked at run time). */
#ifdef SVLM_X86
#include "kernels/cpu/cpu_kernels.h"

#include <immintrin.h>

/* maddubs adds byte-product pairs into saturating int16: safe because codes are <= 63, or
 * |w| <= 128 against |x| <= 127 for Q8_0 (2 * 128 * 127 < 32768). */
static inline __m256i dot_u8s8_avx2(__m256i u, __m256i s) {
    return _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1));
}

static inline __m256i bits_to_bytes_avx2(uint32_t bits) {
    /* byte i <- byte i/8 of bits, then test bit i%8 */
    const __m256i spread = _mm256_setr_epi8(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2,
                                            2, 2, 3, 3, 3, 3, 3, 3, 3, 3);
    __m256i v = _mm256_shuffle_epi8(_mm256_set1_epi32((int)bits), spread);
    const __m256i sel = _mm256_set1_epi64x((long long)0x8040201008040201ULL);
    return _mm256_cmpeq_epi8(_mm256_and_si256(v, sel), sel);
}

#define DOT_U8S8(u, s)   dot_u8s8_avx2(u, s)
#define BITS_TO_BYTES(b) bits_to_bytes_avx2(b)
#define FN(name)         name##_avx2
#include "kernels/cpu/matmul_simd.inc"

void svlm_cpu_matmul_init_avx2(svlm_cpu_matmul_ops *ops) {
    install_simd256(ops);
}
#endif
