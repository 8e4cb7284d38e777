/* idx.c - FAISS through its C API; see idx.h. */
#include "idx.h"

#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <faiss/c_api/AutoTune_c.h>
#include <faiss/c_api/IndexIVF_c.h>
#include <faiss/c_api/Index_c.h>
#include <faiss/c_api/MetaIndexes_c.h>
#include <faiss/c_api/error_c.h>
#include <faiss/c_api/impl/AuxIndexStructures_c.h>
#include <faiss/c_api/index_factory_c.h>
#include <faiss/c_api/index_io_c.h>

#include "umg_error.h"

struct idx_index {
    FaissIndex *fi;
    int dim;
    int exact;
    int nprobe;
    char factory[128];
    pthread_rwlock_t lock;
    int lock_ok;
};

/* OpenMP threads for FAISS (idx_set_threads).  libgomp keeps the thread
 * count per calling thread (a non-OpenMP thread starts from the value read
 * from OMP_NUM_THREADS when the library loaded), so every entry point that
 * may run FAISS's parallel code applies the wanted count to its own thread
 * once.  omp_set_num_threads is looked up at run time: libgomp comes in with
 * FAISS, not on our link line. */
static int threads_wanted; /* 0: leave libgomp's default; atomic */
static _Thread_local int threads_applied;
static void (*omp_set_threads_fn)(int);
static pthread_once_t omp_once = PTHREAD_ONCE_INIT;

static void omp_lookup(void)
{
    omp_set_threads_fn = (void (*)(int))dlsym(RTLD_DEFAULT, "omp_set_num_threads");
}

int idx_set_threads(int n)
{
    pthread_once(&omp_once, omp_lookup);
    if (n > 0 && !omp_set_threads_fn)
        return umg_err_set(UMG_EUNSUPPORTED, "FAISS is not built with OpenMP here: cannot set its threads");
    __atomic_store_n(&threads_wanted, n > 0 ? n : 0, __ATOMIC_RELAXED);
    return 0;
}

static void pin_threads(void)
{
    int n = __atomic_load_n(&threads_wanted, __ATOMIC_RELAXED);
    if (n > 0 && threads_applied != n) {
        pthread_once(&omp_once, omp_lookup);
        if (omp_set_threads_fn)
            omp_set_threads_fn(n);
        threads_applied = n;
    }
}

#define SNAP_MAGIC "UMGIDX1\n"
/* version 2 added the collection id; version 1 files (no id) still load */
#define SNAP_VERSION 2u
/* magic, version, dim, seq, ntotal, payload_len, checksum, factory_len,
 * collection (version 2), then the factory string and the payload */
#define SNAP_FIXED_V1 (8 + 4 + 4 + 8 + 8 + 8 + 8 + 4)
#define SNAP_FIXED (SNAP_FIXED_V1 + IDX_COLLECTION_BYTES)

/* FAISS's last error is overwritten by the next FAISS call: copy it now. */
static int faiss_fail(const char *what)
{
    const char *m = faiss_get_last_error();
    return umg_err_set(UMG_EINDEX, "faiss %s: %s", what, m ? m : "unknown error");
}

static int factory_is_exact(const char *f)
{
    return !strcmp(f, "Flat") || !strcmp(f, "IDMap,Flat") || !strcmp(f, "IDMap2,Flat");
}

int idx_factory_is_exact(const char *factory) { return factory && factory_is_exact(factory); }

/* IVF keeps ids in its inverted lists; everything else needs an id map. */
static int factory_has_ids(const char *f)
{
    return strstr(f, "IVF") != NULL || !strncmp(f, "IDMap", 5);
}

