/* proto_request.c - the command table and table-driven request validation. */
#include "proto_request.h"

#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "umg_error.h"

/* ---- the command table ------------------------------------------------- */

#define STR_MAX_PATH 4096
#define STR_MAX_TEXT 4096
#define TAG_MAX_LEN 256
#define TAGS_MAX 64

static const char *const granularities[] = {"image", "region", "pixel", NULL};
static const char *const refinements[] = {"none", "pixel", NULL};

/* Where each argument lands in the op's typed struct (proto_args). */
#define AT(T, f) .offset = offsetof(T, f)
#define HAS(T, f) .has = offsetof(T, f) + 1

#define ARGS(a) a, sizeof a / sizeof a[0]
static const proto_arg_spec near_fields[] = {
    {.key = "lat", .type = PROTO_T_FLOAT, .flags = PROTO_ARG_REQUIRED, .fmin = -90, .fmax = 90, AT(proto_near, lat)},
    {.key = "lon", .type = PROTO_T_FLOAT, .flags = PROTO_ARG_REQUIRED, .fmin = -180, .fmax = 180, AT(proto_near, lon)},
    {.key = "km", .type = PROTO_T_FLOAT, .flags = PROTO_ARG_REQUIRED, .fmin = 0, .fmax = 20040, AT(proto_near, km)},
};
static const proto_arg_spec filter_fields[] = {
    {.key = "path_prefix", .type = PROTO_T_STR, .max_len = STR_MAX_PATH, AT(proto_filters, path_prefix)},
    {.key = "tags", .type = PROTO_T_STR_ARRAY, .flags = PROTO_ARG_NONEMPTY,
     .max_len = TAG_MAX_LEN, .max_items = TAGS_MAX, AT(proto_filters, tags)},
    {.key = "min_score", .type = PROTO_T_FLOAT, AT(proto_filters, min_score), HAS(proto_filters, has_min_score)},
    /* capture metadata (docs/protocol.md): the dates' ISO 8601 form is checked by the server */
    {.key = "taken_after", .type = PROTO_T_STR, .flags = PROTO_ARG_NONEMPTY, .max_len = 64,
     AT(proto_filters, taken_after)},
    {.key = "taken_before", .type = PROTO_T_STR, .flags = PROTO_ARG_NONEMPTY, .max_len = 64,
     AT(proto_filters, taken_before)},
    {.key = "camera", .type = PROTO_T_STR, .flags = PROTO_ARG_NONEMPTY, .max_len = 127, AT(proto_filters, camera)},
    {.key = "near", .type = PROTO_T_MAP, .fields = ARGS(near_fields), AT(proto_filters, near),
     HAS(proto_filters, has_near)},
};

#define ARG_TAGS(T) {.key = "tags", .type = PROTO_T_STR_ARRAY, .flags = PROTO_ARG_NONEMPTY, \
                     .max_len = TAG_MAX_LEN, .max_items = TAGS_MAX, AT(T, tags)}
#define ARG_GRANULARITY(T) {.key = "granularity", .type = PROTO_T_STR, .choices = granularities, AT(T, granularity)}
#define ARG_K(T) {.key = "k", .type = PROTO_T_UINT, .imin = 1, .imax = PROTO_MAX_K, AT(T, k), .udefault = PROTO_DEFAULT_K}
#define ARG_FILTERS(T) {.key = "filters", .type = PROTO_T_MAP, .fields = ARGS(filter_fields), AT(T, filters), \
                        HAS(T, has_filters)}
#define ARG_OFFSET(T) {.key = "offset", .type = PROTO_T_UINT, .imin = 0, .imax = PROTO_MAX_OFFSET, AT(T, offset)}
#define ARG_PER_PHOTO(T) {.key = "per_photo", .type = PROTO_T_UINT, .imin = 1, .imax = PROTO_MAX_PER_PHOTO, \
                          AT(T, per_photo)}
