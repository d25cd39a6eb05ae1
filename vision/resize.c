/* The resamplers behind vision/preprocess.c. See resize.h for the exact rules each follows. */
#include "vision/resize.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common/err.h"

/* The resamplers' sums are byte-exact references (Pillow's, llama.cpp's): a multiply and an add
 * must not become one fused multiply-add, in any build of the passes (plain, AVX2, AVX-512;
 * CMakeLists.txt also builds this file with -ffp-contract=off, which clang needs under
 * -ffp-contract=fast). */
#if defined(__clang__)
#pragma STDC FP_CONTRACT OFF
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif

static int clampi(int x, int lo, int hi) {
    return x < lo ? lo : x > hi ? hi : x;
}

svlm_status svlm_resize_bilinear_llama(const svlm_image *src, int w, int h, svlm_image *dst, svlm_err *err) {
    svlm_status st = svlm_image_alloc(dst, w, h, err);
    if (st) return st;
    float xr = w > 1 ? (float)(src->w - 1) / (float)(w - 1) : 0.0f;
    float yr = h > 1 ? (float)(src->h - 1) / (float)(h - 1) : 0.0f;
    for (int y = 0; y < h; y++) {
        float py = (float)y * yr;
        int y0 = clampi((int)py, 0, src->h - 1), y1 = clampi(y0 + 1, 0, src->h - 1);
        float yf = py - (float)y0;
        for (int x = 0; x < w; x++) {
            float px = (float)x * xr;
            int x0 = clampi((int)px, 0, src->w - 1), x1 = clampi(x0 + 1, 0, src->w - 1);
            float xf = px - (float)x0;
            const uint8_t *p00 = src->rgb + ((size_t)y0 * src->w + x0) * 3,
                          *p10 = src->rgb + ((size_t)y0 * src->w + x1) * 3;
            const uint8_t *p01 = src->rgb + ((size_t)y1 * src->w + x0) * 3,
                          *p11 = src->rgb + ((size_t)y1 * src->w + x1) * 3;
            uint8_t *o = dst->rgb + ((size_t)y * w + x) * 3;
            for (int c = 0; c < 3; c++) {
                float top = (float)p00[c] + ((float)p10[c] - (float)p00[c]) * xf;
                float bot = (float)p01[c] + ((float)p11[c] - (float)p01[c]) * xf;
                o[c] = (uint8_t)(top + (bot - top) * yf);
            }
        }
    }
    return SVLM_OK;
}

/* Cubic through p(-1), p(0), p(1), p(2) evaluated at t in [0, 1), coefficients as llama.cpp
 * forms them (double constants, float storage). */
static float cubic4(float pm1, float p0, float p1, float p2, float t) {
    float d0 = pm1 - p0, d2 = p1 - p0, d3 = p2 - p0;
    float a1 = (float)(-1.0 / 3 * d0 + d2 - 1.0 / 6 * d3);
    float a2 = (float)(1.0 / 2 * d0 + 1.0 / 2 * d2);
    float a3 = (float)(-1.0 / 6 * d0 - 1.0 / 2 * d2 + 1.0 / 6 * d3);
    return p0 + a1 * t + a2 * t * t + a3 * t * t * t;
}

svlm_status svlm_resize_bicubic_llama(const svlm_image *src, int w, int h, svlm_image *dst, svlm_err *err) {
    svlm_status st = svlm_image_alloc(dst, w, h, err);
    if (st) return st;
    int nx = src->w, ny = src->h;
    float tx = (float)nx / (float)w, ty = (float)ny / (float)h;
    for (int i = 0; i < h; i++) {
        int y = (int)(ty * (float)i);
        float dy = ty * (float)i - (float)y;
        for (int j = 0; j < w; j++) {
            int x = (int)(tx * (float)j);
            float dx = tx * (float)j - (float)x;
            uint8_t *o = dst->rgb + ((size_t)i * w + j) * 3;
            for (int c = 0; c < 3; c++) {
                float col[4];
                for (int r = 0; r < 4; r++) {
                    const uint8_t *row = src->rgb + (size_t)clampi(y - 1 + r, 0, ny - 1) * nx * 3;
                    col[r] = cubic4(row[clampi(x - 1, 0, nx - 1) * 3 + c], row[clampi(x, 0, nx - 1) * 3 + c],
                                    row[clampi(x + 1, 0, nx - 1) * 3 + c],
                                    row[clampi(x + 2, 0, nx - 1) * 3 + c], dx);
                }
                float v = roundf(cubic4(col[0], col[1], col[2], col[3], dy));
                o[c] = (uint8_t)(v < 0.0f ? 0.0f : v > 255.0f ? 255.0f : v);
            }
        }
    }
    return SVLM_OK;
}

