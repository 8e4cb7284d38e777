/* enc_config.c - placeholder so the build graph exists; being implemented (issue 2). */
typedef int enc_config_placeholder;
