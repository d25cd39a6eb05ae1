/* mkmodel: writes the text GGUF and the mmproj GGUF, drawing tensor values row chunk by
 * row chunk so that even multi-GB models need only a few MB of memory. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/err.h"
#include "common/threadpool.h"
#include "llm/gguf_write.h"
#include "mkmodel.h"

/* Written by us, following the rules of SmolVLM2's Hugging Face template (../shared/docs/
 * smolvlm2-spec.md §3): "User:" before an image that comes first, "User: " otherwise,
 * <end_of_utterance> after each turn, "Assistant:" as the generation prompt. */
static const char chat_template[] =
    "<|im_start|>{% for message in messages %}"
    "{{ message['role'] | capitalize }}"
    "{% if message['content'] is string %}{{ ': ' + message['content'] }}"
    "{% else %}"
    "{% if message['content'][0]['type'] == 'image' %}{{ ':' }}{% else %}{{ ': ' }}{% endif %}"
    "{% for item in message['content'] %}"
    "{% if item['type'] == 'text' %}{{ item['text'] }}"
    "{% elif item['type'] == 'image' %}{{ '<image>' }}"
    "{% elif item['type'] == 'video' %}{{ '<video>' }}{% endif %}"
    "{% endfor %}{% endif %}"
    "<end_of_utterance>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}";

#define CHUNK_VALUES (1 << 20) /* floats drawn per step */

typedef struct {
    const char *path;
    int enabled, tty;
    uint64_t total, done, next_report;
} progress;

/* On a terminal the line is redrawn every 2%; into a log each report is a line of its own, every 25%. */
static void progress_step(progress *p, uint64_t bytes) {
    p->done += bytes;
    if (!p->enabled || (p->done < p->next_report && p->done < p->total)) return;
    fprintf(stderr, "%smkmodel: %s %3d%% (%llu of %llu MB)%s", p->tty ? "\r" : "", p->path,
            (int)(100.0 * p->done / p->total), (unsigned long long)(p->done >> 20),
            (unsigned long long)(p->total >> 20), p->tty ? "" : "\n");
    if (p->tty && p->done >= p->total) fputc('\n', stderr);
    p->next_report = p->done + p->total / (p->tty ? 50 : 4);
}

typedef struct quant_job {
    const mk_tensor *t;
    const float *vals;
    uint8_t *packed;
    int64_t rows, ne0, per_task;
    size_t row_bytes;
    int failed;
} quant_job;

static void quant_task(void *ctx, int task, int thread) {
    (void)thread;
    quant_job *j = ctx;
    const int64_t r0 = (int64_t)task * j->per_task,
                  r1 = r0 + j->per_task < j->rows ? r0 + j->per_task : j->rows;
    for (int64_t r = r0; r < r1; r++)
        if (svlm_quantize_row(j->t->type, j->vals + (size_t)r * (size_t)j->ne0,
                              j->packed + (size_t)r * j->row_bytes, j->ne0))
            __atomic_store_n(&j->failed, 1, __ATOMIC_RELAXED);
}

/* Draws one tensor's values (one stream, in order: the same seed gives the same bytes) and streams
 * them, quantized on every core (the K-quants' scale search is most of the time), into the writer. */
static svlm_status write_tensor(gguf_writer *w, const mk_tensor *t, uint64_t seed, uint64_t stream,
                                float *vals, void *packed, svlm_pool *pool, progress *pg, svlm_err *err) {
    mk_rng rng;
    mk_rng_seed(&rng, seed, stream);
    const int64_t ne0 = t->ne[0];
    int64_t rows = 1;
    for (int d = 1; d < t->n_dims; d++)
        rows *= t->ne[d];
    size_t row_bytes = svlm_row_bytes(t->type, ne0);
    int64_t rows_per_chunk = CHUNK_VALUES / ne0 > 0 ? CHUNK_VALUES / ne0 : 1;
    const float base = t->init == MK_INIT_ONES ? 1.0f : 0.0f;
    for (int64_t r0 = 0; r0 < rows; r0 += rows_per_chunk) {
        int64_t nr = rows - r0 < rows_per_chunk ? rows - r0 : rows_per_chunk;
        for (int64_t i = 0; i < nr * ne0; i++)
            vals[i] = base + t->std * mk_rng_normal(&rng);
        const int64_t tasks = nr < 4 * (int64_t)svlm_pool_size(pool) ? nr : 4 * (int64_t)svlm_pool_size(pool);
        quant_job j = {t, vals, packed, nr, ne0, (nr + tasks - 1) / tasks, row_bytes, 0};
        svlm_pool_run(pool, quant_task, &j, (int)((nr + j.per_task - 1) / j.per_task));
        if (j.failed)
            return svlm_fail(err, SVLM_E_UNSUPPORTED, "mkmodel: cannot quantize '%s' to type %d", t->name,
                             (int)t->type);
        svlm_status st = gguf_writer_write_data(w, packed, (size_t)nr * row_bytes, err);
        if (st) return st;
        progress_step(pg, (uint64_t)nr * row_bytes);
    }
    return SVLM_OK;
}

