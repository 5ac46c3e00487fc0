/*
 * fgsearch's HNSW search kernel: the search of a FAISS IndexHNSWSQ graph (8-bit codes, inner
 * product), written for a single query on one thread.
 *
 * Why it exists: FAISS's HNSW search decodes every 8-bit code to float and keeps its candidates in
 * a structure scanned linearly; at efSearch 512 over 1M vectors a query spends ~0.8 ms. Here the
 * query is folded into the codes' scale once (w_i = q_i * vdiff_i, so that q.x = const + sum w_i c_i
 * for FAISS's decode x_i = vmin_i + (c_i + 0.5) / 255 * vdiff_i) and rounded to 16-bit integers
 * (as many bits as keep d * 255 * |w| in an int32: 14 at 512 dimensions; 8-bit weights lost recall
 * on embeddings where a few dimensions dominate), and every distance is an integer dot product of
 * the 8-bit codes (AVX-512 VNNI, AVX2 or portable C, chosen at
 * load time; integer sums are exact, so every variant returns the same candidates). The search is
 * bound by memory latency (1M nodes: every node is a cache miss), so it prefetches: the codes of
 * a node's unvisited neighbours before scoring them, the link-list offset of every node it queues,
 * and the links of the node it will likely expand next (measured at 1M, efSearch 512: 0.50 ms
 * without the last two, 0.37 ms with them). Heaps are binary heaps; the visited set is an
 * epoch-stamped array the caller keeps between queries. The graph, codes and entry point are
 * FAISS's own (read from the snapshot file, memory-mapped): this file only searches them.
 *
 * Loaded with ctypes (fgsearch/indexes/_graph.py); the Python module init below only exists so
 * that setuptools can build it as an extension module.
 */
#include <Python.h>
#include <math.h>
#if !defined(_WIN32)
#include <errno.h>
#include <unistd.h>
#endif
#include <stdint.h>
#include <string.h>

typedef struct {
    float s;
    int32_t i;
} item;

/* min-heap on s: the results, worst on top; also the candidates to expand, stored with -s (best on top) */
static inline void minh_push(item *h, int *n, item x) {
    int k = (*n)++;
    while (k > 0) {
        int p = (k - 1) >> 1;
        if (h[p].s <= x.s) break;
        h[k] = h[p];
        k = p;
    }
    h[k] = x;
}
static inline void minh_pop(item *h, int *n) {
    item x = h[--(*n)];
    int k = 0, m = *n;
    for (;;) {
        int c = 2 * k + 1;
        if (c >= m) break;
        if (c + 1 < m && h[c + 1].s < h[c].s) c++;
        if (h[c].s >= x.s) break;
        h[k] = h[c];
        k = c;
    }
    h[k] = x;
}

static inline void prefetch_line(const void *p) {
#if defined(__GNUC__) || defined(__clang__)
    __builtin_prefetch(p, 0, 3);
#else
    (void)p;
#endif
}

static inline void prefetch_code(const uint8_t *p, int bytes) {
#if defined(__GNUC__) || defined(__clang__)
    for (int o = 0; o < bytes; o += 64) __builtin_prefetch(p + o, 0, 3);
#else
    (void)p;
    (void)bytes;
#endif
}

