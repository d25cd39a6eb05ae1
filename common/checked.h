/* Overflow-checked size arithmetic for parsing untrusted files. Each returns 0 on overflow. */
#ifndef SVLM_COMMON_CHECKED_H
#define SVLM_COMMON_CHECKED_H

#include <stddef.h>
#include <stdint.h>

static inline int svlm_add_size(size_t a, size_t b, size_t *out) {
    return !__builtin_add_overflow(a, b, out);
}
static inline int svlm_mul_size(size_t a, size_t b, size_t *out) {
    return !__builtin_mul_overflow(a, b, out);
}
static inline int svlm_mul_u64(uint64_t a, uint64_t b, uint64_t *out) {
    return !__builtin_mul_overflow(a, b, out);
}
static inline int svlm_add_u64(uint64_t a, uint64_t b, uint64_t *out) {
    return !__builtin_add_overflow(a, b, out);
}

#endif
