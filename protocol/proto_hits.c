/* proto_hits.c - see proto_hits.h. */
#include "proto_hits.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "proto_request.h"
#include "umg_error.h"

void proto_pack_box(msgpack_packer *pk, const float b[4])
{
    msgpack_pack_array(pk, 4);
    for (int i = 0; i < 4; i++) {
        float v = b[i];
        if (v == floorf(v) && fabsf(v) < 1e9f) msgpack_pack_int64(pk, (int64_t)v);
        else msgpack_pack_float(pk, v);
    }
}

void proto_hits_pack(msgpack_packer *pk, const proto_hit *hits, int n, int grid)
{
    msgpack_pack_map(pk, 1);
    proto_pack_cstr(pk, "hits");
    msgpack_pack_array(pk, (size_t)n);
    for (int i = 0; i < n; i++) {
        const proto_hit *h = &hits[i];
        msgpack_pack_map(pk, 5 + (h->has_box ? 2 : 0) + (h->heat ? 1 : 0) + (h->has_refined ? 1 : 0));
        proto_pack_cstr(pk, "image_id"), msgpack_pack_uint64(pk, h->image_id);
        proto_pack_cstr(pk, "path"), proto_pack_cstr(pk, h->path ? h->path : "");
        proto_pack_cstr(pk, "score"), msgpack_pack_float(pk, h->score);
        if (h->has_box) {
            proto_pack_cstr(pk, "box"), proto_pack_box(pk, h->box);
            proto_pack_cstr(pk, "region_id"), msgpack_pack_uint64(pk, h->region_id);
        }
        if (h->has_refined) proto_pack_cstr(pk, "refined"), msgpack_pack_float(pk, h->refined);
        if (h->heat) {
            size_t GG = (size_t)grid * grid;
            proto_pack_cstr(pk, "heatmap");
            msgpack_pack_map(pk, 3);
            proto_pack_cstr(pk, "grid"), msgpack_pack_int32(pk, grid);
            proto_pack_cstr(pk, "extent"), proto_pack_box(pk, h->extent);
            proto_pack_cstr(pk, "values");
            msgpack_pack_array(pk, GG);
            for (size_t c = 0; c < GG; c++) msgpack_pack_float(pk, h->heat[c]);
        }
        proto_pack_cstr(pk, "width"), msgpack_pack_uint32(pk, h->width);
        proto_pack_cstr(pk, "height"), msgpack_pack_uint32(pk, h->height);
    }
}

void proto_hits_free(proto_hits *h)
{
    if (!h) return;
    free(h->hits);
    free(h->strings);
    free(h->heat);
    memset(h, 0, sizeof *h);
}

static int box_of(const msgpack_object *o, float b[4])
{
    double d[4];
    if (!proto_obj_box(o, d)) return 0;
    for (int i = 0; i < 4; i++) b[i] = (float)d[i];
    return 1;
}

int proto_hits_decode(const msgpack_object *result, proto_hits *out)
{
    memset(out, 0, sizeof *out);
    const msgpack_object *hits = proto_map_get(result, "hits");
    if (!hits || hits->type != MSGPACK_OBJECT_ARRAY)
        return umg_err_set(UMG_EPROTO, "the server's answer has no 'hits' array");
    uint32_t n = hits->via.array.size;
    /* sizes first: one block for the paths, one for the heatmaps */
    size_t str_bytes = 0, cells = 0;
    uint64_t grid = 0;
    for (uint32_t i = 0; i < n; i++) {
        const msgpack_object *o = &hits->via.array.ptr[i];
        if (o->type != MSGPACK_OBJECT_MAP) return umg_err_set(UMG_EPROTO, "hit %u is not a map", i);
        const char *p;
        size_t pl = 0;
        proto_obj_str(proto_map_get(o, "path"), &p, &pl);
        str_bytes += pl + 1;
        const msgpack_object *hm = proto_map_get(o, "heatmap");
        if (hm) {
            uint64_t g;
            const msgpack_object *v = proto_map_get(hm, "values");
            if (!proto_obj_uint(proto_map_get(hm, "grid"), &g) || g == 0 || g > 4096 || (grid && g != grid) || !v ||
                v->type != MSGPACK_OBJECT_ARRAY || v->via.array.size != g * g)
                return umg_err_set(UMG_EPROTO, "hit %u: a heatmap is {grid: G, extent: box, values: G*G numbers}", i);
            grid = g;
            cells += g * g;
        }
    }
    out->hits = calloc(n ? n : 1, sizeof *out->hits);
    out->strings = malloc(str_bytes ? str_bytes : 1);
    out->heat = cells ? malloc(cells * sizeof *out->heat) : NULL;
    if (!out->hits || !out->strings || (cells && !out->heat)) {
        proto_hits_free(out);
        return umg_err_set(UMG_ENOMEM, "out of memory");
    }
    out->grid = (int)grid;
    char *sp = out->strings;
    float *hp = out->heat;
    for (uint32_t i = 0; i < n; i++) {
        const msgpack_object *o = &hits->via.array.ptr[i];
        proto_hit *h = &out->hits[i];
        const char *p = "";
        size_t pl = 0;
        proto_obj_str(proto_map_get(o, "path"), &p, &pl);
        memcpy(sp, p, pl);
        sp[pl] = 0;
        h->path = sp;
        sp += pl + 1;
        double d;
        uint64_t u;
        proto_obj_uint(proto_map_get(o, "image_id"), &h->image_id);
        if (proto_obj_float(proto_map_get(o, "score"), &d)) h->score = (float)d;
        if (proto_obj_uint(proto_map_get(o, "width"), &u) && u <= UINT32_MAX) h->width = (uint32_t)u;
        if (proto_obj_uint(proto_map_get(o, "height"), &u) && u <= UINT32_MAX) h->height = (uint32_t)u;
        if ((h->has_box = box_of(proto_map_get(o, "box"), h->box)))
            proto_obj_uint(proto_map_get(o, "region_id"), &h->region_id);
        if ((h->has_refined = proto_obj_float(proto_map_get(o, "refined"), &d))) h->refined = (float)d;
        const msgpack_object *hm = proto_map_get(o, "heatmap");
        if (hm) {
            const msgpack_object *v = proto_map_get(hm, "values");
            for (uint32_t c = 0; c < v->via.array.size; c++)
                hp[c] = proto_obj_float(&v->via.array.ptr[c], &d) ? (float)d : NAN;
            h->heat = hp;
            hp += v->via.array.size;
            box_of(proto_map_get(hm, "extent"), h->extent);
        }
    }
    out->n = (int)n;
    return 0;
}