#define ARG_IMAGE_ID(T, alt_) {.key = "image_id", .type = PROTO_T_UINT, .flags = PROTO_ARG_REQUIRED, .alt = alt_, \
                               AT(T, image_id), HAS(T, has_image_id)}
#define ARG_PATH(T, alt_) {.key = "path", .type = PROTO_T_STR, .flags = PROTO_ARG_REQUIRED | PROTO_ARG_NONEMPTY, \
                           .alt = alt_, .max_len = STR_MAX_PATH, AT(T, path)}

static const proto_arg_spec hello_args[] = {
    {.key = "token", .type = PROTO_T_STR, .max_len = 4096, AT(proto_hello_args, token)},
    {.key = "client", .type = PROTO_T_STR, .max_len = 256, AT(proto_hello_args, client)},
};
static const proto_arg_spec ingest_args[] = {
    ARG_PATH(proto_ingest_args, 1),
    {.key = "data", .type = PROTO_T_BIN, .flags = PROTO_ARG_REQUIRED | PROTO_ARG_NONEMPTY, .alt = 2,
     AT(proto_ingest_args, data)},
    {.key = "name", .type = PROTO_T_STR, .flags = PROTO_ARG_REQUIRED | PROTO_ARG_NONEMPTY, .alt = 2,
     .max_len = STR_MAX_PATH, AT(proto_ingest_args, name)},
    /* optional, with data only (alternative 2): the file's own modification time */
    {.key = "mtime", .type = PROTO_T_INT, .alt = 2, .imin = 1, .imax = PROTO_MAX_MTIME,
     AT(proto_ingest_args, mtime), HAS(proto_ingest_args, has_mtime)},
    ARG_TAGS(proto_ingest_args),
};
static const proto_arg_spec query_args[] = {
    {.key = "text", .type = PROTO_T_STR, .flags = PROTO_ARG_REQUIRED | PROTO_ARG_NONEMPTY,
     .max_len = STR_MAX_TEXT, AT(proto_query_args, text)},
    ARG_GRANULARITY(proto_query_args), ARG_K(proto_query_args), ARG_FILTERS(proto_query_args),
    {.key = "refine", .type = PROTO_T_STR, .choices = refinements, AT(proto_query_args, refine)},
    ARG_OFFSET(proto_query_args), ARG_PER_PHOTO(proto_query_args),
};
static const proto_arg_spec query_image_args[] = {
    ARG_IMAGE_ID(proto_query_image_args, 1),
    {.key = "data", .type = PROTO_T_BIN, .flags = PROTO_ARG_REQUIRED | PROTO_ARG_NONEMPTY, .alt = 2,
     AT(proto_query_image_args, data)},
    {.key = "box", .type = PROTO_T_BOX, AT(proto_query_image_args, box), HAS(proto_query_image_args, has_box)},
    ARG_GRANULARITY(proto_query_image_args), ARG_K(proto_query_image_args), ARG_FILTERS(proto_query_image_args),
    ARG_OFFSET(proto_query_image_args), ARG_PER_PHOTO(proto_query_image_args),
};
static const proto_arg_spec by_id_or_path_args[] = {ARG_IMAGE_ID(proto_image_ref_args, 1),
                                                    ARG_PATH(proto_image_ref_args, 2)};
/* folders that change (umgdb ingest --sync): a page of the images under a
 * path prefix, and re-pathing one (docs/protocol.md, "list", "move") */
static const proto_arg_spec list_args[] = {
    {.key = "path_prefix", .type = PROTO_T_STR, .flags = PROTO_ARG_REQUIRED | PROTO_ARG_NONEMPTY,
     .max_len = STR_MAX_PATH, AT(proto_list_args, path_prefix)},
    {.key = "after", .type = PROTO_T_UINT, AT(proto_list_args, after)},
    {.key = "limit", .type = PROTO_T_UINT, .imin = 1, .imax = PROTO_MAX_LIST, AT(proto_list_args, limit),
     .udefault = PROTO_MAX_LIST},
};
static const proto_arg_spec move_args[] = {
    ARG_IMAGE_ID(proto_move_args, 0), ARG_PATH(proto_move_args, 0),
    {.key = "mtime", .type = PROTO_T_INT, .imin = 1, .imax = PROTO_MAX_MTIME, AT(proto_move_args, mtime),
     HAS(proto_move_args, has_mtime)},
};

