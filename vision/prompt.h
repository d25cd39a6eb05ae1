/*
 * SmolVLM2 prompts at the token level. Image-feature positions are written as -1 (the
 * decoder's svlm_llama_eval takes the next embedding row there), so a prompt is one id array.
 * Special-token ids come from the vocabulary by their text, never from constants.
 *
 * Image block (llama.cpp's order for a split image, HF's text):
 *   per row r, per col c: <fake_token_around_image><row_r_col_c> + T image rows;
 *   "\n" after each row but the last, "\n\n" after the last;
 *   <fake_token_around_image><global-img> + T rows (overview) + <fake_token_around_image>.
 * Unsplit image or video frame: <fake_token_around_image><global-img> + T rows + <fake...>.
 */
#ifndef SVLM_VISION_PROMPT_H
#define SVLM_VISION_PROMPT_H

#include <stddef.h>
#include <stdint.h>

#include "llm/tokenizer.h"
#include "svlm.h"

#define SVLM_MEDIA_MARKER    "<__media__>"
#define SVLM_PROMPT_MAX_GRID 6

typedef struct svlm_vlm_specials {
    int32_t fake;                                               /* <fake_token_around_image> */
    int32_t global;                                             /* <global-img> */
    int32_t rowcol[SVLM_PROMPT_MAX_GRID][SVLM_PROMPT_MAX_GRID]; /* <row_R_col_C> (1-based names), -1 absent */
} svlm_vlm_specials;

typedef struct svlm_prompt {
    int32_t *ids; /* [n]; -1 = next image-embedding row */
    size_t n, cap;
    size_t n_image_rows;
} svlm_prompt;

svlm_status svlm_vlm_specials_find(const svlm_tokenizer *t, svlm_vlm_specials *sp, svlm_err *err);

void svlm_prompt_init(svlm_prompt *p);
void svlm_prompt_free(svlm_prompt *p);
svlm_status svlm_prompt_text(svlm_prompt *p, const svlm_tokenizer *t, const char *text, size_t len,
                             int add_special, int parse_special, svlm_err *err);
/* rows, cols >= 1: split image (rows*cols tiles + overview); 0, 0: one unsplit image. */
svlm_status svlm_prompt_image(svlm_prompt *p, const svlm_tokenizer *t, const svlm_vlm_specials *sp, int rows,
                              int cols, int tokens_per_tile, svlm_err *err);
/* "\nFrame from MM:SS:" + a single-image block (HF's video layout). */
svlm_status svlm_prompt_frame(svlm_prompt *p, const svlm_tokenizer *t, const svlm_vlm_specials *sp,
                              double t_seconds, int tokens_per_tile, svlm_err *err);
/* HF's video intro: "You are provided the following series of {words} frames from a {H:MM:SS}
 * [H:MM:SS] video.\n". Returns the length written (truncated to cap - 1), like snprintf. */
int svlm_prompt_video_intro(char *buf, size_t cap, int n_frames, double duration_s);

/*
 * A whole prompt around one image.
 * raw = 0: the SmolVLM2 chat format "<|im_start|>User:<image block>{user}<end_of_utterance>\nAssistant:"
 *          with the user text tokenized as plain text (special-token names in it stay text).
 * raw = 1: `user` verbatim with special tokens parsed; exactly one SVLM_MEDIA_MARKER becomes the
 *          image block.
 */
svlm_status svlm_prompt_build(svlm_prompt *p, const svlm_tokenizer *t, const svlm_vlm_specials *sp,
                              const char *user, int raw, int rows, int cols, int tokens_per_tile,
                              svlm_err *err);

#endif
