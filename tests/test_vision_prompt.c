/*
 * SmolVLM2 prompt assembly with the vision-tiny vocabulary: special ids are found by name
 * (984 fake, 986 global, 988.. row/col per the fixture README), the split-image block matches
 * llama.cpp's sequence for a 2x2 grid, the video-frame block and intro text follow HF's
 * processor ("\nFrame from MM:SS:", num2words, H:MM:SS), and bad requests fail clearly.
 */
#include <stdlib.h>
#include <string.h>

#include "llm/llama.h"
#include "test.h"
#include "vision/prompt.h"

int test_main(void) {
    test_data_or_skip();
    svlm_err err = {0};
    svlm_llama *m = NULL;
    svlm_status st =
        svlm_llama_load(test_data("fixtures/vision-tiny/models/tiny-smolvlm-text-f32.gguf"), &m, &err);
    REQUIRE(st == SVLM_OK, "%s", err.msg);
    const svlm_tokenizer *tok = svlm_llama_tokenizer(m);
    svlm_vlm_specials sp;
    st = svlm_vlm_specials_find(tok, &sp, &err);
    REQUIRE(st == SVLM_OK, "%s", err.msg);
    CHECK(sp.fake == 984 && sp.global == 986 && sp.rowcol[0][0] == 988 && sp.rowcol[1][0] == 994 &&
              sp.rowcol[5][5] == 1023,
          "special ids %d %d %d %d", sp.fake, sp.global, sp.rowcol[0][0], sp.rowcol[5][5]);

    /* 2x2 grid, T = 2: the llama.cpp order of the fixture (result.json) at a smaller T. */
    svlm_prompt p;
    svlm_prompt_init(&p);
    st = svlm_prompt_image(&p, tok, &sp, 2, 2, 2, &err);
    REQUIRE(st == SVLM_OK, "%s", err.msg);
    static const int32_t want[] = {984, 988, -1,  -1, 984, 989, -1,  -1,  13, 984, 994, -1,
                                   -1,  984, 995, -1, -1,  259, 984, 986, -1, -1,  984};
    CHECK(p.n == sizeof want / sizeof want[0] && !memcmp(p.ids, want, sizeof want) && p.n_image_rows == 10,
          "split-image layout differs (%zu ids)", p.n);
    svlm_prompt_free(&p);

    /* Video frame at 61.5 s: "\nFrame from 01:01:" then the single-image block. */
    svlm_prompt_init(&p);
    st = svlm_prompt_frame(&p, tok, &sp, 61.5, 3, &err);
    REQUIRE(st == SVLM_OK, "%s", err.msg);
    REQUIRE(p.n >= 6, "frame block too short");
    size_t text_n = p.n - 6;
    char *text = svlm_detokenize(tok, p.ids, text_n, 1);
    CHECK(text && !strcmp(text, "\nFrame from 01:01:"), "frame text '%s'", text ? text : "(null)");
    free(text);
    static const int32_t tail[] = {984, 986, -1, -1, -1, 984};
    CHECK(!memcmp(p.ids + text_n, tail, sizeof tail), "frame block differs");
    svlm_prompt_free(&p);

    /* A stream 200 days on (a resumed memory bank carries its clock): minutes past 99, as SmolVLM2's
     * "MM:SS" writes them; 1e7 s was the end of a stream's frames before. */
    svlm_prompt_init(&p);
    st = svlm_prompt_frame(&p, tok, &sp, 200.0 * 86400 + 5, 3, &err);
    REQUIRE(st == SVLM_OK, "a frame 200 days in: %s", err.msg);
    text = svlm_detokenize(tok, p.ids, p.n - 6, 1);
    CHECK(text && !strcmp(text, "\nFrame from 288000:05:"), "frame text '%s'", text ? text : "(null)");
    free(text);
    svlm_prompt_free(&p);
    svlm_prompt_init(&p);
    CHECK(svlm_prompt_frame(&p, tok, &sp, -1, 3, &err) == SVLM_E_INVALID, "a negative time accepted");
    svlm_prompt_free(&p);

    char intro[256];
    svlm_prompt_video_intro(intro, sizeof intro, 24, 24.9);
    CHECK(
        !strcmp(
            intro,
            "You are provided the following series of twenty-four frames from a 0:00:24 [H:MM:SS] video.\n"),
        "intro '%s'", intro);
    svlm_prompt_video_intro(intro, sizeof intro, 105, 3725);
    CHECK(strstr(intro, "one hundred and five frames from a 1:02:05 ") != NULL, "intro '%s'", intro);

    /* Errors: grids larger than the vocabulary names, a --raw prompt without / with two markers. */
    svlm_prompt_init(&p);
    st = svlm_prompt_image(&p, tok, &sp, 7, 1, 2, &err);
    CHECK(st == SVLM_E_LIMIT && strstr(err.msg, "grid"), "7x1 grid: %d %s", st, err.msg);
    st = svlm_prompt_build(&p, tok, &sp, "no marker", 1, 2, 2, 2, &err);
    CHECK(st == SVLM_E_INVALID && strstr(err.msg, SVLM_MEDIA_MARKER), "no marker: %s", err.msg);
    st = svlm_prompt_build(&p, tok, &sp, "<__media__><__media__>", 1, 2, 2, 2, &err);
    CHECK(st == SVLM_E_INVALID, "two markers accepted");
    svlm_prompt_free(&p);
    svlm_llama_free(m);
    return 0;
}
