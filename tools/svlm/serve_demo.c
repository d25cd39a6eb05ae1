/* `svlm serve --demo`: a random-weight tiny SmolVLM2 pair made with svlm mkmodel's code, kept in
 * a cache folder so later runs start at once. */
#include "serve_demo.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/err.h"
#include "common/mkdirs.h"
#include "mkmodel.h"

#define DEMO_SEED 8080
#define DEMO_TAG  "svlm-demo-tiny-f32-s8080"

static int default_cache_dir(char *out, size_t cap) {
    const char *xdg = getenv("XDG_CACHE_HOME"), *home = getenv("HOME");
    int n = xdg && *xdg     ? snprintf(out, cap, "%s/svlm", xdg)
            : home && *home ? snprintf(out, cap, "%s/.cache/svlm", home)
                            : snprintf(out, cap, "/tmp/svlm-cache-%d", (int)getuid());
    return n > 0 && (size_t)n < cap ? 0 : -1;
}

static svlm_status write_pair(const char *text_tmp, const char *mmproj_tmp, svlm_err *err) {
    mk_options o = {0};
    o.shape = mk_shape_find("tiny");
    o.ftype = mk_ftype_find("f32");
    if (!o.shape || !o.ftype) return svlm_fail(err, SVLM_E_INVALID, "the tiny f32 model shape is missing");
    o.mmproj_type = SVLM_F32;
    o.seed = DEMO_SEED;
    mk_plan text = {0}, mmproj = {0};
    mk_vocab vocab = {0};
    svlm_status st;
    if (!(st = mk_plan_text(o.shape, o.ftype, &text, err)) &&
        !(st = mk_plan_mmproj(o.shape, o.mmproj_type, &mmproj, err)) &&
        !(st = mk_vocab_build(o.shape, NULL, &vocab, err)) &&
        !(st = mk_write_text(text_tmp, &o, &vocab, &text, err)))
        st = mk_write_mmproj(mmproj_tmp, &o, &mmproj, err);
    mk_plan_free(&text);
    mk_plan_free(&mmproj);
    mk_vocab_free(&vocab);
    return st;
}

int serve_demo_models(const char *cache_dir, char *text, size_t text_cap, char *mmproj, size_t mmproj_cap) {
    char dir[900];
    if (cache_dir)
        snprintf(dir, sizeof dir, "%s", cache_dir);
    else if (default_cache_dir(dir, sizeof dir))
        return fprintf(stderr, "svlm serve: no cache folder (set HOME)\n"), -1;
    if (svlm_mkdirs(dir))
        return fprintf(stderr, "svlm serve: cannot create %s: %s\n", dir, strerror(errno)), -1;
    if ((size_t)snprintf(text, text_cap, "%s/%s.gguf", dir, DEMO_TAG) >= text_cap ||
        (size_t)snprintf(mmproj, mmproj_cap, "%s/%s-mmproj.gguf", dir, DEMO_TAG) >= mmproj_cap)
        return fprintf(stderr, "svlm serve: the cache path is too long\n"), -1;
    if (!access(text, R_OK) && !access(mmproj, R_OK)) return 0;
    /* written under temporary names and renamed, so a half-written pair is never picked up */
    char text_tmp[1024], mmproj_tmp[1024];
    snprintf(text_tmp, sizeof text_tmp, "%s.%d.tmp", text, (int)getpid());
    snprintf(mmproj_tmp, sizeof mmproj_tmp, "%s.%d.tmp", mmproj, (int)getpid());
    fprintf(stderr, "svlm serve: generating the random-weight demo model in %s\n", dir);
    svlm_err err = {0};
    if (write_pair(text_tmp, mmproj_tmp, &err) || rename(mmproj_tmp, mmproj) || rename(text_tmp, text)) {
        fprintf(stderr, "svlm serve: cannot write the demo model: %s\n",
                err.msg[0] ? err.msg : strerror(errno));
        unlink(text_tmp);
        unlink(mmproj_tmp);
        return -1;
    }
    return 0;
}
