/* enc_kernels.c - placeholder so the build graph exists; being implemented (issue 2). */
typedef int enc_kernels_placeholder;