const char *idx_auto_factory(int dim, uint64_t n, uint64_t approx_threshold,
                             char *buf, size_t len)
{
    if (len == 0)
        return buf;
    /* below 256 vectors FAISS cannot train the smallest IVF (256 lists) nor PQ's
     * 256 centroids per sub-quantizer: such a build would fail whatever the
     * threshold asks for, and exact search over so few is fast anyway */
    if (n < approx_threshold || n < IDX_AUTO_MIN_APPROX || dim < 1) {
        snprintf(buf, len, "%s", IDX_FACTORY_EXACT);
        return buf;
    }
    uint64_t nlist = 256;
    /* ~2 sqrt(n): fewer, larger lists than FAISS's 4..16 sqrt(n) keep training
     * affordable on small machines; nprobe makes up the recall */
    double target = 2.0 * sqrt((double)n);
    while (nlist < 16384 && (double)nlist * 2 <= target)
        nlist *= 2;
    if (dim % 8 == 0)
        snprintf(buf, len, "IVF%llu,PQ%dnp", (unsigned long long)nlist, dim / 8);
    else
        snprintf(buf, len, "IVF%llu,SQ8", (unsigned long long)nlist);
    return buf;
}

static int lock_init(idx_index *ix)
{
    pthread_rwlockattr_t a;
    pthread_rwlockattr_init(&a);
    /* writers (adds) must not starve behind a stream of searches */
    pthread_rwlockattr_setkind_np(&a, PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP);
    int rc = pthread_rwlock_init(&ix->lock, &a);
    pthread_rwlockattr_destroy(&a);
    if (rc)
        return umg_err_set(UMG_ENOMEM, "index lock: %s", strerror(rc));
    ix->lock_ok = 1;
    return 0;
}

static int wrap(FaissIndex *fi, int dim, const char *factory, idx_index **out)
{
    idx_index *ix = calloc(1, sizeof *ix);
    if (!ix) {
        faiss_Index_free(fi);
        return umg_err_set(UMG_ENOMEM, "index handle");
    }
    ix->fi = fi;
    ix->dim = dim;
    snprintf(ix->factory, sizeof ix->factory, "%s", factory);
    ix->exact = factory_is_exact(factory);
    int rc = lock_init(ix);
    if (rc) {
        idx_close(ix);
        return rc;
    }
    *out = ix;
    return 0;
}

int idx_create(int dim, const char *factory, idx_index **out)
{
    *out = NULL;
    if (dim < 1 || dim > 65536)
        return umg_err_set(UMG_EINVAL, "index dimension %d out of range", dim);
    if (!factory || !*factory)
        factory = IDX_FACTORY_EXACT;
    if (strlen(factory) >= sizeof ((idx_index *)0)->factory)
        return umg_err_set(UMG_EINVAL, "index factory string too long");
    FaissIndex *fi = NULL;
    if (faiss_index_factory(&fi, dim, factory, METRIC_INNER_PRODUCT))
        return faiss_fail(factory);
    if (!factory_has_ids(factory)) {
        FaissIndexIDMap2 *map = NULL;
        if (faiss_IndexIDMap2_new(&map, fi)) {
            int rc = faiss_fail("IndexIDMap2");
            faiss_Index_free(fi);
            return rc;
        }
        faiss_IndexIDMap2_set_own_fields(map, 1);
        fi = (FaissIndex *)map;
    }
    return wrap(fi, dim, factory, out);
}

void idx_close(idx_index *ix)
{
    if (!ix)
        return;
    if (ix->fi)
        faiss_Index_free(ix->fi);
    if (ix->lock_ok)
        pthread_rwlock_destroy(&ix->lock);
    free(ix);
}

