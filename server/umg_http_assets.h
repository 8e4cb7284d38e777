/* umg_http_assets.h - files served by the HTTP listener from the binary
 * (web/: the page, /v1/openapi.json), embedded at build time by
 * cmake/embed_assets.cmake (no build step of their own). */
#ifndef UMG_HTTP_ASSETS_H
#define UMG_HTTP_ASSETS_H

#include <stddef.h>

typedef struct umg_asset {
    const char *path;          /* URL path, e.g. "/v1/openapi.json" */
    const char *content_type;
    const unsigned char *data; /* len bytes (and a NUL after them) */
    size_t len;
} umg_asset;

/* The asset served at URL path `path`, or NULL. */
const umg_asset *umg_asset_find(const char *path);

#endif