const proto_op proto_op_table[PROTO_OP_COUNT] = {
    [PROTO_OP_HELLO] = {"hello", PROTO_OP_HELLO, ARGS(hello_args), 0},
    [PROTO_OP_PING] = {"ping", PROTO_OP_PING, NULL, 0, 0},
    [PROTO_OP_INGEST] = {"ingest", PROTO_OP_INGEST, ARGS(ingest_args), 2},
    [PROTO_OP_QUERY] = {"query", PROTO_OP_QUERY, ARGS(query_args), 0},
    [PROTO_OP_QUERY_IMAGE] = {"query_image", PROTO_OP_QUERY_IMAGE, ARGS(query_image_args), 2},
    [PROTO_OP_GET] = {"get", PROTO_OP_GET, ARGS(by_id_or_path_args), 2},
    [PROTO_OP_DELETE] = {"delete", PROTO_OP_DELETE, ARGS(by_id_or_path_args), 2},
    [PROTO_OP_STATS] = {"stats", PROTO_OP_STATS, NULL, 0, 0},
    [PROTO_OP_LIST] = {"list", PROTO_OP_LIST, ARGS(list_args), 0},
    [PROTO_OP_MOVE] = {"move", PROTO_OP_MOVE, ARGS(move_args), 0},
    [PROTO_OP_THUMB] = {"thumb", PROTO_OP_THUMB, ARGS(by_id_or_path_args), 2},
};

const proto_op *proto_ops(void) { return proto_op_table; }

const proto_op *proto_op_find(const char *name, size_t len)
{
    for (size_t i = 0; i < PROTO_OP_COUNT; i++)
        if (strlen(proto_op_table[i].name) == len && memcmp(proto_op_table[i].name, name, len) == 0)
            return &proto_op_table[i];
    return NULL;
}

/* ---- object getters ----------------------------------------------------- */

bool proto_obj_str_eq(const msgpack_object *o, const char *s)
{
    size_t n = strlen(s);
    return o && o->type == MSGPACK_OBJECT_STR && o->via.str.size == n && memcmp(o->via.str.ptr, s, n) == 0;
}

const msgpack_object *proto_map_get(const msgpack_object *map, const char *key)
{
    if (!map || map->type != MSGPACK_OBJECT_MAP) return NULL;
    for (uint32_t i = 0; i < map->via.map.size; i++)
        if (proto_obj_str_eq(&map->via.map.ptr[i].key, key)) return &map->via.map.ptr[i].val;
    return NULL;
}

bool proto_obj_str(const msgpack_object *o, const char **s, size_t *len)
{
    if (!o || o->type != MSGPACK_OBJECT_STR) return false;
    *s = o->via.str.ptr;
    *len = o->via.str.size;
    return true;
}

bool proto_obj_bin(const msgpack_object *o, const uint8_t **p, size_t *len)
{
    if (!o || o->type != MSGPACK_OBJECT_BIN) return false;
    *p = (const uint8_t *)o->via.bin.ptr;
    *len = o->via.bin.size;
    return true;
}

bool proto_obj_uint(const msgpack_object *o, uint64_t *v)
{
    if (!o || o->type != MSGPACK_OBJECT_POSITIVE_INTEGER) return false;
    *v = o->via.u64;
    return true;
}

bool proto_obj_int(const msgpack_object *o, int64_t *v)
{
    if (!o) return false;
    if (o->type == MSGPACK_OBJECT_NEGATIVE_INTEGER) { *v = o->via.i64; return true; }
    if (o->type == MSGPACK_OBJECT_POSITIVE_INTEGER && o->via.u64 <= INT64_MAX) {
        *v = (int64_t)o->via.u64;
        return true;
    }
    return false;
}