int idx_max_id(idx_index *ix, int64_t *max_id)
{
    *max_id = -1;
    int rc = 0;
    pthread_rwlock_rdlock(&ix->lock);
    FaissIndex *fi = ix->fi;
    FaissIndexIDMap *map = faiss_IndexIDMap2_cast(fi) ? (FaissIndexIDMap *)faiss_IndexIDMap2_cast(fi)
                                                      : faiss_IndexIDMap_cast(fi);
    FaissIndexIVF *ivf = map ? NULL : faiss_IndexIVF_cast(fi);
    if (map) {
        idx_t *ids;
        size_t n;
        faiss_IndexIDMap_id_map(map, &ids, &n);
        for (size_t i = 0; i < n; i++)
            if (ids[i] > *max_id)
                *max_id = ids[i];
    } else if (ivf) {
        /* the ids live in the inverted lists: one pass over them (a few ms
         * per million vectors) */
        size_t nlist = faiss_IndexIVF_nlist(ivf), cap = 0;
        idx_t *ids = NULL;
        for (size_t l = 0; l < nlist && !rc; l++) {
            size_t n = faiss_IndexIVF_get_list_size(ivf, l);
            if (n > cap) {
                idx_t *q = realloc(ids, n * sizeof *q);
                if (!q) {
                    rc = umg_err_set(UMG_ENOMEM, "ids of an inverted list");
                    break;
                }
                ids = q;
                cap = n;
            }
            if (n)
                faiss_IndexIVF_invlists_get_ids(ivf, l, ids);
            for (size_t i = 0; i < n; i++)
                if (ids[i] > *max_id)
                    *max_id = ids[i];
        }
        free(ids);
    } else {
        rc = umg_err_set(UMG_EUNSUPPORTED, "index %s does not expose its ids", ix->factory);
    }
    pthread_rwlock_unlock(&ix->lock);
    return rc;
}

int idx_dim(const idx_index *ix) { return ix->dim; }
int idx_is_exact(const idx_index *ix) { return ix->exact; }
const char *idx_factory(const idx_index *ix) { return ix->factory; }

int64_t idx_count(idx_index *ix)
{
    pthread_rwlock_rdlock(&ix->lock);
    int64_t n = faiss_Index_ntotal(ix->fi);
    pthread_rwlock_unlock(&ix->lock);
    return n;
}

int idx_needs_training(idx_index *ix)
{
    pthread_rwlock_rdlock(&ix->lock);
    int t = faiss_Index_is_trained(ix->fi);
    pthread_rwlock_unlock(&ix->lock);
    return !t;
}

int idx_train(idx_index *ix, int64_t n, const float *x)
{
    pin_threads();
    int rc = 0;
    pthread_rwlock_wrlock(&ix->lock);
    if (!faiss_Index_is_trained(ix->fi)) {
        if (n < 1)
            rc = umg_err_set(UMG_EINVAL, "index %s needs training vectors", ix->factory);
        else if (faiss_Index_train(ix->fi, n, x))
            rc = faiss_fail("train");
        else if (ix->nprobe > 0) {
            pthread_rwlock_unlock(&ix->lock);
            return idx_set_nprobe(ix, ix->nprobe);
        }
    }
    pthread_rwlock_unlock(&ix->lock);
    return rc;
}

int idx_add(idx_index *ix, int64_t n, const float *x, const int64_t *ids)
{
    pin_threads();
    if (n <= 0)
        return 0;
    int rc = 0;
    pthread_rwlock_wrlock(&ix->lock);
    if (!faiss_Index_is_trained(ix->fi))
        rc = umg_err_set(UMG_EINDEX, "index %s is not trained", ix->factory);
    else if (faiss_Index_add_with_ids(ix->fi, n, x, ids))
        rc = faiss_fail("add_with_ids");
    pthread_rwlock_unlock(&ix->lock);
    return rc;
}

int idx_remove(idx_index *ix, int64_t n, const int64_t *ids, int64_t *removed)
{
    pin_threads();
    if (removed)
        *removed = 0;
    if (n <= 0)
        return 0;
    FaissIDSelectorBatch *sel = NULL;
    if (faiss_IDSelectorBatch_new(&sel, (size_t)n, ids))
        return faiss_fail("IDSelectorBatch");
    size_t nr = 0;
    int rc = 0;
    pthread_rwlock_wrlock(&ix->lock);
    if (faiss_Index_remove_ids(ix->fi, (FaissIDSelector *)sel, &nr))
        rc = faiss_fail("remove_ids");
    pthread_rwlock_unlock(&ix->lock);
    faiss_IDSelector_free((FaissIDSelector *)sel);
    if (removed)
        *removed = (int64_t)nr;
    return rc;
}

