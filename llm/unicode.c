#include "llm/unicode.h"

uint8_t svlm_unicode_class(uint32_t cpt) {
    /* Binary search for the last range that starts at or before cpt. */
    if (cpt > 0x10FFFF) return SVLM_UCLASS_UNDEFINED;
    uint32_t lo = 0, hi = svlm_unicode_range_count;
    while (hi - lo > 1) {
        uint32_t mid = lo + (hi - lo) / 2;
        if (svlm_unicode_range_start[mid] <= cpt)
            lo = mid;
        else
            hi = mid;
    }
    return svlm_unicode_range_class[lo];
}

static int is_cont(unsigned char c) {
    return (c & 0xC0) == 0x80;
}

uint32_t svlm_utf8_decode(const unsigned char *s, size_t n, size_t *pos) {
    /* Same acceptance rule as llama.cpp (structure only: overlong forms and surrogates pass),
     * so that malformed input splits into the same pieces. */
    size_t i = *pos;
    unsigned char c = s[i];
    if (c < 0x80) {
        *pos = i + 1;
        return c;
    }
    if ((c & 0xE0) == 0xC0 && i + 1 < n && is_cont(s[i + 1])) {
        *pos = i + 2;
        return ((uint32_t)(c & 0x1F) << 6) | (s[i + 1] & 0x3F);
    }
    if ((c & 0xF0) == 0xE0 && i + 2 < n && is_cont(s[i + 1]) && is_cont(s[i + 2])) {
        *pos = i + 3;
        return ((uint32_t)(c & 0x0F) << 12) | ((uint32_t)(s[i + 1] & 0x3F) << 6) | (s[i + 2] & 0x3F);
    }
    if ((c & 0xF8) == 0xF0 && i + 3 < n && is_cont(s[i + 1]) && is_cont(s[i + 2]) && is_cont(s[i + 3])) {
        *pos = i + 4;
        return ((uint32_t)(c & 0x07) << 18) | ((uint32_t)(s[i + 1] & 0x3F) << 12) |
               ((uint32_t)(s[i + 2] & 0x3F) << 6) | (s[i + 3] & 0x3F);
    }
    *pos = i + 1;
    return 0xFFFD;
}

size_t svlm_utf8_encode(uint32_t cpt, char out[4]) {
    if (cpt < 0x80) {
        out[0] = (char)cpt;
        return 1;
    }
    if (cpt < 0x800) {
        out[0] = (char)(0xC0 | (cpt >> 6));
        out[1] = (char)(0x80 | (cpt & 0x3F));
        return 2;
    }
    if (cpt < 0x10000) {
        out[0] = (char)(0xE0 | (cpt >> 12));
        out[1] = (char)(0x80 | ((cpt >> 6) & 0x3F));
        out[2] = (char)(0x80 | (cpt & 0x3F));
        return 3;
    }
    out[0] = (char)(0xF0 | ((cpt >> 18) & 0x07));
    out[1] = (char)(0x80 | ((cpt >> 12) & 0x3F));
    out[2] = (char)(0x80 | ((cpt >> 6) & 0x3F));
    out[3] = (char)(0x80 | (cpt & 0x3F));
    return 4;
}