bool proto_obj_bool(const msgpack_object *o, bool *v)
{
    if (!o || o->type != MSGPACK_OBJECT_BOOLEAN) return false;
    *v = o->via.boolean;
    return true;
}

bool proto_obj_float(const msgpack_object *o, double *v)
{
    if (!o) return false;
    switch (o->type) {
    case MSGPACK_OBJECT_FLOAT32:
    case MSGPACK_OBJECT_FLOAT64: *v = o->via.f64; return true;
    case MSGPACK_OBJECT_POSITIVE_INTEGER: *v = (double)o->via.u64; return true;
    case MSGPACK_OBJECT_NEGATIVE_INTEGER: *v = (double)o->via.i64; return true;
    default: return false;
    }
}

bool proto_obj_box(const msgpack_object *o, double box[4])
{
    if (!o || o->type != MSGPACK_OBJECT_ARRAY || o->via.array.size != 4) return false;
    for (int i = 0; i < 4; i++)
        if (!proto_obj_float(&o->via.array.ptr[i], &box[i])) return false;
    return true;
}

const msgpack_object *proto_req_arg(const proto_request *req, const char *key)
{
    for (size_t i = 0; i < req->op->nargs; i++)
        if (strcmp(req->op->args[i].key, key) == 0) return req->args[i];
    return NULL;
}

/* ---- validation --------------------------------------------------------- */

/* Error messages quote client-chosen names: cap them so a message stays readable. */
#define NAME_SHOWN 64

static const char *type_name(enum proto_type t)
{
    switch (t) {
    case PROTO_T_STR: return "a string";
    case PROTO_T_BIN: return "binary data";
    case PROTO_T_UINT: return "an unsigned integer";
    case PROTO_T_INT: return "an integer";
    case PROTO_T_BOOL: return "a boolean";
    case PROTO_T_FLOAT: return "a number";
    case PROTO_T_STR_ARRAY: return "an array of strings";
    case PROTO_T_MAP: return "a map";
    case PROTO_T_BOX: return "a box [x, y, w, h]";
    }
    return "?";
}

static int check_str(const proto_arg_spec *s, const msgpack_object *o, const char *op, const char *key)
{
    if (!proto_utf8_valid(o->via.str.ptr, o->via.str.size))
        return umg_err_set(UMG_EUTF8, "%s: '%s' is not valid UTF-8", op, key);
    if ((s->flags & PROTO_ARG_NONEMPTY) && o->via.str.size == 0)
        return umg_err_set(UMG_EINVAL, "%s: '%s' must not be empty", op, key);
    if (s->max_len && o->via.str.size > s->max_len)
        return umg_err_set(UMG_EINVAL, "%s: '%s' is longer than %llu bytes", op, key,
                           (unsigned long long)s->max_len);
    if (s->choices) {
        for (const char *const *c = s->choices; *c; c++)
            if (proto_obj_str_eq(o, *c)) return 0;
        return umg_err_set(UMG_EINVAL, "%s: '%s' has an unknown value '%.*s'", op, key,
                           (int)(o->via.str.size < NAME_SHOWN ? o->via.str.size : NAME_SHOWN), o->via.str.ptr);
    }
    return 0;
}

static int check_fields(const proto_arg_spec *specs, size_t nspecs, unsigned alts,
                        const msgpack_object_kv *kv, uint32_t nkv, const msgpack_object **vals,
                        const char *op, const char *prefix, int skip_id_op);