svlm_status svlm_resize_bicubic_letterbox_llama(const svlm_image *src, int w, int h, svlm_image *dst,
                                                svlm_err *err) {
    if (src->w == w && src->h == h) {
        svlm_status st = svlm_image_alloc(dst, w, h, err);
        if (!st) memcpy(dst->rgb, src->rgb, (size_t)w * h * 3);
        return st;
    }
    float sx = (float)w / (float)src->w, sy = (float)h / (float)src->h, s = sx < sy ? sx : sy;
    int nw = (int)ceilf((float)src->w * s), nh = (int)ceilf((float)src->h * s);
    nw = nw > w ? w : nw < 1 ? 1 : nw;
    nh = nh > h ? h : nh < 1 ? 1 : nh;
    svlm_image inner;
    svlm_status st = svlm_resize_bicubic_llama(src, nw, nh, &inner, err);
    if (st) return st;
    st = svlm_image_alloc(dst, w, h, err);
    if (st) {
        svlm_image_free(&inner);
        return st;
    }
    memset(dst->rgb, 0, (size_t)w * h * 3);
    int ox = (w - nw) / 2, oy = (h - nh) / 2;
    for (int y = 0; y < nh; y++)
        memcpy(dst->rgb + ((size_t)(y + oy) * w + ox) * 3, inner.rgb + (size_t)y * nw * 3, (size_t)nw * 3);
    svlm_image_free(&inner);
    return SVLM_OK;
}

/* ---- antialiased separable bicubic ------------------------------------------------------- */

static double keys_cubic(double x) {
    const double a = -0.5;
    x = fabs(x);
    if (x < 1.0) return ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0;
    if (x < 2.0) return (((x - 5.0) * x + 8.0) * x - 4.0) * a;
    return 0.0;
}

/* Per output index: first source index, tap count and normalised weights (stride max_taps). */
typedef struct {
    int *first, *count;
    float *wt;
    int max_taps;
} taps;

static int taps_make(int in, int out, taps *t) {
    double scale = (double)in / out, fscale = scale > 1.0 ? scale : 1.0, support = 2.0 * fscale;
    t->max_taps = (int)ceil(support) * 2 + 1;
    t->first = malloc(sizeof(int) * (size_t)out);
    t->count = malloc(sizeof(int) * (size_t)out);
    t->wt = malloc(sizeof(float) * (size_t)out * (size_t)t->max_taps);
    if (!t->first || !t->count || !t->wt) return 0;
    for (int o = 0; o < out; o++) {
        double center = (o + 0.5) * scale;
        int lo = (int)(center - support + 0.5), hi = (int)(center + support + 0.5);
        lo = lo < 0 ? 0 : lo;
        hi = hi > in ? in : hi;
        int n = hi - lo > t->max_taps ? t->max_taps : hi - lo;
        double sum = 0.0, wbuf[64 * 2 + 1];
        double *wv = n <= (int)(sizeof wbuf / sizeof wbuf[0]) ? wbuf : NULL;
        double *heap = wv ? NULL : malloc(sizeof(double) * (size_t)n);
        if (!wv) wv = heap;
        if (!wv) return 0;
        for (int k = 0; k < n; k++)
            sum += wv[k] = keys_cubic((lo + k - center + 0.5) / fscale);
        for (int k = 0; k < n; k++)
            t->wt[(size_t)o * t->max_taps + k] = (float)(sum != 0.0 ? wv[k] / sum : 0.0);
        free(heap);
        t->first[o] = lo;
        t->count[o] = n;
    }
    return 1;
}

static void taps_free(taps *t) {
    free(t->first);
    free(t->count);
    free(t->wt);
}

/* roundf (halves away from zero), then clamped to 0..255: the same bytes without a libm call per
 * value, so the loops below vectorise. v - t is exact for 0 <= t <= v < t + 1. */
static uint8_t to_u8(float v) {
    if (!(v > 0.0f)) return 0;
    if (v >= 255.0f) return 255;
    const int t = (int)v;
    return (uint8_t)(t + (v - (float)t >= 0.5f));
}

/* Source rows per horizontal block: the block is held transposed (each value's AA_ROWS rows side
 * by side), so one output value of all the block's rows is one vector of AA_ROWS lanes. */
#define AA_ROWS 8