int idx_set_nprobe(idx_index *ix, int nprobe)
{
    if (nprobe <= 0)
        return 0;
    ix->nprobe = nprobe;
    if (ix->exact)
        return 0;
    int rc = 0;
    FaissParameterSpace *ps = NULL;
    if (faiss_ParameterSpace_new(&ps))
        return faiss_fail("ParameterSpace");
    const char *name = strstr(ix->factory, "HNSW") ? "efSearch" : "nprobe";
    pthread_rwlock_wrlock(&ix->lock);
    if (faiss_ParameterSpace_set_index_parameter(ps, ix->fi, name, (double)nprobe))
        rc = faiss_fail(name);
    pthread_rwlock_unlock(&ix->lock);
    faiss_ParameterSpace_free(ps);
    return rc;
}

int idx_search(idx_index *ix, const float *query, int k,
               int64_t *ids, float *scores, int *n_hits)
{
    *n_hits = 0;
    if (k < 1)
        return umg_err_set(UMG_EINVAL, "search k = %d", k);
    int rc = 0;
    pin_threads();
    pthread_rwlock_rdlock(&ix->lock);
    if (!faiss_Index_is_trained(ix->fi) || faiss_Index_ntotal(ix->fi) == 0) {
        pthread_rwlock_unlock(&ix->lock);
        return 0;
    }
    if (faiss_Index_search(ix->fi, 1, query, k, scores, ids))
        rc = faiss_fail("search");
    pthread_rwlock_unlock(&ix->lock);
    if (rc)
        return rc;
    int n = 0;
    for (int i = 0; i < k; i++)
        if (ids[i] >= 0) {
            ids[n] = ids[i];
            scores[n] = scores[i];
            n++;
        }
    *n_hits = n;
    return 0;
}

typedef struct scored {
    int64_t id;
    float score;
} scored;

static int by_score_desc(const void *a, const void *b)
{
    const scored *x = a, *y = b;
    if (x->score != y->score)
        return x->score < y->score ? 1 : -1;
    return x->id < y->id ? -1 : x->id > y->id;
}

int idx_search_rerank(idx_index *ix, const float *query, int k, int candidates,
                      idx_vector_fn get_vector, void *ud,
                      int64_t *ids, float *scores, int *n_hits)
{
    *n_hits = 0;
    if (k < 1 || !get_vector)
        return umg_err_set(UMG_EINVAL, "rerank search: k = %d", k);
    if (candidates < k)
        candidates = k;
    int64_t *cid = malloc(sizeof *cid * (size_t)candidates);
    float *csc = malloc(sizeof *csc * (size_t)candidates);
    scored *sc = malloc(sizeof *sc * (size_t)candidates);
    float *v = malloc(sizeof *v * (size_t)ix->dim);
    int rc = 0, nc = 0, ns = 0;
    if (!cid || !csc || !sc || !v) {
        rc = umg_err_set(UMG_ENOMEM, "rerank buffers (%d candidates)", candidates);
        goto out;
    }
    rc = idx_search(ix, query, candidates, cid, csc, &nc);
    if (rc)
        goto out;
    for (int i = 0; i < nc; i++) {
        int r = get_vector(ud, cid[i], v);
        if (r == UMG_ENOENT)
            continue;
        if (r) {
            rc = r;
            goto out;
        }
        float dot = 0;
        for (int j = 0; j < ix->dim; j++)
            dot += v[j] * query[j];
        sc[ns].id = cid[i];
        sc[ns].score = dot;
        ns++;
    }
    qsort(sc, (size_t)ns, sizeof *sc, by_score_desc);
    if (ns > k)
        ns = k;
    for (int i = 0; i < ns; i++) {
        ids[i] = sc[i].id;
        scores[i] = sc[i].score;
    }
    *n_hits = ns;
out:
    free(cid);
    free(csc);
    free(sc);
    free(v);
    return rc;
}

