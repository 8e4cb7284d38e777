/* proto_hits.h - the one encoding of search hits, shared by the server
 * (packs them) and clients (decode them); docs/protocol.md, "query".
 *
 *   {"hits": [{"image_id": uint, "path": str, "score": float,
 *              "width": uint, "height": uint,          the photo's size in pixels
 *              "box": [x, y, w, h], "region_id": uint,  region granularity
 *              "refined": float,                        refine "pixel"
 *              "heatmap": {"grid": G, "extent": [x, y, w, h], "values": [G*G floats]}}]}
 *                                                       pixel granularity
 * Boxes are packed with whole pixels as integers (proto_pack_box). */
#ifndef PROTO_HITS_H
#define PROTO_HITS_H

#include <stddef.h>
#include <stdint.h>

#include <msgpack.h>

typedef struct proto_hit {
    uint64_t image_id;
    const char *path;       /* packing: NUL-terminated (NULL = ""); decoding: NUL-terminated copy */
    float score;
    uint32_t width, height; /* 0 when the server did not say (older servers) */
    int has_box;
    float box[4];
    uint64_t region_id;
    int has_refined;
    float refined;
    const float *heat;      /* grid*grid values, row-major, or NULL */
    float extent[4];        /* where the grid lies in the photo's pixels */
} proto_hit;

/* Pack box [x, y, w, h]: whole numbers as integers (easier to read and compare). */
void proto_pack_box(msgpack_packer *pk, const float box[4]);

/* Pack the result map {"hits": [...]} of n hits (grid: cells per side of every heat). */
void proto_hits_pack(msgpack_packer *pk, const proto_hit *hits, int n, int grid);

/* Decoded hits; everything they point to is owned by the struct. */
typedef struct proto_hits {
    proto_hit *hits;
    int n;
    int grid;               /* of the heatmaps, 0 if none */
    char *strings;          /* the paths */
    float *heat;            /* the heatmaps' values */
} proto_hits;

/* Decode the result of a query or query_image.  UMG_EPROTO (with a message)
 * when it is not a hits map of this encoding, UMG_ENOMEM. */
int proto_hits_decode(const msgpack_object *result, proto_hits *out);
void proto_hits_free(proto_hits *h); /* NULL-safe; leaves it empty */

#endif
