/* enc_tokenizer.c - placeholder so the build graph exists; being implemented (issue 2). */
#include "enc_tokenizer.h"
#include "umg_error.h"
int enc_tokenizer_open(const char *v, const char *m, enc_tokenizer **out) { *out = 0; return umg_err_set(UMG_EUNSUPPORTED, "tokenizer not implemented yet"); }
void enc_tokenizer_close(enc_tokenizer *tok) { (void)tok; }
int enc_tokenize(const enc_tokenizer *tok, const char *text, size_t len, int32_t *ids, int max_ids, int *n_ids) { return UMG_EUNSUPPORTED; }
int32_t enc_tokenizer_token_id(const enc_tokenizer *tok, const char *token) { return -1; }
int enc_tokenizer_vocab_size(const enc_tokenizer *tok) { return 0; }
