/* Still-image questions (OpenAI image_url parts): decode, tile as llama.cpp does, encode, and
 * answer in the SmolVLM2 chat format on a decoder context of the question's own size. Runs on
 * the image worker, the only user of its kernels and image encoder. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/err.h"
#include "llm/sampler.h"
#include "pipeline/server/engine_internal.h"
#include "vision/preprocess.h"
#include "vision/prompt.h"

/* PNG and PPM in the core; anything else through FFmpeg, which reads from a file. */
static svlm_status decode_image(const svlm_backend_image *im, svlm_image *out, svlm_err *err) {
    svlm_status st = svlm_image_decode_builtin(im->data, im->size, out, err);
#ifdef SVLM_HAVE_FFMPEG
    if (st == SVLM_E_UNSUPPORTED) {
        const char *dir = getenv("TMPDIR");
        char path[512];
        snprintf(path, sizeof path, "%s/svlm-image-XXXXXX", dir && *dir ? dir : "/tmp");
        int fd = mkstemp(path);
        if (fd < 0) return svlm_fail(err, SVLM_E_IO, "cannot create a temporary file for the image");
        size_t done = 0;
        while (done < im->size) {
            ssize_t n = write(fd, im->data + done, im->size - done);
            if (n <= 0) break;
            done += (size_t)n;
        }
        close(fd);
        st = done == im->size ? svlm_image_decode_ffmpeg(path, out, err)
                              : svlm_fail(err, SVLM_E_IO, "cannot write a temporary file for the image");
        unlink(path);
    }
#endif
    if (st) svlm_err_prefix(err, "image");
    return st;
}

/* Appends one image's block to the prompt and its embeddings to *embd (grown). */
static svlm_status add_image(eng *e, const svlm_backend_image *im, const svlm_vlm_specials *sp,
                             svlm_prompt *p, float **embd, size_t *n_rows, svlm_err *err) {
    const svlm_mmproj *mp = e->mmproj;
    svlm_image img = {0};
    svlm_tiles tiles = {0};
    svlm_status st = decode_image(im, &img, err);
    svlm_preproc_params pp = {.tile = mp->hp.image_size, .longest_edge = mp->hp.preproc_image_size};
    memcpy(pp.mean, mp->hp.image_mean, sizeof pp.mean);
    memcpy(pp.std, mp->hp.image_std, sizeof pp.std);
    if (!st) st = svlm_preprocess_image(&img, &pp, &tiles, err);
    if (!st)
        st = svlm_prompt_image(p, svlm_llama_tokenizer(e->model), sp, tiles.rows, tiles.cols,
                               e->tokens_per_tile, err);
    if (!st) {
        size_t rows = (size_t)tiles.n_tiles * e->tokens_per_tile;
        float *grown = realloc(*embd, (*n_rows + rows) * (size_t)e->n_embd * sizeof(float));
        if (!grown)
            st = svlm_fail(err, SVLM_E_NOMEM, "out of memory");
        else {
            *embd = grown;
            st = svlm_vision_encode(e->image_vc, tiles.pixels, tiles.n_tiles,
                                    grown + *n_rows * (size_t)e->n_embd, err);
            *n_rows += rows;
        }
    }
    svlm_tiles_free(&tiles);
    svlm_image_free(&img);
    return st;
}

/* The first token after ids (embd as in svlm_llama_eval): the greatest logit, or the sampler's
 * draw (as `svlm describe --temp` draws: one sampler per answer, fed the whole logits). */
static svlm_status image_eval(svlm_llama_ctx *ctx, svlm_sampler *smp, float *logits, const int32_t *ids,
                              const float *embd, int n, int32_t *next, svlm_err *err) {
    if (!smp) return svlm_llama_eval_greedy(ctx, ids, embd, n, next, err);
    svlm_status st = svlm_llama_eval(ctx, ids, embd, n, logits, 0, err);
    if (!st) *next = svlm_sampler_sample(smp, logits);
    return st;
}

svlm_status eng_image_answer(eng *e, eng_job *j, int *prompt_tokens, svlm_err *err) {
    const svlm_tokenizer *tok = svlm_llama_tokenizer(e->model);
    const char *head = "<|im_start|>User:", *tail = "<end_of_utterance>\nAssistant:";
    svlm_vlm_specials sp;
    svlm_prompt p;
    svlm_prompt_init(&p);
    float *embd = NULL, *logits = NULL;
    size_t n_rows = 0;
    svlm_llama_ctx *ctx = NULL;
    svlm_sampler *smp = NULL;
    svlm_status st = svlm_vlm_specials_find(tok, &sp, err);
    if (!st) st = svlm_prompt_text(&p, tok, head, strlen(head), 0, 1, err);
    for (int i = 0; !st && i < j->n_images; i++) {
        st = add_image(e, &j->images[i], &sp, &p, &embd, &n_rows, err);
        if (!st && atomic_load(&j->cancelled)) st = SVLM_E_CANCELLED;
    }
    if (!st) st = svlm_prompt_text(&p, tok, j->question, strlen(j->question), 0, 0, err);
    if (!st) st = svlm_prompt_text(&p, tok, tail, strlen(tail), 0, 1, err);
    const int n_train = svlm_llama_hparams_of(e->model)->n_ctx_train;
    const int n_vocab = svlm_llama_hparams_of(e->model)->n_vocab;
    if (!st && (int)p.n + j->max_tokens > n_train && n_train > 0)
        st = svlm_fail(err, SVLM_E_TOO_LONG,
                       "the images and question take %zu tokens; the model's context is %d", p.n, n_train);
    if (!st) *prompt_tokens = (int)p.n;
    if (!st && j->sampling.temp > 0) {
        st = svlm_sampler_create(&j->sampling, n_vocab, &smp, err);
        if (!st && !(logits = malloc(sizeof(float) * (size_t)n_vocab)))
            st = svlm_fail(err, SVLM_E_NOMEM, "out of memory");
    }
    if (!st)
        st = svlm_llama_ctx_create(e->model, e->k_image, (int)p.n + j->max_tokens + 1, SVLM_F32, &ctx, err);
    int32_t id = 0;
    if (!st) st = image_eval(ctx, smp, logits, p.ids, embd, (int)p.n, &id, err);
    for (int n = 0; !st && n < j->max_tokens; n++) {
        if (svlm_tokenizer_is_eog(tok, id)) break;
        char small[256], *heap;
        size_t len;
        const char *piece = svlm_token_piece_whole(tok, id, 0, small, sizeof small, &heap, &len);
        const int cancelled = piece && eng_job_token(j, piece, len);
        free(heap);
        if (!piece)
            st = svlm_fail(err, SVLM_E_NOMEM, "out of memory for a %zu-byte token", len);
        else if (cancelled)
            st = SVLM_E_CANCELLED;
        else if (n + 1 < j->max_tokens) {
            const int32_t last = id;
            st = image_eval(ctx, smp, logits, &last, NULL, 1, &id, err);
        }
    }
    svlm_sampler_free(smp);
    free(logits);
    svlm_llama_ctx_free(ctx);
    free(embd);
    svlm_prompt_free(&p);
    return st;
}