static int check_value(const proto_arg_spec *s, const msgpack_object *o, const char *op, const char *key)
{
    bool wrong = false;
    switch (s->type) {
    case PROTO_T_STR:
        if (o->type != MSGPACK_OBJECT_STR) { wrong = true; break; }
        return check_str(s, o, op, key);
    case PROTO_T_BIN:
        if (o->type != MSGPACK_OBJECT_BIN) { wrong = true; break; }
        if ((s->flags & PROTO_ARG_NONEMPTY) && o->via.bin.size == 0)
            return umg_err_set(UMG_EINVAL, "%s: '%s' must not be empty", op, key);
        if (s->max_len && o->via.bin.size > s->max_len)
            return umg_err_set(UMG_EINVAL, "%s: '%s' is longer than %llu bytes", op, key,
                               (unsigned long long)s->max_len);
        return 0;
    case PROTO_T_UINT: {
        uint64_t v;
        if (!proto_obj_uint(o, &v)) { wrong = true; break; }
        if (s->imax > 0 && (v < (uint64_t)(s->imin > 0 ? s->imin : 0) || v > (uint64_t)s->imax))
            return umg_err_set(UMG_EINVAL, "%s: '%s' must be between %lld and %lld", op, key,
                               (long long)s->imin, (long long)s->imax);
        return 0;
    }
    case PROTO_T_INT: {
        int64_t v;
        if (!proto_obj_int(o, &v)) { wrong = true; break; }
        if (s->imin < s->imax && (v < s->imin || v > s->imax))
            return umg_err_set(UMG_EINVAL, "%s: '%s' must be between %lld and %lld", op, key,
                               (long long)s->imin, (long long)s->imax);
        return 0;
    }
    case PROTO_T_BOOL:
        if (o->type != MSGPACK_OBJECT_BOOLEAN) wrong = true;
        break;
    case PROTO_T_FLOAT: {
        double v;
        if (!proto_obj_float(o, &v)) { wrong = true; break; }
        if (!isfinite(v))
            return umg_err_set(UMG_EINVAL, "%s: '%s' must be a finite number", op, key);
        if (s->fmin < s->fmax && (v < s->fmin || v > s->fmax))
            return umg_err_set(UMG_EINVAL, "%s: '%s' must be between %g and %g", op, key, s->fmin, s->fmax);
        return 0;
    }
    case PROTO_T_STR_ARRAY:
        if (o->type != MSGPACK_OBJECT_ARRAY) { wrong = true; break; }
        if (s->max_items && o->via.array.size > s->max_items)
            return umg_err_set(UMG_EINVAL, "%s: '%s' has more than %u items", op, key, s->max_items);
        for (uint32_t i = 0; i < o->via.array.size; i++) {
            const msgpack_object *it = &o->via.array.ptr[i];
            if (it->type != MSGPACK_OBJECT_STR) { wrong = true; break; }
            int rc = check_str(s, it, op, key);
            if (rc) return rc;
        }
        break;
    case PROTO_T_MAP: {
        if (o->type != MSGPACK_OBJECT_MAP) { wrong = true; break; }
        const msgpack_object *vals[PROTO_MAX_ARGS];
        return check_fields(s->fields, s->nfields, 0, o->via.map.ptr, o->via.map.size, vals, op, key, 0);
    }
    case PROTO_T_BOX: {
        double b[4];
        if (!proto_obj_box(o, b)) { wrong = true; break; }
        for (int i = 0; i < 4; i++)
            if (!isfinite(b[i]))
                return umg_err_set(UMG_EINVAL, "%s: '%s' must hold finite numbers", op, key);
        if (b[0] < 0 || b[1] < 0 || b[2] <= 0 || b[3] <= 0)
            return umg_err_set(UMG_EINVAL, "%s: '%s' needs x, y >= 0 and w, h > 0", op, key);
        return 0;
    }
    }
    if (wrong)
        return umg_err_set(UMG_EINVAL, "%s: '%s' must be %s", op, key, type_name(s->type));
    return 0;
}

/* Match the pairs kv[0..nkv) against specs: every key a known one, once;
 * every value valid; required ones present; alternatives exclusive.
 * vals[i] receives the value of specs[i] or NULL.  At top level (skip_id_op)
 * the keys "id" and "op" were handled by the caller. */
