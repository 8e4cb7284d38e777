/* enc_preprocess.c - placeholder so the build graph exists; being implemented (issue 2). */
#include "enc_image.h"
#include "umg_error.h"
int enc_image_resize(const enc_image *s, int w, int h, enc_image *o) { return UMG_EUNSUPPORTED; }
void enc_preproc_default(enc_preproc *p, int image_size) { (void)p; }
int enc_preproc_load(const char *dir, int image_size, enc_preproc *p) { return UMG_EUNSUPPORTED; }
void enc_preproc_geometry(const enc_preproc *p, int w, int h, enc_preproc_geom *g) { (void)g; }
int enc_preprocess(const enc_image *img, const enc_preproc *p, float *out) { return UMG_EUNSUPPORTED; }