/* Declares the plan's tensors, then writes their data and finishes the file. */
static svlm_status write_plan(gguf_writer *w, const char *path, const mk_options *o, const mk_plan *p,
                              uint64_t stream_base, svlm_err *err) {
    svlm_status st;
    progress pg = {.path = path};
    size_t max_chunk = 0;
    for (int i = 0; i < p->n; i++) {
        const mk_tensor *t = &p->t[i];
        if ((st = gguf_writer_add_tensor(w, t->name, t->type, t->n_dims, t->ne, err))) return st;
        pg.total += gguf_tensor_bytes(t->type, t->n_dims, t->ne);
        int64_t rows_per_chunk = CHUNK_VALUES / t->ne[0] > 0 ? CHUNK_VALUES / t->ne[0] : 1;
        size_t chunk = svlm_row_bytes(t->type, t->ne[0]) * (size_t)rows_per_chunk;
        if (chunk > max_chunk) max_chunk = chunk;
    }
    pg.enabled = o->progress && pg.total >= (64u << 20);
    pg.tty = isatty(2);
    int64_t max_ne0 = 1;
    for (int i = 0; i < p->n; i++)
        if (p->t[i].ne[0] > max_ne0) max_ne0 = p->t[i].ne[0];
    /* a chunk of rows, or one row longer than a chunk */
    float *vals = malloc((size_t)(max_ne0 > CHUNK_VALUES ? max_ne0 : CHUNK_VALUES) * sizeof *vals);
    void *packed = malloc(max_chunk ? max_chunk : 1);
    svlm_pool *pool = NULL;
    if (!vals || !packed || svlm_pool_create(0, &pool, err)) {
        free(vals);
        free(packed);
        return svlm_fail(err, SVLM_E_NOMEM, "mkmodel: out of memory");
    }
    st = SVLM_OK;
    for (int i = 0; i < p->n && !st; i++)
        st = write_tensor(w, &p->t[i], o->seed, stream_base + (uint64_t)i, vals, packed, pool, &pg, err);
    svlm_pool_destroy(pool);
    free(vals);
    free(packed);
    if (!st) st = gguf_writer_finish(w, err);
    return st;
}

#define KV(call)                                                                                             \
    do {                                                                                                     \
        if ((st = (call))) goto out;                                                                         \
    } while (0)

svlm_status mk_write_text(const char *path, const mk_options *o, const mk_vocab *v, const mk_plan *p,
                          svlm_err *err) {
    const mk_text_shape *h = &o->shape->text;
    gguf_writer *w = NULL;
    svlm_status st = gguf_writer_create(path, 0, &w, err);
    if (st) return st;
    KV(gguf_writer_set_str(w, "general.architecture", "llama", err));
    KV(gguf_writer_set_str(w, "general.type", "model", err));
    KV(gguf_writer_set_str(w, "general.name", o->shape->model_name, err));
    KV(gguf_writer_set_str(w, "general.size_label", o->shape->size_label, err));
    KV(gguf_writer_set_str(w, "general.license", "apache-2.0", err));
    KV(gguf_writer_set_u32(w, "llama.block_count", (uint32_t)h->n_layer, err));
    KV(gguf_writer_set_u32(w, "llama.context_length", (uint32_t)h->n_ctx, err));
    KV(gguf_writer_set_u32(w, "llama.embedding_length", (uint32_t)h->n_embd, err));
    KV(gguf_writer_set_u32(w, "llama.feed_forward_length", (uint32_t)h->n_ff, err));
    KV(gguf_writer_set_u32(w, "llama.attention.head_count", (uint32_t)h->n_head, err));
    KV(gguf_writer_set_u32(w, "llama.attention.head_count_kv", (uint32_t)h->n_head_kv, err));
    KV(gguf_writer_set_f32(w, "llama.rope.freq_base", h->rope_theta, err));
    KV(gguf_writer_set_f32(w, "llama.attention.layer_norm_rms_epsilon", h->rms_eps, err));
    KV(gguf_writer_set_u32(w, "general.file_type", o->ftype->file_type, err));
    KV(gguf_writer_set_u32(w, "llama.vocab_size", (uint32_t)h->n_vocab, err));
    KV(gguf_writer_set_u32(w, "llama.rope.dimension_count", (uint32_t)(h->n_embd / h->n_head), err));
    KV(gguf_writer_set_str(w, "tokenizer.ggml.model", "gpt2", err));
    KV(gguf_writer_set_str(w, "tokenizer.ggml.pre", "smollm", err));
    KV(gguf_writer_set_arr_str(w, "tokenizer.ggml.tokens", (const char *const *)v->tokens,
                               (uint64_t)v->n_tokens, err));
    KV(gguf_writer_set_arr(w, "tokenizer.ggml.token_type", GGUF_INT32, v->types, (uint64_t)v->n_tokens, err));
    KV(gguf_writer_set_arr_str(w, "tokenizer.ggml.merges", (const char *const *)v->merges,
                               (uint64_t)v->n_merges, err));
    KV(gguf_writer_set_u32(w, "tokenizer.ggml.bos_token_id", v->bos, err));
    KV(gguf_writer_set_u32(w, "tokenizer.ggml.eos_token_id", v->eos, err));
    KV(gguf_writer_set_u32(w, "tokenizer.ggml.unknown_token_id", v->unk, err));
    KV(gguf_writer_set_u32(w, "tokenizer.ggml.padding_token_id", v->pad, err));
    KV(gguf_writer_set_bool(w, "tokenizer.ggml.add_bos_token", 0, err));
    KV(gguf_writer_set_str(w, "tokenizer.chat_template", chat_template, err));
    KV(gguf_writer_set_u32(w, "general.quantization_version", GGML_QUANT_VERSION, err));
    st = write_plan(w, path, o, p, 0, err);
out:
    gguf_writer_destroy(w);
    return st;
}

