/* enc_safetensors.c - placeholder so the build graph exists; being implemented (issue 2). */
typedef int enc_safetensors_placeholder;
