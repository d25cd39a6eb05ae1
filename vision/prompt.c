/* SmolVLM2 prompt assembly (layouts in prompt.h; spec: smolvlm2-spec.md §2.3, §2.4, §3). */
#include "vision/prompt.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/err.h"

svlm_status svlm_vlm_specials_find(const svlm_tokenizer *t, svlm_vlm_specials *sp, svlm_err *err) {
    sp->fake = svlm_tokenizer_find(t, "<fake_token_around_image>");
    sp->global = svlm_tokenizer_find(t, "<global-img>");
    if (sp->fake < 0 || sp->global < 0)
        return svlm_fail(err, SVLM_E_UNSUPPORTED,
                         "the text model's vocabulary has no %s token: it is not a SmolVLM model",
                         sp->fake < 0 ? "<fake_token_around_image>" : "<global-img>");
    for (int r = 0; r < SVLM_PROMPT_MAX_GRID; r++)
        for (int c = 0; c < SVLM_PROMPT_MAX_GRID; c++) {
            char name[32];
            snprintf(name, sizeof name, "<row_%d_col_%d>", r + 1, c + 1);
            sp->rowcol[r][c] = svlm_tokenizer_find(t, name);
        }
    return SVLM_OK;
}

void svlm_prompt_init(svlm_prompt *p) {
    memset(p, 0, sizeof *p);
}

void svlm_prompt_free(svlm_prompt *p) {
    if (!p) return;
    free(p->ids);
    memset(p, 0, sizeof *p);
}

static svlm_status reserve(svlm_prompt *p, size_t more, svlm_err *err) {
    if (p->n + more <= p->cap) return SVLM_OK;
    if (more > ((size_t)1 << 24) || p->n > ((size_t)1 << 24))
        return svlm_fail(err, SVLM_E_LIMIT, "prompt is longer than 16M tokens");
    size_t cap = p->cap ? p->cap : 256;
    while (cap < p->n + more)
        cap *= 2;
    int32_t *ids = realloc(p->ids, sizeof(int32_t) * cap);
    if (!ids) return svlm_fail(err, SVLM_E_NOMEM, "out of memory for the prompt");
    p->ids = ids;
    p->cap = cap;
    return SVLM_OK;
}

static svlm_status push(svlm_prompt *p, int32_t id, svlm_err *err) {
    svlm_status st = reserve(p, 1, err);
    if (!st) p->ids[p->n++] = id;
    return st;
}

static svlm_status push_image_rows(svlm_prompt *p, int n, svlm_err *err) {
    svlm_status st = reserve(p, (size_t)n, err);
    if (st) return st;
    for (int i = 0; i < n; i++)
        p->ids[p->n++] = -1;
    p->n_image_rows += (size_t)n;
    return SVLM_OK;
}

svlm_status svlm_prompt_text(svlm_prompt *p, const svlm_tokenizer *t, const char *text, size_t len,
                             int add_special, int parse_special, svlm_err *err) {
    int32_t *ids = NULL;
    size_t n = 0;
    svlm_status st = svlm_tokenize(t, text, len, add_special, parse_special, &ids, &n, err);
    if (!st) st = reserve(p, n, err);
    if (!st) {
        memcpy(p->ids + p->n, ids, sizeof(int32_t) * n);
        p->n += n;
    }
    free(ids);
    return st;
}

static svlm_status single_block(svlm_prompt *p, const svlm_vlm_specials *sp, int T, svlm_err *err) {
    svlm_status st;
    if ((st = push(p, sp->fake, err)) || (st = push(p, sp->global, err)) || (st = push_image_rows(p, T, err)))
        return st;
    return push(p, sp->fake, err);
}

svlm_status svlm_prompt_image(svlm_prompt *p, const svlm_tokenizer *t, const svlm_vlm_specials *sp, int rows,
                              int cols, int T, svlm_err *err) {
    if (T < 1) return svlm_fail(err, SVLM_E_INVALID, "image block needs at least one token per tile");
    if (rows == 0 && cols == 0) return single_block(p, sp, T, err);
    if (rows < 1 || cols < 1 || rows > SVLM_PROMPT_MAX_GRID || cols > SVLM_PROMPT_MAX_GRID)
        return svlm_fail(err, SVLM_E_LIMIT, "a %dx%d tile grid is larger than the %dx%d the vocabulary names",
                         cols, rows, SVLM_PROMPT_MAX_GRID, SVLM_PROMPT_MAX_GRID);
    svlm_status st;
    for (int r = 0; r < rows; r++) {
        for (int c = 0; c < cols; c++) {
            if (sp->rowcol[r][c] < 0)
                return svlm_fail(err, SVLM_E_UNSUPPORTED, "the vocabulary has no <row_%d_col_%d> token",
                                 r + 1, c + 1);
            if ((st = push(p, sp->fake, err)) || (st = push(p, sp->rowcol[r][c], err)) ||
                (st = push_image_rows(p, T, err)))
                return st;
        }
        const char *nl = r + 1 < rows ? "\n" : "\n\n";
        if ((st = svlm_prompt_text(p, t, nl, strlen(nl), 0, 0, err))) return st;
    }
    return single_block(p, sp, T, err);
}