#if defined(__GNUC__)
#define AA_INLINE __attribute__((always_inline)) static inline
/* GCC's vector types: AA_ROWS lanes whatever the target's registers (two SSE ones by default) */
typedef float rows_f __attribute__((vector_size(AA_ROWS * sizeof(float))));
typedef int32_t rows_i __attribute__((vector_size(AA_ROWS * sizeof(int32_t))));

/* to_u8 of every lane of *acc into out (a comparison gives -1 in a true lane): NaN and v <= 0
 * give 0, v >= 255 gives 255, else v rounded half away from zero. (Pointers, not vector values:
 * vector arguments' ABI differs between the targets below.) */
AA_INLINE void rows_to_u8(const rows_f *acc, uint8_t *out) {
    const rows_f zero = {0}, top = zero + 255.0f;
    rows_f v = *acc;
    const rows_i pos = v > zero, low = v < top;
    v = (rows_f)((((rows_i)v & low) | ((rows_i)top & ~low)) & pos);
    const rows_i t = __builtin_convertvector(v, rows_i);
    const rows_i r = t - (rows_i)(v - __builtin_convertvector(t, rows_f) >= 0.5f);
    for (int i = 0; i < AA_ROWS; i++)
        out[i] = (uint8_t)r[i];
}

/* The horizontal pass over rows y0 .. y0 + n - 1 of src into mid (width w). block holds
 * src->w * 3 * AA_ROWS floats. Each value's taps are summed in order, as one row at a time would. */
AA_INLINE void aa_horizontal_block(const svlm_image *src, int y0, int n, const taps *tx, int w,
                                   svlm_image *mid, float *block) {
    const int row_len = src->w * 3;
    const uint8_t *rows[AA_ROWS];
    for (int r = 0; r < AA_ROWS; r++)
        rows[r] = src->rgb + (size_t)(y0 + (r < n ? r : 0)) * row_len;
    for (int i = 0; i < row_len; i++)
        for (int r = 0; r < AA_ROWS; r++)
            block[(size_t)i * AA_ROWS + r] = (float)rows[r][i];
    for (int x = 0; x < w; x++) {
        const float *wt = tx->wt + (size_t)x * tx->max_taps;
        const int count = tx->count[x];
        for (int c = 0; c < 3; c++) {
            const float *p = block + ((size_t)tx->first[x] * 3 + c) * AA_ROWS;
            rows_f acc = {0};
            for (int k = 0; k < count; k++) {
                rows_f q;
                memcpy(&q, p + (size_t)k * 3 * AA_ROWS, sizeof q);
                acc += wt[k] * q;
            }
            uint8_t out[AA_ROWS];
            rows_to_u8(&acc, out);
            for (int r = 0; r < n; r++)
                mid->rgb[((size_t)(y0 + r) * w + x) * 3 + c] = out[r];
        }
    }
}
#else
#define AA_INLINE static
/* other compilers: the same sums, a lane at a time */
static void aa_horizontal_block(const svlm_image *src, int y0, int n, const taps *tx, int w, svlm_image *mid,
                                float *block) {
    const int row_len = src->w * 3;
    for (int i = 0; i < row_len; i++)
        for (int r = 0; r < AA_ROWS; r++)
            block[(size_t)i * AA_ROWS + r] = (float)src->rgb[(size_t)(y0 + (r < n ? r : 0)) * row_len + i];
    for (int x = 0; x < w; x++)
        for (int c = 0; c < 3; c++)
            for (int r = 0; r < n; r++) {
                const float *p = block + ((size_t)tx->first[x] * 3 + c) * AA_ROWS + r;
                float acc = 0.0f;
                for (int k = 0; k < tx->count[x]; k++)
                    acc += tx->wt[(size_t)x * tx->max_taps + k] * p[(size_t)k * 3 * AA_ROWS];
                mid->rgb[((size_t)(y0 + r) * w + x) * 3 + c] = to_u8(acc);
            }
}
#endif

/* The vertical pass: rows at a time (each value's taps still summed in order), so the inner loop
 * runs along a row. */