/* ---- snapshots ---- */

static uint64_t fnv1a64(const unsigned char *p, size_t n)
{
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < n; i++) {
        h ^= p[i];
        h *= 1099511628211ull;
    }
    return h;
}

static void put_u32(unsigned char *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (unsigned char)(v >> (8 * i));
}
static void put_u64(unsigned char *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (unsigned char)(v >> (8 * i));
}
static uint32_t get_u32(const unsigned char *p)
{
    uint32_t v = 0;
    for (int i = 3; i >= 0; i--)
        v = v << 8 | p[i];
    return v;
}
static uint64_t get_u64(const unsigned char *p)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--)
        v = v << 8 | p[i];
    return v;
}

/* The buffer FAISS serializes into.  Not open_memstream: it moves its
 * whole buffer to a fresh allocation at every doubling, which took ~0.5 s
 * for the 200 MB of an exact 100,000 x 512 index (bench_open --stall), and
 * db_checkpoint holds the writer mutex meanwhile.  realloc of a large block
 * remaps its pages instead of copying them. */
typedef struct membuf {
    char *p;
    size_t n, cap;
    int oom;
} membuf;

static ssize_t membuf_write(void *cookie, const char *src, size_t len)
{
    membuf *b = cookie;
    if (len > b->cap - b->n) {
        size_t cap = b->cap ? b->cap : (size_t)1 << 16;
        while (cap - b->n < len && cap <= SIZE_MAX / 2)
            cap *= 2;
        char *q = cap - b->n >= len ? realloc(b->p, cap) : NULL;
        if (!q) {
            b->oom = 1;
            return 0; /* a short write: FAISS's writer throws */
        }
        b->p = q;
        b->cap = cap;
    }
    memcpy(b->p + b->n, src, len);
    b->n += len;
    return (ssize_t)len;
}

/* Serialize into a heap buffer while holding the index shared. */
static int serialize(idx_index *ix, char **buf, size_t *len, int64_t *ntotal)
{
    *buf = NULL;
    *len = 0;
    membuf b = { 0 };
    FILE *f = fopencookie(&b, "w", (cookie_io_functions_t){ .write = membuf_write });
    if (!f)
        return umg_err_set(UMG_ENOMEM, "snapshot buffer");
    int rc = 0;
    pthread_rwlock_rdlock(&ix->lock);
    *ntotal = faiss_Index_ntotal(ix->fi);
    if (faiss_write_index(ix->fi, f))
        rc = b.oom ? umg_err_set(UMG_ENOMEM, "snapshot buffer") : faiss_fail("write_index");
    pthread_rwlock_unlock(&ix->lock);
    if (fclose(f) && !rc)
        rc = umg_err_set(UMG_ENOMEM, "snapshot buffer");
    if (rc) {
        free(b.p);
        return rc;
    }
    *buf = b.p;
    *len = b.n;
    return 0;
}

int64_t idx_serialized_bytes(idx_index *ix)
{
    char *buf;
    size_t len;
    int64_t n;
    int rc = serialize(ix, &buf, &len, &n);
    if (rc)
        return rc;
    free(buf);
    return (int64_t)len;
}

static int write_all(int fd, const void *p, size_t n)
{
    const char *c = p;
    while (n) {
        ssize_t w = write(fd, c, n);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        c += w;
        n -= (size_t)w;
    }
    return 0;
}

static int fsync_dir_of(const char *path)
{
    char *copy = strdup(path);
    if (!copy)
        return umg_err_set(UMG_ENOMEM, "path copy");
    int fd = open(dirname(copy), O_RDONLY | O_DIRECTORY);
    int rc = 0;
    if (fd < 0 || fsync(fd))
        rc = umg_err_set(umg_err_from_errno(errno), "%s: directory fsync: %s", path, strerror(errno));
    if (fd >= 0)
        close(fd);
    free(copy);
    return rc;
}