/* The search, instantiated once per dot-product variant (DOT is inlined into it). */
#define DEFINE_SEARCH(NAME, ATTR, DOT)                                                               \
    ATTR static int NAME(const int32_t *neighbors, const uint64_t *offsets, const int32_t *cum,       \
                         int32_t entry, int32_t max_level, const uint8_t *codes, int64_t n, int d,   \
                         const int16_t *w, int ef, int r, const uint8_t *excluded, uint16_t *visited, \
                         item *cand, int cap_c, item *top, int32_t *out_i, float *out_s) {           \
        uint16_t ep = (uint16_t)(visited[n] + 1);                                                    \
        if (ep == 0) {                                                                               \
            memset(visited, 0, (size_t)n * sizeof(uint16_t));                                        \
            ep = 1;                                                                                  \
        }                                                                                            \
        visited[n] = ep;                                                                             \
        int32_t cur = entry;                                                                         \
        float cur_s = (float)DOT(w, codes + (int64_t)cur * d, d);                                    \
        for (int lvl = max_level; lvl >= 1; lvl--) { /* greedy descent through the upper levels */  \
            int changed = 1;                                                                         \
            while (changed) {                                                                        \
                changed = 0;                                                                         \
                const int32_t *nb = neighbors + offsets[cur] + cum[lvl];                             \
                int cnt = cum[lvl + 1] - cum[lvl];                                                   \
                for (int j = 0; j < cnt && nb[j] >= 0; j++) prefetch_code(codes + (int64_t)nb[j] * d, d); \
                for (int j = 0; j < cnt; j++) {                                                      \
                    int32_t v = nb[j];                                                               \
                    if (v < 0) break;                                                                \
                    float s = (float)DOT(w, codes + (int64_t)v * d, d);                              \
                    if (s > cur_s) {                                                                 \
                        cur_s = s;                                                                   \
                        cur = v;                                                                     \
                        changed = 1;                                                                 \
                    }                                                                                \
                }                                                                                    \
            }                                                                                        \
        }                                                                                            \
        int nc = 0, nt = 0;                                                                          \
        visited[cur] = ep;                                                                           \
        minh_push(cand, &nc, (item){-cur_s, cur});                                                   \
        if (!excluded || !excluded[cur]) minh_push(top, &nt, (item){cur_s, cur});                    \
        const int c0 = cum[0], cnt0 = cum[1] - cum[0];                                               \
        int32_t fresh[1024];                                                                         \
        while (nc > 0) { /* best-first beam search of width ef on level 0 */                         \
            item c = cand[0];                                                                        \
            if (nt >= ef && -c.s < top[0].s) break;                                                  \
            minh_pop(cand, &nc);                                                                     \
            const int32_t *nb = neighbors + offsets[c.i] + c0;                                       \
            if (nc > 0) /* the links of the likely next node to expand (its offset was prefetched) */ \
                prefetch_line(neighbors + offsets[cand[0].i] + c0);                                  \
            int nf = 0;                                                                              \
            for (int j = 0; j < cnt0; j++) {                                                         \
                int32_t v = nb[j];                                                                   \
                if (v < 0) break;                                                                    \
                if (visited[v] == ep) continue;                                                      \
                visited[v] = ep;                                                                     \
                fresh[nf++] = v;                                                                     \
                prefetch_code(codes + (int64_t)v * d, d);                                            \
            }                                                                                        \
            for (int j = 0; j < nf; j++) {                                                           \
                int32_t v = fresh[j];                                                                \
                float s = (float)DOT(w, codes + (int64_t)v * d, d);                                  \
                if (nt < ef || s > top[0].s) {                                                       \
                    prefetch_line(offsets + v);                                                      \
                    if (nc < cap_c) minh_push(cand, &nc, (item){-s, v});                             \
                    if (!excluded || !excluded[v]) {                                                 \
                        minh_push(top, &nt, (item){s, v});                                           \
                        if (nt > ef) minh_pop(top, &nt);                                             \
                    }                                                                                \
                }                                                                                    \
            }                                                                                        \
        }                                                                                            \
        while (nt > r) minh_pop(top, &nt);                                                           \
        int m = nt;                                                                                  \
        for (int k = m - 1; k >= 0; k--) {                                                           \
            out_i[k] = top[0].i;                                                                     \
            out_s[k] = top[0].s;                                                                     \
            minh_pop(top, &nt);                                                                      \
        }                                                                                            \
        return m;                                                                                    \
    }

static inline int32_t dot_generic(const int16_t *w, const uint8_t *c, int d) {
    int32_t acc = 0;
    for (int i = 0; i < d; i++) acc += (int32_t)w[i] * (int32_t)c[i];
    return acc;
}
DEFINE_SEARCH(search_generic, , dot_generic)

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>

__attribute__((target("avx2"))) static inline int32_t dot_avx2(const int16_t *w, const uint8_t *c, int d) {
    __m256i acc = _mm256_setzero_si256();
    int i = 0;
    for (; i + 16 <= d; i += 16) {
        __m256i cv = _mm256_cvtepu8_epi16(_mm_loadu_si128((const __m128i *)(c + i)));
        __m256i wv = _mm256_loadu_si256((const __m256i *)(w + i));
        acc = _mm256_add_epi32(acc, _mm256_madd_epi16(cv, wv));
    }
    __m128i s = _mm_add_epi32(_mm256_castsi256_si128(acc), _mm256_extracti128_si256(acc, 1));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4e));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xb1));
    int32_t out = _mm_cvtsi128_si32(s);
    for (; i < d; i++) out += (int32_t)w[i] * (int32_t)c[i];
    return out;
}
DEFINE_SEARCH(search_avx2, __attribute__((target("avx2"))), dot_avx2)

__attribute__((target("avx512f,avx512bw,avx512vnni"))) static inline int32_t dot_vnni(const int16_t *w,
                                                                                     const uint8_t *c, int d) {
    __m512i acc = _mm512_setzero_si512();
    int i = 0;
    for (; i + 32 <= d; i += 32)  /* codes widened to 16 bits x 16-bit weights, 2 products per lane */
        acc = _mm512_dpwssd_epi32(acc, _mm512_cvtepu8_epi16(_mm256_loadu_si256((const __m256i *)(c + i))),
                                  _mm512_loadu_si512((const void *)(w + i)));
    int32_t out = _mm512_reduce_add_epi32(acc);
    for (; i < d; i++) out += (int32_t)w[i] * (int32_t)c[i];
    return out;
}
DEFINE_SEARCH(search_vnni, __attribute__((target("avx512f,avx512bw,avx512vnni"))), dot_vnni)
#endif

