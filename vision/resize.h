/* Image resamplers on 8-bit RGB images (vision/image.h). Each writes a new dst image. */
#ifndef SVLM_VISION_RESIZE_H
#define SVLM_VISION_RESIZE_H

#include "vision/image.h"

/* llama.cpp's bilinear: source coordinate x*(src-1)/(dst-1), no antialias, result truncated. */
svlm_status svlm_resize_bilinear_llama(const svlm_image *src, int w, int h, svlm_image *dst, svlm_err *err);
/* llama.cpp's "bicubic": 4-tap cubic Lagrange through the neighbours at -1..+2 (edge-clamped),
 * source coordinate x*src/dst, no antialias, rounded and clamped. */
svlm_status svlm_resize_bicubic_llama(const svlm_image *src, int w, int h, svlm_image *dst, svlm_err *err);
/* Aspect-preserving bicubic resize into a w x h canvas of black, centred (llama.cpp's letterbox
 * for the refined image: side = min(ceil(side * scale), target), offset = floor(slack / 2)). */
svlm_status svlm_resize_bicubic_letterbox_llama(const svlm_image *src, int w, int h, svlm_image *dst,
                                                svlm_err *err);
/* Antialiased separable bicubic (Keys, a = -0.5; kernel widened by the downscale factor, as in
 * Pillow and torchvision's antialias=True): horizontal pass, 8-bit rounding, vertical pass. */
svlm_status svlm_resize_bicubic_aa(const svlm_image *src, int w, int h, svlm_image *dst, svlm_err *err);

#endif