uint32_t mk_file_type_of(svlm_dtype t) {
    switch (t) {
    case SVLM_F32: return 0;
    case SVLM_F16: return 1;
    case SVLM_Q4_0: return 2;
    case SVLM_Q4_1: return 3;
    case SVLM_Q8_0: return 7;
    case SVLM_Q5_0: return 8;
    case SVLM_Q5_1: return 9;
    case SVLM_Q4_K: return 14;
    case SVLM_Q5_K: return 16;
    case SVLM_Q6_K: return 18;
    case SVLM_BF16: return 32;
    default: return 0;
    }
}

svlm_status mk_write_mmproj(const char *path, const mk_options *o, const mk_plan *p, svlm_err *err) {
    const mk_vision_shape *v = &o->shape->vision;
    static const float half[3] = {0.5f, 0.5f, 0.5f};
    gguf_writer *w = NULL;
    svlm_status st = gguf_writer_create(path, 0, &w, err);
    if (st) return st;
    KV(gguf_writer_set_str(w, "general.architecture", "clip", err));
    KV(gguf_writer_set_str(w, "general.type", "mmproj", err));
    KV(gguf_writer_set_str(w, "general.name", o->shape->model_name, err));
    KV(gguf_writer_set_u32(w, "general.file_type", mk_file_type_of(o->mmproj_type), err));
    KV(gguf_writer_set_bool(w, "clip.has_vision_encoder", 1, err));
    KV(gguf_writer_set_u32(w, "clip.vision.projection_dim", (uint32_t)o->shape->text.n_embd, err));
    KV(gguf_writer_set_u32(w, "clip.vision.image_size", (uint32_t)v->image_size, err));
    KV(gguf_writer_set_u32(w, "clip.vision.patch_size", (uint32_t)v->patch_size, err));
    KV(gguf_writer_set_u32(w, "clip.vision.embedding_length", (uint32_t)v->n_embd, err));
    KV(gguf_writer_set_u32(w, "clip.vision.feed_forward_length", (uint32_t)v->n_ff, err));
    KV(gguf_writer_set_u32(w, "clip.vision.block_count", (uint32_t)v->n_layer, err));
    KV(gguf_writer_set_u32(w, "clip.vision.attention.head_count", (uint32_t)v->n_head, err));
    KV(gguf_writer_set_arr(w, "clip.vision.image_mean", GGUF_FLOAT32, half, 3, err));
    KV(gguf_writer_set_arr(w, "clip.vision.image_std", GGUF_FLOAT32, half, 3, err));
    KV(gguf_writer_set_str(w, "clip.projector_type", "idefics3", err));
    KV(gguf_writer_set_f32(w, "clip.vision.attention.layer_norm_epsilon", v->eps, err));
    KV(gguf_writer_set_u32(w, "clip.vision.projector.scale_factor", (uint32_t)v->scale_factor, err));
    KV(gguf_writer_set_bool(w, "clip.use_gelu", 1, err));
    KV(gguf_writer_set_u32(w, "clip.vision.preproc_image_size", (uint32_t)v->preproc_image_size, err));
    KV(gguf_writer_set_u32(w, "general.quantization_version", GGML_QUANT_VERSION, err));
    /* A stream base far from the text model's, so the two files draw different values. */
    st = write_plan(w, path, o, p, 1u << 20, err);
out:
    gguf_writer_destroy(w);
    return st;
}
