/* search.h - queries: a text, an image or a box in an image in; ranked hits
 * with boxes, scores and heatmaps out (engine.h, docs/protocol.md "query").
 *
 * A query vector comes from eng_text_vector or eng_image_vector; eng_search
 * then finds the k best hits that pass the filters, however few photos pass
 * them: a filtered search whose matching set is small scores that set
 * exactly, any other over-fetches from the index, doubling until k hits
 * remain after the filters and the per-photo rules of region hits (or the
 * index is exhausted); it optionally re-ranks region hits by the text's
 * heatmap ("refine").
 * All thread-safe. */
#ifndef UMG_ENGINE_SEARCH_H
#define UMG_ENGINE_SEARCH_H

#include <stddef.h>
#include <stdint.h>

#include "capture.h"
#include "engine.h"
#include "ingest.h"

enum eng_granularity {
    ENG_GRAN_IMAGE = 0,   /* best photos */
    ENG_GRAN_REGION = 1,  /* best boxes, at most one of overlapping boxes per photo */
    ENG_GRAN_PIXEL = 2    /* best photos, each with the query's heatmap over its patch grid */
};

/* Region hits of one photo: a box is dropped when a better box of the same
 * photo already among the hits overlaps it at IoU > ENG_REGION_NMS_IOU, or
 * when one of the two mostly contains the other: their intersection over the
 * smaller box's area > ENG_REGION_CONTAIN (the offset, partial and inner
 * boxes of one object; docs/regions.md "Boxes of one photo"). */
#define ENG_REGION_NMS_IOU 0.5f
#define ENG_REGION_CONTAIN 0.8f
#define ENG_PER_PHOTO_DEFAULT 1  /* region hits per photo when per_photo is 0 */
#define ENG_MAX_OFFSET 10000     /* most hits skipped by offset (pagination) */
/* Most candidates one query takes from an index (db_search's limit); an
 * over-fetch doubles up to it (docs/protocol.md "How filters find k hits"). */
#define ENG_MAX_FETCH 100000
/* A filtered search whose matching photos hold at most this many vectors
 * (photos at image granularity, their boxes at region granularity) scores
 * exactly that subset (db_search_within) instead of searching the index. */
#define ENG_SCAN_MAX 20000

typedef struct eng_filters {
    eng_str path_prefix;     /* ptr NULL: any path (an empty prefix still counts as a filter
                                for the over-fetch) */
    const eng_str *tags;     /* every one of n_tags must be among the photo's tags */
    int n_tags;
    int has_min_score;
    double min_score;        /* hits scoring below it are dropped */
    /* capture metadata (capture.h: how times compare); a photo that does not
     * know the field never passes its filter */
    int has_taken_after, has_taken_before;
    eng_time taken_after;    /* taken at or after */
    eng_time taken_before;   /* taken before */
    eng_str camera;          /* ptr NULL: any; else a case-insensitive substring of the camera */
    int has_near;
    double near_lat, near_lon, near_km; /* taken within near_km of the point */
} eng_filters;

typedef struct eng_search_req {
    const float *query;      /* dim floats, any norm (normalized here) */
    int k;                   /* hits wanted, >= 1 */
    int granularity;         /* enum eng_granularity */
    int refine;              /* region granularity only: re-rank each photo's boxes by
                                the query's heatmap (docs/regions.md, "Pixel-level refinement") */
    uint64_t exclude_image;  /* this photo never appears (a query by a stored image); 0 = none */
    int offset;              /* hits skipped before the k returned: 0..ENG_MAX_OFFSET (pages
                                of one query follow each other without gaps or repeats) */
    int per_photo;           /* region granularity: most boxes of one photo among the hits
                                (0 = ENG_PER_PHOTO_DEFAULT; a large number: all) */
    eng_filters filters;
} eng_search_req;

typedef struct eng_hit {
    uint64_t image_id;
    char *path;              /* the photo's stored path */
    uint32_t width, height;  /* the photo's size in pixels (after EXIF orientation) */
    db_capture capture;      /* when, where, with what it was taken, as far as known */
    float score;             /* cosine similarity */
    int has_box;             /* region granularity */
    uint64_t region_id;
    float box[4];            /* x, y, w, h in the photo's pixels */
    int has_refined;
    float refined;           /* refine: score + the heatmap's agreement, the rank key */
    float *heat;             /* pixel granularity: grid*grid cosines, row-major; NULL when
                                the photo has no patch tokens */
    float extent[4];         /* where the whole grid lies in the photo's pixels [x, y, w, h]
                                (beyond the photo where the input was padded) */
} eng_hit;

typedef struct eng_hits {
    eng_hit *hits;           /* n of them, best first; owned (eng_hits_free) */
    int n;
    int grid;                /* cells per side of every heat */
} eng_hits;

/* Search.  *out is filled (and must be freed) on success only. */
int eng_search(eng *e, const eng_search_req *req, eng_hits *out);
void eng_hits_free(eng_hits *h); /* NULL-safe; leaves it empty */

/* The text's vector (dim floats): tokenized here, encoded batched with other
 * text queries on the text lanes (text_lanes.h). */
int eng_text_vector(eng *e, const char *text, size_t len, float *vec);

typedef struct eng_image_query {
    int by_id;               /* 1: the stored image image_id; 0: the photo in data */
    uint64_t image_id;
    const uint8_t *data;     /* encoded photo (by_id == 0) */
    size_t len;
    int has_box;
    float box[4];            /* a box in that photo's pixels: the query is that region */
} eng_image_query;

/* The query vector of an image or of a box in it (dim floats); *exclude gets
 * the image id a search by it should leave out (the stored image itself
 * when queried whole), else 0.  UMG_ENOENT (no such image), UMG_EINVAL (box
 * outside the photo), UMG_EUNSUPPORTED (a box on a stored image in crop mode
 * or without patch tokens), or the decoder's errors. */
int eng_image_vector(eng *e, const eng_image_query *q, float *vec, uint64_t *exclude);

#endif
