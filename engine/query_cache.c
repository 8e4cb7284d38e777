/* query_cache.c - recent text queries' embeddings (query_cache.h): a chained
 * hash table over preallocated entries, threaded on a doubly linked list in
 * order of use (head = most recent). */
#include "query_cache.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "umg_error.h"

typedef struct qc_entry {
    int32_t ids[ENG_QCACHE_MAX_IDS];
    int n_ids;
    uint64_t hash;
    struct qc_entry *chain;       /* next in its bucket */
    struct qc_entry *prev, *next; /* the use order */
} qc_entry;

struct eng_qcache {
    pthread_mutex_t mu;
    int capacity, dim, entries;
    qc_entry *slots;              /* [capacity] */
    float *vecs;                  /* [capacity, dim]: slot i's vector */
    qc_entry **buckets;           /* [n_buckets], a power of two */
    uint64_t mask;
    qc_entry *head, *tail;
    uint64_t hits, misses;
};

int eng_qcache_create(int capacity, int dim, eng_qcache **out)
{
    *out = NULL;
    if (capacity < 0 || capacity > ENG_QCACHE_MAX || dim < 1)
        return umg_err_set(UMG_EINVAL, "query cache: %d entries of %d floats", capacity, dim);
    if (!capacity) return 0;
    eng_qcache *c = calloc(1, sizeof *c);
    if (!c) return umg_err_set(UMG_ENOMEM, "out of memory");
    pthread_mutex_init(&c->mu, NULL);
    c->capacity = capacity;
    c->dim = dim;
    size_t nb = 1;
    while (nb < 2 * (size_t)capacity) nb <<= 1; /* load factor <= 1/2 */
    c->mask = nb - 1;
    c->slots = calloc((size_t)capacity, sizeof *c->slots);
    c->vecs = malloc((size_t)capacity * dim * sizeof *c->vecs);
    c->buckets = calloc(nb, sizeof *c->buckets);
    if (!c->slots || !c->vecs || !c->buckets) {
        eng_qcache_close(c);
        return umg_err_set(UMG_ENOMEM, "out of memory for a query cache of %d entries", capacity);
    }
    *out = c;
    return 0;
}

void eng_qcache_close(eng_qcache *c)
{
    if (!c) return;
    pthread_mutex_destroy(&c->mu);
    free(c->slots);
    free(c->vecs);
    free(c->buckets);
    free(c);
}

/* FNV-1a over the ids' values, length included */
static uint64_t key_hash(const int32_t *ids, int n)
{
    uint64_t h = 1469598103934665603ull ^ (uint64_t)n;
    for (int i = 0; i < n; i++) {
        uint32_t v = (uint32_t)ids[i];
        for (int b = 0; b < 4; b++, v >>= 8) h = (h ^ (v & 0xff)) * 1099511628211ull;
    }
    return h;
}

static qc_entry *find(eng_qcache *c, uint64_t h, const int32_t *ids, int n)
{
    for (qc_entry *e = c->buckets[h & c->mask]; e; e = e->chain)
        if (e->hash == h && e->n_ids == n && !memcmp(e->ids, ids, (size_t)n * sizeof *ids)) return e;
    return NULL;
}

static void unlink_use(eng_qcache *c, qc_entry *e)
{
    if (e->prev) e->prev->next = e->next;
    else c->head = e->next;
    if (e->next) e->next->prev = e->prev;
    else c->tail = e->prev;
    e->prev = e->next = NULL;
}

static void push_front(eng_qcache *c, qc_entry *e)
{
    e->next = c->head;
    e->prev = NULL;
    if (c->head) c->head->prev = e;
    c->head = e;
    if (!c->tail) c->tail = e;
}

static void unlink_chain(eng_qcache *c, qc_entry *e)
{
    qc_entry **p = &c->buckets[e->hash & c->mask];
    while (*p != e) p = &(*p)->chain;
    *p = e->chain;
    e->chain = NULL;
}

static float *vec_of(eng_qcache *c, const qc_entry *e) { return c->vecs + (size_t)(e - c->slots) * c->dim; }

int eng_qcache_get(eng_qcache *c, const int32_t *ids, int n_ids, float *vec)
{
    if (!c) return 0;
    int hit = 0;
    uint64_t h = key_hash(ids, n_ids);
    pthread_mutex_lock(&c->mu);
    qc_entry *e = n_ids <= ENG_QCACHE_MAX_IDS ? find(c, h, ids, n_ids) : NULL;
    if (e) {
        memcpy(vec, vec_of(c, e), (size_t)c->dim * sizeof *vec);
        unlink_use(c, e);
        push_front(c, e);
        c->hits++;
        hit = 1;
    } else {
        c->misses++;
    }
    pthread_mutex_unlock(&c->mu);
    return hit;
}

void eng_qcache_put(eng_qcache *c, const int32_t *ids, int n_ids, const float *vec)
{
    if (!c || n_ids < 0 || n_ids > ENG_QCACHE_MAX_IDS) return;
    uint64_t h = key_hash(ids, n_ids);
    pthread_mutex_lock(&c->mu);
    qc_entry *e = find(c, h, ids, n_ids);
    if (e) {
        unlink_use(c, e);
    } else {
        if (c->entries < c->capacity) {
            e = &c->slots[c->entries++];
        } else { /* full: the least recently used entry makes room */
            e = c->tail;
            unlink_use(c, e);
            unlink_chain(c, e);
        }
        memcpy(e->ids, ids, (size_t)n_ids * sizeof *ids);
        e->n_ids = n_ids;
        e->hash = h;
        e->chain = c->buckets[h & c->mask];
        c->buckets[h & c->mask] = e;
    }
    memcpy(vec_of(c, e), vec, (size_t)c->dim * sizeof *vec);
    push_front(c, e);
    pthread_mutex_unlock(&c->mu);
}

void eng_qcache_counts_get(eng_qcache *c, eng_qcache_counts *out)
{
    memset(out, 0, sizeof *out);
    if (!c) return;
    pthread_mutex_lock(&c->mu);
    out->hits = c->hits;
    out->misses = c->misses;
    out->entries = c->entries;
    out->capacity = c->capacity;
    pthread_mutex_unlock(&c->mu);
}