AA_INLINE void aa_vertical(const svlm_image *mid, const taps *ty, int h, svlm_image *dst, float *acc) {
    const int row_len = mid->w * 3;
    for (int y = 0; y < h; y++) {
        const float *wt = ty->wt + (size_t)y * ty->max_taps;
        uint8_t *o = dst->rgb + (size_t)y * row_len;
        for (int x = 0; x < row_len; x++)
            acc[x] = 0.0f;
        for (int k = 0; k < ty->count[y]; k++) {
            const uint8_t *row = mid->rgb + (size_t)(ty->first[y] + k) * row_len;
            const float wk = wt[k];
            for (int x = 0; x < row_len; x++)
                acc[x] += wk * (float)row[x];
        }
        int x = 0;
#if defined(__GNUC__)
        for (; x + AA_ROWS <= row_len; x += AA_ROWS) { /* rounded a vector at a time */
            rows_f v;
            memcpy(&v, acc + x, sizeof v);
            rows_to_u8(&v, o + x);
        }
#endif
        for (; x < row_len; x++)
            o[x] = to_u8(acc[x]);
    }
}

/* Both passes (a NULL taps: that pass is skipped, src already has its size): dst from src
 * through mid. */
typedef struct {
    const svlm_image *src;
    const taps *tx, *ty;
    svlm_image *mid, *dst;
    float *buf;
} aa_job;

AA_INLINE void aa_run(const aa_job *j) {
    const svlm_image *across = j->src;
    if (j->tx) {
        for (int y0 = 0; y0 < j->src->h; y0 += AA_ROWS)
            aa_horizontal_block(j->src, y0, j->src->h - y0 < AA_ROWS ? j->src->h - y0 : AA_ROWS, j->tx,
                                j->mid->w, j->mid, j->buf);
        across = j->mid;
    }
    if (j->ty)
        aa_vertical(across, j->ty, j->dst->h, j->dst, j->buf);
    else
        memcpy(j->dst->rgb, across->rgb, (size_t)j->dst->w * j->dst->h * 3);
}

/* The passes also built for AVX2 and AVX-512 (the same source inlined into each), picked per
 * call from what the CPU has and SVLM_SIMD (scalar, avx2, avx512: at most that level, as for the
 * kernels). The same multiplies and adds in the same order in each (no contraction, above), so
 * the same bytes. A plain runtime choice, not ifunc clones: those resolvers run before sanitizer
 * runtimes start and crash ThreadSanitizer builds. */
static void aa_run_plain(const aa_job *j) {
    aa_run(j);
}
#if defined(__x86_64__) && defined(__GNUC__)
__attribute__((target("avx2"))) static void aa_run_avx2(const aa_job *j) {
    aa_run(j);
}
__attribute__((target("avx512f"))) static void aa_run_avx512(const aa_job *j) {
    aa_run(j);
}
#endif

static void aa_dispatch(const aa_job *j) {
#if defined(__x86_64__) && defined(__GNUC__)
    const char *env = getenv("SVLM_SIMD");
    const int cap = !env || strcmp(env, "scalar") ? (env && !strcmp(env, "avx2") ? 1 : 2) : 0;
    if (cap >= 2 && __builtin_cpu_supports("avx512f")) {
        aa_run_avx512(j);
        return;
    }
    if (cap >= 1 && __builtin_cpu_supports("avx2")) {
        aa_run_avx2(j);
        return;
    }
#endif
    aa_run_plain(j);
}

/* A pass whose size does not change is skipped: its taps are 0, 1, 0, 0 and it gives the same
 * bytes back (a 512 x 384 frame made 512 x 512 is one pass, not two). */
svlm_status svlm_resize_bicubic_aa(const svlm_image *src, int w, int h, svlm_image *dst, svlm_err *err) {
    svlm_image mid = {0};
    taps tx = {0}, ty = {0};
    float *buf = NULL;
    const int same_w = w == src->w, same_h = h == src->h;
    svlm_status st = same_w ? SVLM_OK : svlm_image_alloc(&mid, w, src->h, err);
    if (!st) st = svlm_image_alloc(dst, w, h, err);
    if (st) goto done;
    const size_t block = same_w ? 0 : (size_t)src->w * 3 * AA_ROWS, row = same_h ? 0 : (size_t)w * 3;
    buf = malloc(sizeof(float) * (block > row ? block : row) + 1);
    if (!buf || (!same_w && !taps_make(src->w, w, &tx)) || (!same_h && !taps_make(src->h, h, &ty))) {
        st = svlm_fail(err, SVLM_E_NOMEM, "out of memory for resampling weights");
        svlm_image_free(dst);
        goto done;
    }
    const aa_job job = {src, same_w ? NULL : &tx, same_h ? NULL : &ty, &mid, dst, buf};
    aa_dispatch(&job);
done:
    free(buf);
    taps_free(&tx);
    taps_free(&ty);
    svlm_image_free(&mid);
    return st;
}
