/* enc_image.c - placeholder so the build graph exists; being implemented (issue 2). */
#include "enc_image.h"
#include "umg_error.h"
#include <stdlib.h>
int enc_image_decode(const void *d, size_t len, uint64_t mp, enc_image *out) { return umg_err_set(UMG_EUNSUPPORTED, "decoder not implemented yet"); }
int enc_image_load(const char *path, uint64_t mp, enc_image *out) { return umg_err_set(UMG_EUNSUPPORTED, "decoder not implemented yet"); }
void enc_image_free(enc_image *img) { if (img) { free(img->rgb); img->rgb = 0; } }
int enc_image_crop(const enc_image *s, int x, int y, int w, int h, enc_image *o) { return UMG_EUNSUPPORTED; }