svlm_status svlm_prompt_frame(svlm_prompt *p, const svlm_tokenizer *t, const svlm_vlm_specials *sp,
                              double t_seconds, int T, svlm_err *err) {
    /* (a stream runs for months, and a resumed memory bank carries its clock on: the bound is the
     * bank's own, 1e12 s; minutes go past 99 as SmolVLM2's "MM:SS" does) */
    if (!(t_seconds >= 0.0) || t_seconds > 1e12)
        return svlm_fail(err, SVLM_E_INVALID, "frame time %g s is invalid", t_seconds);
    char text[64];
    int n = snprintf(text, sizeof text, "\nFrame from %02lld:%02d:", (long long)(t_seconds / 60.0),
                     (int)fmod(t_seconds, 60.0));
    svlm_status st = svlm_prompt_text(p, t, text, (size_t)n, 0, 0, err);
    return st ? st : single_block(p, sp, T, err);
}

/* English words for 0..9999 as num2words writes them ("twenty-four", "one hundred and five"). */
static void number_words(int n, char *buf, size_t cap) {
    static const char *ones[] = {"zero",    "one",     "two",       "three",    "four",
                                 "five",    "six",     "seven",     "eight",    "nine",
                                 "ten",     "eleven",  "twelve",    "thirteen", "fourteen",
                                 "fifteen", "sixteen", "seventeen", "eighteen", "nineteen"};
    static const char *tens[] = {"",      "",      "twenty",  "thirty", "forty",
                                 "fifty", "sixty", "seventy", "eighty", "ninety"};
    if (n < 0 || n > 9999) {
        snprintf(buf, cap, "%d", n);
        return;
    }
    char tail[64] = "";
    int rest = n % 100;
    if (rest < 20)
        snprintf(tail, sizeof tail, "%s", ones[rest]);
    else if (rest % 10)
        snprintf(tail, sizeof tail, "%s-%s", tens[rest / 10], ones[rest % 10]);
    else
        snprintf(tail, sizeof tail, "%s", tens[rest / 10]);
    int th = n / 1000, hu = n / 100 % 10;
    char head[64] = "";
    if (th && hu)
        snprintf(head, sizeof head, "%s thousand, %s hundred", ones[th], ones[hu]);
    else if (th)
        snprintf(head, sizeof head, "%s thousand", ones[th]);
    else if (hu)
        snprintf(head, sizeof head, "%s hundred", ones[hu]);
    if (!head[0])
        snprintf(buf, cap, "%s", tail);
    else if (!rest)
        snprintf(buf, cap, "%s", head);
    else
        snprintf(buf, cap, "%s and %s", head, tail);
}

int svlm_prompt_video_intro(char *buf, size_t cap, int n_frames, double duration_s) {
    char words[160];
    number_words(n_frames, words, sizeof words);
    long d = duration_s > 0.0 && duration_s < 1e9 ? (long)duration_s : 0;
    return snprintf(
        buf, cap,
        "You are provided the following series of %s frames from a %ld:%02ld:%02ld [H:MM:SS] video.\n", words,
        d / 3600, d / 60 % 60, d % 60);
}

svlm_status svlm_prompt_build(svlm_prompt *p, const svlm_tokenizer *t, const svlm_vlm_specials *sp,
                              const char *user, int raw, int rows, int cols, int T, svlm_err *err) {
    svlm_status st;
    if (!raw) {
        const char *head = "<|im_start|>User:", *tail = "<end_of_utterance>\nAssistant:";
        if ((st = svlm_prompt_text(p, t, head, strlen(head), 0, 1, err)) ||
            (st = svlm_prompt_image(p, t, sp, rows, cols, T, err)) ||
            (st = svlm_prompt_text(p, t, user, strlen(user), 0, 0, err)))
            return st;
        return svlm_prompt_text(p, t, tail, strlen(tail), 0, 1, err);
    }
    const char *mark = strstr(user, SVLM_MEDIA_MARKER);
    if (!mark || strstr(mark + strlen(SVLM_MEDIA_MARKER), SVLM_MEDIA_MARKER))
        return svlm_fail(err, SVLM_E_INVALID,
                         "--raw prompt must contain the marker %s exactly once (one image)",
                         SVLM_MEDIA_MARKER);
    const char *after = mark + strlen(SVLM_MEDIA_MARKER);
    if ((st = svlm_prompt_text(p, t, user, (size_t)(mark - user), 1, 1, err)) ||
        (st = svlm_prompt_image(p, t, sp, rows, cols, T, err)))
        return st;
    return svlm_prompt_text(p, t, after, strlen(after), 0, 1, err);
}
