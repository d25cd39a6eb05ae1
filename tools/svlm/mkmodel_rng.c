/* mkmodel: a small, fast, seeded generator, so that the same seed gives the same bytes. */
#include "mkmodel.h"

static uint64_t splitmix64(uint64_t *x) {
    uint64_t z = (*x += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

/* Each tensor draws from its own stream so that its values do not depend on the others. */
void mk_rng_seed(mk_rng *r, uint64_t seed, uint64_t stream) {
    uint64_t x = seed ^ (stream * 0xD1B54A32D192ED03ull);
    for (int i = 0; i < 4; i++)
        r->s[i] = splitmix64(&x);
}

static uint64_t rotl(uint64_t x, int k) {
    return (x << k) | (x >> (64 - k));
}

uint64_t mk_rng_next(mk_rng *r) {
    uint64_t *s = r->s;
    uint64_t out = rotl(s[1] * 5, 7) * 9, t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return out;
}

/* Four 16-bit uniforms summed (Irwin-Hall): mean 2, variance 4/12; rescaled to unit
 * variance. Close enough to a normal for weights and far cheaper than Box-Muller. */
float mk_rng_normal(mk_rng *r) {
    uint64_t x = mk_rng_next(r);
    uint32_t sum = (uint32_t)(x & 0xFFFF) + (uint32_t)((x >> 16) & 0xFFFF) + (uint32_t)((x >> 32) & 0xFFFF) +
                   (uint32_t)(x >> 48);
    const float scale = 1.7320508f / 65536.0f; /* sqrt(3) / 2^16 */
    return ((float)sum - 131070.0f) * scale;   /* 4 * 32767.5 */
}
