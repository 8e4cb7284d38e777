/* enc_html_entities.c - placeholder; generated table comes with the tokenizer. */
typedef int enc_html_entities_placeholder;