struct idx_snapshot {
    unsigned char hdr[SNAP_FIXED + sizeof ((idx_index *)0)->factory];
    size_t hlen;
    char *payload;
    size_t plen;
};

int idx_snapshot_take(idx_index *ix, const idx_stamp *stamp, idx_snapshot **out)
{
    *out = NULL;
    idx_snapshot *s = calloc(1, sizeof *s);
    if (!s)
        return umg_err_set(UMG_ENOMEM, "snapshot");
    int64_t ntotal;
    int rc = serialize(ix, &s->payload, &s->plen, &ntotal);
    if (rc) {
        free(s);
        return rc;
    }
    size_t flen = strlen(ix->factory);
    unsigned char *p = s->hdr;
    memcpy(p, SNAP_MAGIC, 8), p += 8;
    put_u32(p, SNAP_VERSION), p += 4;
    put_u32(p, (uint32_t)ix->dim), p += 4;
    put_u64(p, stamp->seq), p += 8;
    put_u64(p, (uint64_t)ntotal), p += 8;
    put_u64(p, s->plen), p += 8;
    p += 8; /* the checksum: idx_snapshot_write computes it, outside the caller's locks */
    put_u32(p, (uint32_t)flen), p += 4;
    memcpy(p, stamp->collection, IDX_COLLECTION_BYTES), p += IDX_COLLECTION_BYTES;
    memcpy(p, ix->factory, flen), p += flen;
    s->hlen = (size_t)(p - s->hdr);
    *out = s;
    return 0;
}

void idx_snapshot_free(idx_snapshot *s)
{
    if (!s)
        return;
    free(s->payload);
    free(s);
}

int idx_snapshot_write(idx_snapshot *s, const char *path)
{
    put_u64(s->hdr + 40, fnv1a64((unsigned char *)s->payload, s->plen));
    size_t tlen = strlen(path) + 5;
    char *tmp = malloc(tlen);
    if (!tmp)
        return umg_err_set(UMG_ENOMEM, "path");
    snprintf(tmp, tlen, "%s.tmp", path);
    int rc = 0;
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0) {
        rc = umg_err_set(umg_err_from_errno(errno), "%s: %s", tmp, strerror(errno));
        goto out;
    }
    if (write_all(fd, s->hdr, s->hlen) || write_all(fd, s->payload, s->plen) || fsync(fd)) {
        rc = umg_err_set(umg_err_from_errno(errno), "%s: write: %s", tmp, strerror(errno));
        close(fd);
        unlink(tmp);
        goto out;
    }
    if (close(fd)) {
        rc = umg_err_set(umg_err_from_errno(errno), "%s: close: %s", tmp, strerror(errno));
        unlink(tmp);
        goto out;
    }
    if (rename(tmp, path)) {
        rc = umg_err_set(umg_err_from_errno(errno), "%s: rename: %s", path, strerror(errno));
        unlink(tmp);
        goto out;
    }
    rc = fsync_dir_of(path);
out:
    free(tmp);
    return rc;
}

int idx_save(idx_index *ix, const char *path, const idx_stamp *stamp)
{
    idx_snapshot *s;
    int rc = idx_snapshot_take(ix, stamp, &s);
    if (rc)
        return rc;
    rc = idx_snapshot_write(s, path);
    idx_snapshot_free(s);
    return rc;
}