static int check_fields(const proto_arg_spec *specs, size_t nspecs, unsigned alts,
                        const msgpack_object_kv *kv, uint32_t nkv, const msgpack_object **vals,
                        const char *op, const char *prefix, int skip_id_op)
{
    for (size_t i = 0; i < nspecs; i++) vals[i] = NULL;
    char path[NAME_SHOWN + 80];
    for (uint32_t k = 0; k < nkv; k++) {
        const msgpack_object *key = &kv[k].key;
        if (skip_id_op && (proto_obj_str_eq(key, "id") || proto_obj_str_eq(key, "op"))) continue;
        if (key->type != MSGPACK_OBJECT_STR)
            return umg_err_set(UMG_EINVAL, "%s: map keys must be strings", op);
        if (!proto_utf8_valid(key->via.str.ptr, key->via.str.size))
            return umg_err_set(UMG_EUTF8, "%s: a key is not valid UTF-8", op);
        size_t i = 0;
        while (i < nspecs && !proto_obj_str_eq(key, specs[i].key)) i++;
        int shown = (int)(key->via.str.size < NAME_SHOWN ? key->via.str.size : NAME_SHOWN);
        if (i == nspecs)
            return umg_err_set(UMG_EINVAL, "%s: unknown argument '%s%s%.*s'", op, prefix ? prefix : "",
                               prefix ? "." : "", shown, key->via.str.ptr);
        if (vals[i])
            return umg_err_set(UMG_EINVAL, "%s: duplicate argument '%s%s%s'", op, prefix ? prefix : "",
                               prefix ? "." : "", specs[i].key);
        vals[i] = &kv[k].val;
        snprintf(path, sizeof path, "%s%s%s", prefix ? prefix : "", prefix ? "." : "", specs[i].key);
        int rc = check_value(&specs[i], vals[i], op, path);
        if (rc) return rc;
    }

    /* Alternatives: exactly one chosen. */
    unsigned chosen = 0;
    for (size_t i = 0; i < nspecs; i++) {
        if (!vals[i] || !specs[i].alt) continue;
        if (chosen && chosen != specs[i].alt) {
            size_t j = 0;
            while (j < nspecs && !(vals[j] && specs[j].alt == chosen)) j++;
            return umg_err_set(UMG_EINVAL, "%s: '%s' and '%s' exclude each other", op, specs[j].key, specs[i].key);
        }
        chosen = specs[i].alt;
    }
    if (alts && !chosen) {
        char want[256] = "";
        size_t n = 0;
        for (unsigned a = 1; a <= alts; a++) {
            n += (size_t)snprintf(want + n, n < sizeof want ? sizeof want - n : 0, "%s", a > 1 ? " or " : "");
            int first = 1;
            for (size_t i = 0; i < nspecs && n < sizeof want; i++) {
                if (specs[i].alt != a || !(specs[i].flags & PROTO_ARG_REQUIRED)) continue;
                n += (size_t)snprintf(want + n, sizeof want - n, "%s'%s'", first ? "" : "+", specs[i].key);
                first = 0;
            }
        }
        return umg_err_set(UMG_EINVAL, "%s: missing argument: needs %s", op, want);
    }
    for (size_t i = 0; i < nspecs; i++) {
        if (vals[i] || !(specs[i].flags & PROTO_ARG_REQUIRED)) continue;
        if (specs[i].alt && specs[i].alt != chosen) continue;
        return umg_err_set(UMG_EINVAL, "%s: missing argument '%s%s%s'", op, prefix ? prefix : "",
                           prefix ? "." : "", specs[i].key);
    }
    return 0;
}

/* ---- decoding ----------------------------------------------------------- */

void proto_request_free(proto_request *req)
{
    if (!req) return;
    msgpack_zone_destroy(&req->zone);
    free(req->frame);
    free(req);
}

/* ---- typed arguments ------------------------------------------------------ */

