/* enc_model.c - placeholder so the build graph exists; being implemented (issue 2). */
#include "enc.h"
#include "umg_error.h"
int enc_model_open(const char *dir, enc_model **out) { *out = 0; return umg_err_set(UMG_EUNSUPPORTED, "encoder not implemented yet"); }
void enc_model_close(enc_model *m) { (void)m; }