int idx_load(const char *path, int dim, idx_index **out, idx_stamp *stamp)
{
    *out = NULL;
    /* O_NONBLOCK: a FIFO (or device) named like a snapshot must not hang the
     * open; it is refused below as not a regular file */
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    if (fd < 0)
        return umg_err_set(umg_err_from_errno(errno), "%s: %s", path, strerror(errno));
    struct stat st;
    unsigned char *buf = NULL;
    int rc = 0;
    if (fstat(fd, &st)) {
        rc = umg_err_set(umg_err_from_errno(errno), "%s: %s", path, strerror(errno));
        goto out;
    }
    if (!S_ISREG(st.st_mode)) {
        rc = umg_err_set(UMG_EFORMAT, "%s: not a regular file", path);
        goto out;
    }
    size_t size = (size_t)st.st_size;
    if (size < SNAP_FIXED_V1) {
        rc = umg_err_set(UMG_EFORMAT, "%s: truncated snapshot (%zu bytes)", path, size);
        goto out;
    }
    buf = malloc(size);
    if (!buf) {
        rc = umg_err_set(UMG_ENOMEM, "%s: %zu bytes", path, size);
        goto out;
    }
    size_t got = 0;
    while (got < size) {
        ssize_t r = read(fd, buf + got, size - got);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0) {
            rc = r < 0 ? umg_err_set(umg_err_from_errno(errno), "%s: read: %s", path, strerror(errno))
                       : umg_err_set(UMG_EFORMAT, "%s: shorter than its size", path);
            goto out;
        }
        got += (size_t)r;
    }
    const unsigned char *p = buf;
    if (memcmp(p, SNAP_MAGIC, 8)) {
        rc = umg_err_set(UMG_EFORMAT, "%s: not an umgdb index snapshot (bad magic)", path);
        goto out;
    }
    uint32_t version = get_u32(p + 8), fdim = get_u32(p + 12);
    uint64_t fseq = get_u64(p + 16), ntotal = get_u64(p + 24), plen = get_u64(p + 32);
    uint64_t sum = get_u64(p + 40);
    uint32_t flen = get_u32(p + 48);
    if (version != 1 && version != SNAP_VERSION) {
        rc = umg_err_set(UMG_EFORMAT, "%s: snapshot version %u unsupported", path, version);
        goto out;
    }
    size_t fixed = version == 1 ? SNAP_FIXED_V1 : SNAP_FIXED;
    if ((int)fdim != dim) {
        rc = umg_err_set(UMG_EFORMAT, "%s: snapshot dimension %u, expected %d", path, fdim, dim);
        goto out;
    }
    if (flen >= sizeof ((idx_index *)0)->factory || size < fixed || fixed + (uint64_t)flen + plen != size) {
        rc = umg_err_set(UMG_EFORMAT, "%s: truncated or oversized snapshot (%zu bytes, header says %llu)",
                         path, size, (unsigned long long)(fixed + (uint64_t)flen + plen));
        goto out;
    }
    idx_stamp got_stamp = { .seq = fseq };
    if (version != 1)
        memcpy(got_stamp.collection, p + SNAP_FIXED_V1, IDX_COLLECTION_BYTES);
    char factory[128];
    memcpy(factory, p + fixed, flen);
    factory[flen] = '\0';
    const unsigned char *payload = p + fixed + flen;
    if (fnv1a64(payload, plen) != sum) {
        rc = umg_err_set(UMG_EFORMAT, "%s: snapshot checksum mismatch", path);
        goto out;
    }
    FILE *f = fmemopen((void *)payload, plen, "rb");
    if (!f) {
        rc = umg_err_set(UMG_ENOMEM, "%s: fmemopen", path);
        goto out;
    }
    FaissIndex *fi = NULL;
    if (faiss_read_index(f, 0, &fi))
        rc = faiss_fail(path);
    fclose(f);
    if (rc)
        goto out;
    if (faiss_Index_d(fi) != dim || (uint64_t)faiss_Index_ntotal(fi) != ntotal) {
        faiss_Index_free(fi);
        rc = umg_err_set(UMG_EFORMAT, "%s: payload disagrees with its header", path);
        goto out;
    }
    rc = wrap(fi, dim, factory, out);
    if (!rc && stamp)
        *stamp = got_stamp;
out:
    free(buf);
    close(fd);
    return rc;
}