/* Write the validated value o of spec into base + spec->offset (and its
 * presence flag); absent (o NULL): the default.  Only after check_fields
 * accepted the request, so every present value has its spec's type. */
static int fill_arg(const proto_arg_spec *spec, const msgpack_object *o, char *base, msgpack_zone *zone)
{
    char *at = base + spec->offset;
    if (!o) {
        if (spec->type == PROTO_T_UINT) memcpy(at, &spec->udefault, sizeof spec->udefault);
        return 0;
    }
    if (spec->has) *(bool *)(base + spec->has - 1) = true;
    switch (spec->type) {
    case PROTO_T_STR:
        if (spec->choices) {
            int idx = 0;
            for (int c = 0; spec->choices[c]; c++)
                if (proto_obj_str_eq(o, spec->choices[c])) idx = c;
            memcpy(at, &idx, sizeof idx);
        } else {
            proto_str v = {o->via.str.ptr, o->via.str.size};
            memcpy(at, &v, sizeof v);
        }
        break;
    case PROTO_T_BIN: {
        proto_bin v = {(const uint8_t *)o->via.bin.ptr, o->via.bin.size};
        memcpy(at, &v, sizeof v);
        break;
    }
    case PROTO_T_UINT: memcpy(at, &o->via.u64, sizeof(uint64_t)); break;
    case PROTO_T_INT: {
        int64_t v = 0;
        proto_obj_int(o, &v);
        memcpy(at, &v, sizeof v);
        break;
    }
    case PROTO_T_FLOAT: {
        double v = 0;
        proto_obj_float(o, &v);
        memcpy(at, &v, sizeof v);
        break;
    }
    case PROTO_T_BOOL: *(bool *)at = o->via.boolean; break;
    case PROTO_T_BOX: {
        double b[4];
        proto_obj_box(o, b);
        memcpy(at, b, sizeof b);
        break;
    }
    case PROTO_T_STR_ARRAY: {
        proto_strs v = {NULL, o->via.array.size};
        if (v.n) {
            proto_str *items = msgpack_zone_malloc(zone, v.n * sizeof *items);
            if (!items) return umg_err_set(UMG_ENOMEM, "out of memory for a request");
            for (uint32_t i = 0; i < v.n; i++)
                items[i] = (proto_str){o->via.array.ptr[i].via.str.ptr, o->via.array.ptr[i].via.str.size};
            v.v = items;
        }
        memcpy(at, &v, sizeof v);
        break;
    }
    case PROTO_T_MAP:
        for (size_t f = 0; f < spec->nfields; f++) {
            int rc = fill_arg(&spec->fields[f], proto_map_get(o, spec->fields[f].key), at, zone);
            if (rc) return rc;
        }
        break;
    }
    return 0;
}

static int fill_args(proto_request *req)
{
    memset(&req->a, 0, sizeof req->a);
    for (size_t i = 0; i < req->op->nargs; i++) {
        int rc = fill_arg(&req->op->args[i], req->args[i], (char *)&req->a, &req->zone);
        if (rc) return rc;
    }
    return 0;
}