typedef int (*search_fn)(const int32_t *, const uint64_t *, const int32_t *, int32_t, int32_t, const uint8_t *,
                         int64_t, int, const int16_t *, int, int, const uint8_t *, uint16_t *, item *, int, item *,
                         int32_t *, float *);

/* The best variant this CPU runs: 2 (AVX-512 VNNI), 1 (AVX2) or 0 (portable C), in the order of
 * ISAS in _graph.py. */
int fg_hnsw_isa(void) {
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512vnni"))
        return 2;
    if (__builtin_cpu_supports("avx2")) return 1;
#endif
    return 0;
}

/*
 * Search nq queries (rows of q, d floats each) one after the other. For each query: the top r
 * (r <= ef) graph nodes by approximate inner product, best first, in out_i[r * qi ...] (internal
 * FAISS positions; -1 pads) and their approximate scores in out_s. excluded: NULL or one byte per
 * node, non-zero = never returned (still walked through). visited: n + 1 uint16 the caller keeps
 * for this thread (zeroed the first time). scratch: at least scratch_bytes_needed(d, ef) bytes.
 * isa: a value from fg_hnsw_isa() or lower. Returns 0, or -1 on bad arguments.
 */
int64_t fg_hnsw_scratch_bytes(int d, int ef) {
    int64_t cap_c = (int64_t)(ef + 1) * 64;
    return 2 * (int64_t)d + 64 + (cap_c + ef + 2) * (int64_t)sizeof(item);
}

int fg_hnsw_search(int isa, const int32_t *neighbors, const uint64_t *offsets, const int32_t *cum, int32_t entry,
                   int32_t max_level, const uint8_t *codes, int64_t n, int d, const float *vdiff, const float *q,
                   int64_t nq, int ef, int r, const uint8_t *excluded, uint16_t *visited, void *scratch,
                   int32_t *out_i, float *out_s) {
    if (n <= 0 || d <= 0 || ef < 1 || r < 1 || r > ef || entry < 0 || entry >= n) return -1;
    if (cum[1] - cum[0] > 1024) return -1; /* the level-0 neighbour buffer of the search */
    search_fn fn = search_generic;
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
    if (isa >= 2) fn = search_vnni;
    else if (isa == 1) fn = search_avx2;
#endif
    int16_t *w16 = (int16_t *)scratch;
    int cap_c = (ef + 1) * 64;
    item *cand = (item *)((char *)scratch + ((2 * (size_t)d + 63) & ~(size_t)63));
    /* the largest weight: |sum of d products| <= d * 255 * wmax must fit an int32 */
    float wmax = (float)(2147483647.0 / (255.0 * (double)d));
    if (wmax > 32767.0f) wmax = 32767.0f;
    item *top = cand + cap_c;
    for (int64_t qi = 0; qi < nq; qi++) {
        const float *qq = q + qi * d;
        float mx = 0.0f;
        for (int i = 0; i < d; i++) {
            float a = qq[i] * vdiff[i];
            if (a < 0) a = -a;
            if (a > mx) mx = a;
        }
        float scale = mx > 0.0f ? (float)(int)wmax / mx : 0.0f;
        for (int i = 0; i < d; i++) {
            float a = qq[i] * vdiff[i] * scale;
            w16[i] = (int16_t)(a >= 0 ? (int)(a + 0.5f) : -(int)(-a + 0.5f));
        }
        int32_t *oi = out_i + qi * r;
        float *os = out_s + qi * r;
        int m = fn(neighbors, offsets, cum, entry, max_level, codes, n, d, w16, ef, r, excluded, visited, cand, cap_c,
                   top, oi, os);
        for (int k = m; k < r; k++) {
            oi[k] = -1;
            os[k] = -INFINITY;
        }
    }
    return 0;
}

/*
 * Read rows[i] (row_bytes each, at base + rows[i] * row_bytes in file fd) into out, one after the
 * other: the re-rank's float32 rows, read from the page cache without mapping them into the
 * process. Returns the number of rows read in full (n on success).
 */
int64_t fg_pread_rows(int fd, int64_t base, int64_t row_bytes, const int64_t *rows, int64_t n, char *out) {
#if defined(_WIN32)
    (void)fd;
    (void)base;
    (void)row_bytes;
    (void)rows;
    (void)n;
    (void)out;
    return -1;
#else
    for (int64_t i = 0; i < n; i++) {
        char *dst = out + i * row_bytes;
        int64_t off = base + rows[i] * row_bytes, done = 0;
        while (done < row_bytes) {
            ssize_t got = pread(fd, dst + done, (size_t)(row_bytes - done), (off_t)(off + done));
            if (got < 0 && errno == EINTR) continue;
            if (got <= 0) return i;
            done += got;
        }
    }
    return n;
#endif
}

static struct PyModuleDef kernel_module = {PyModuleDef_HEAD_INIT, "_hnsw_kernel",
                                           "fgsearch's HNSW search kernel (loaded with ctypes).", -1, NULL,
                                           NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__hnsw_kernel(void) { return PyModule_Create(&kernel_module); }