int proto_request_decode(uint8_t *frame, size_t len, const proto_limits *lim,
                         proto_request **out, uint64_t *err_id)
{
    *out = NULL;
    *err_id = 0;
    proto_request *req = calloc(1, sizeof *req);
    if (!req) {
        free(frame);
        return umg_err_set(UMG_ENOMEM, "out of memory for a request");
    }
    req->frame = frame;
    req->frame_len = len;
    if (!msgpack_zone_init(&req->zone, MSGPACK_ZONE_CHUNK_SIZE)) {
        free(frame);
        free(req);
        return umg_err_set(UMG_ENOMEM, "out of memory for a request");
    }
    int rc = proto_unpack(frame, len, lim, &req->zone, &req->root);
    if (rc) goto fail;
    if (req->root.type != MSGPACK_OBJECT_MAP) {
        rc = umg_err_set(UMG_EPROTO, "a request must be a msgpack map");
        goto fail;
    }
    const msgpack_object_kv *kv = req->root.via.map.ptr;
    uint32_t nkv = req->root.via.map.size;

    /* The id first, so that every later error can carry it. */
    const msgpack_object *id = NULL, *op = NULL;
    int id_count = 0, op_count = 0;
    for (uint32_t k = 0; k < nkv; k++) {
        if (proto_obj_str_eq(&kv[k].key, "id")) {
            id = &kv[k].val;
            id_count++;
        } else if (proto_obj_str_eq(&kv[k].key, "op")) {
            op = &kv[k].val;
            op_count++;
        }
    }
    if (id_count > 1) { rc = umg_err_set(UMG_EINVAL, "duplicate key 'id'"); goto fail; }
    if (id && proto_obj_uint(id, &req->id)) *err_id = req->id;
    if (op_count > 1) { rc = umg_err_set(UMG_EINVAL, "duplicate key 'op'"); goto fail; }
    if (!id) { rc = umg_err_set(UMG_EINVAL, "missing 'id'"); goto fail; }
    if (id->type != MSGPACK_OBJECT_POSITIVE_INTEGER) {
        rc = umg_err_set(UMG_EINVAL, "'id' must be an unsigned integer");
        goto fail;
    }
    if (!op) { rc = umg_err_set(UMG_EINVAL, "missing 'op'"); goto fail; }
    if (op->type != MSGPACK_OBJECT_STR) { rc = umg_err_set(UMG_EINVAL, "'op' must be a string"); goto fail; }
    if (!proto_utf8_valid(op->via.str.ptr, op->via.str.size)) {
        rc = umg_err_set(UMG_EUTF8, "'op' is not valid UTF-8");
        goto fail;
    }
    req->op = proto_op_find(op->via.str.ptr, op->via.str.size);
    if (!req->op) {
        int shown = (int)(op->via.str.size < NAME_SHOWN ? op->via.str.size : NAME_SHOWN);
        rc = umg_err_set(UMG_EUNKNOWNOP, "unknown op '%.*s'", shown, op->via.str.ptr);
        goto fail;
    }
    rc = check_fields(req->op->args, req->op->nargs, req->op->alts, kv, nkv, req->args, req->op->name, NULL, 1);
    if (!rc) rc = fill_args(req);
    if (rc) goto fail;
    *out = req;
    return 0;
fail:
    proto_request_free(req);
    return rc;
}

/* ---- client-side builder ------------------------------------------------ */

int proto_pack_cstr(msgpack_packer *pk, const char *s)
{
    size_t n = strlen(s);
    int rc = msgpack_pack_str(pk, n);
    return rc ? rc : msgpack_pack_str_body(pk, s, n);
}

int proto_request_begin(proto_writer *w, msgpack_sbuffer *sb, uint64_t id, const char *op, size_t nargs)
{
    w->sb = sb;
    w->id = id;
    msgpack_packer_init(&w->pk, sb, msgpack_sbuffer_write);
    w->offset = proto_frame_begin(sb);
    if (w->offset < 0) return (int)w->offset;
    if (msgpack_pack_map(&w->pk, nargs + 2) || proto_pack_cstr(&w->pk, "id") ||
        msgpack_pack_uint64(&w->pk, id) || proto_pack_cstr(&w->pk, "op") || proto_pack_cstr(&w->pk, op)) {
        sb->size = (size_t)w->offset;
        return umg_err_set(UMG_ENOMEM, "out of memory building a request");
    }
    return 0;
}

int proto_request_end(proto_writer *w, uint32_t max_frame)
{
    size_t body = w->sb->size - (size_t)w->offset - PROTO_FRAME_HEADER;
    int rc = proto_check_msgpack((const uint8_t *)w->sb->data + w->offset + PROTO_FRAME_HEADER, body, NULL);
    if (!rc) rc = proto_frame_end(w->sb, w->offset, max_frame);
    if (rc) w->sb->size = (size_t)w->offset;
    return rc;
}
