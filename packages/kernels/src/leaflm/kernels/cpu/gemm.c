/*
 * Float32 linear layers, out = x W^T (+ bias), on weights packed once at load time.
 *
 * Why not oneDNN: its packed matmul splits a decode batch (tens of rows) badly over two
 * threads (1.45-1.75x its one-thread speed on SmolLM's 576- and 960-wide projections), and a
 * decode step is ~120 such GEMMs. Here the threads take weight panels one at a time, stream
 * each from memory once and apply it to every row, so two threads run ~2x one. Panels are
 * handed out dynamically, each thread's next one pulled into L2 ahead (panel_items.h): a
 * worker that slept between two GEMMs (OpenMP's short spin, see leaflm.engine) joins late,
 * and the thread already running takes more panels meanwhile (~3% faster whole runs than a
 * fixed half each, six interleaved pairs).
 *
 * Layout (see leaflm.kernels.cpu.gemm.pack_weight): panel p is W[p*NR : (p+1)*NR, :]
 * transposed, k-major: packed[(p*K + k)*NR + j] = W[p*NR + j, k], zero past N. A tile is
 * MR rows x NR columns: MR*NR/16 = 24 accumulators stay in AVX-512 registers while x is
 * broadcast straight from memory. Rows are taken MC at a time so that their slice of x stays
 * in L2 while every panel of the thread passes over it (prefill-sized batches). A gated MLP's
 * merged gate/up weight packs NR/2 gate rows and the NR/2 matching up rows per panel, so a
 * tile can finish silu(gate) * up itself (`leaflm_gemm_silu_mul`).
 *
 * The tile is sized for 32 vector registers of 16 floats: `leaflm_gemm_panel_width()` is 0 in
 * a build without AVX-512, and callers then use oneDNN.
 */
#include <stdint.h>
#include <string.h>

#include <omp.h>

#include "panel_items.h"
#include "vec_math.h"

#define NR 48
#define MR 8
#define MC 192
#define PARALLEL_MIN_FLOPS 262144
#ifndef PREFETCH_K
#define PREFETCH_K 64
#endif

typedef float vec16 __attribute__((vector_size(64), aligned(4)));

/* *p in all 16 lanes: one broadcasting load. `(vec16){0} + *p` cost a scalar add and a
 * register broadcast a row and k, both on the FMA ports of Intel cores (Sapphire Rapids:
 * the tile ran at ~60% of the FMA peak; AMD cores issue them elsewhere). */
static inline __attribute__((always_inline)) vec16 splat(const float *p) {
    const float v = *p;
    return (vec16){v, v, v, v, v, v, v, v, v, v, v, v, v, v, v, v};
}

int leaflm_gemm_panel_width(void) {
#ifdef __AVX512F__
    return NR;
#else
    return 0;
#endif
}

/* out[mr x cols] = x[mr x K] * panel (+ bias); `mr` and `gated` are constants after inlining.
 * `stream`: the panel comes from memory (the first tile over it), so the tile asks for the
 * lines PREFETCH_K steps ahead; the hardware prefetcher alone kept an 8-row tile at ~27 GB/s
 * where one row streams ~41 (Zen 5 VM), and a decode step of 8-16 sequences is bound by it.
 * Into every cache level (prefetcht0): the next tiles over the panel read it from L2, and on
 * Intel cores a non-temporal prefetch skips L2, so they went back to memory (16 rows took
 * 2x as long on a Sapphire Rapids VM).
 * A gated panel holds NR/2 gate columns then the NR/2 matching up columns, and the tile
 * writes silu(gate) * up (no bias): the MLP's activation rides on the GEMM's last touch of
 * its output, instead of a pass over a tensor twice as wide. */
static inline __attribute__((always_inline)) void tile(
    const int mr, const int gated, const float *restrict x, int64_t ldx,
    const float *restrict panel, int64_t K, const float *restrict bias, float *restrict out,
    int64_t ldo, int cols, int stream, const char *next, int64_t next_lines
) {
    vec16 acc[MR][3];
    int64_t next_due = 0;
#pragma GCC unroll 8
    for (int r = 0; r < MR; ++r) acc[r][0] = acc[r][1] = acc[r][2] = (vec16){0};
    for (int64_t k = 0; k < K; ++k) {
        const vec16 *w = (const vec16 *)(panel + k * NR);
        if (stream) {
            const char *ahead = (const char *)(panel + (k + PREFETCH_K) * NR);
            __builtin_prefetch(ahead, 0, 3);
            __builtin_prefetch(ahead + 64, 0, 3);
            __builtin_prefetch(ahead + 128, 0, 3);
        }
        next = prefetch_step(next, &next_due, next_lines, K);
        const vec16 w0 = w[0], w1 = w[1], w2 = w[2];
#pragma GCC unroll 8
        for (int r = 0; r < MR; ++r) {
            if (r < mr) {
                const vec16 a = splat(x + r * ldx + k);
                acc[r][0] += a * w0;
                acc[r][1] += a * w1;
                acc[r][2] += a * w2;
            }
        }
    }
#pragma GCC unroll 8
    for (int r = 0; r < MR; ++r) {
        if (r >= mr) continue;
        float *o = out + r * ldo;
        if (gated) {
            float v[NR];
            memcpy(v, acc[r], sizeof v);
#pragma omp simd
            for (int c = 0; c < cols; ++c) {
                const float g = v[c];
                o[c] = g / (1.0f + exp_clamped(-g)) * v[NR / 2 + c];
            }
        } else if (cols == NR) {
            if (bias) {
                const vec16 *b = (const vec16 *)bias;
                acc[r][0] += b[0];
                acc[r][1] += b[1];
                acc[r][2] += b[2];
            }
            ((vec16 *)o)[0] = acc[r][0];
            ((vec16 *)o)[1] = acc[r][1];
            ((vec16 *)o)[2] = acc[r][2];
        } else { /* the last panel of a width not divisible by NR */
            float partial[NR];
            memcpy(partial, acc[r], sizeof partial);
            for (int c = 0; c < cols; ++c) o[c] = partial[c] + (bias ? bias[c] : 0.0f);
        }
    }
}

/* One function per tile height, so `mr` and `gated` are constants inside each. */
typedef void (*TileFn)(
    int gated, const float *x, int64_t ldx, const float *panel, int64_t K, const float *bias,
    float *out, int64_t ldo, int cols, int stream, const char *next, int64_t next_lines
);

#define TILE_FOR(ROWS)                                                                         \
    static void tile_##ROWS(                                                                   \
        int gated, const float *x, int64_t ldx, const float *panel, int64_t K,                 \
        const float *bias, float *out, int64_t ldo, int cols, int stream, const char *next,    \
        int64_t next_lines                                                                     \
    ) {                                                                                        \
        if (gated)                                                                             \
            tile(ROWS, 1, x, ldx, panel, K, NULL, out, ldo, cols, stream, next, next_lines);   \
        else                                                                                   \
            tile(ROWS, 0, x, ldx, panel, K, bias, out, ldo, cols, stream, next, next_lines);   \
    }
TILE_FOR(1)
TILE_FOR(2)
TILE_FOR(3)
TILE_FOR(4)
TILE_FOR(5)
TILE_FOR(6)
TILE_FOR(7)
TILE_FOR(8)

static const TileFn tiles[MR + 1] = {
    NULL, tile_1, tile_2, tile_3, tile_4, tile_5, tile_6, tile_7, tile_8,
};

/* One GEMM's operands, for its tiles (panel_items.h hands them out). */
typedef struct {
    const float *x, *bias;
    float *out;
    int64_t ldx, ldo, K;
    int gated, width;
} Gemm;

static void run_tile(const void *gemm, const PanelTile *t) {
    const Gemm *g = gemm;
    tiles[t->mr](g->gated, g->x + t->m * g->ldx, g->ldx, (const float *)t->panel, g->K,
                 g->bias ? g->bias + t->p * NR : NULL, g->out + t->m * g->ldo + t->p * g->width,
                 g->ldo, t->cols, t->first_tile, t->ahead, t->lines);
}

/* `width` output columns per panel: NR, or NR/2 for gated panels. */
static void gemm_panels(
    const float *x, int64_t ldx, const float *packed, const float *bias, float *out,
    int64_t ldo, int64_t M, int64_t N, int64_t K, int num_threads, int gated
) {
    const int width = gated ? NR / 2 : NR;
    const Gemm g = {x, bias, out, ldx, ldo, K, gated, width};
    const int64_t panels = (N + width - 1) / width;
    const int threads = 2 * M * N * K < PARALLEL_MIN_FLOPS ? 1 : num_threads;
    int64_t claimed = 0;
#pragma omp parallel num_threads(threads)
    run_panel_items(&claimed, M, N, MC, MR, panels, width, packed,
                    K * NR * (int64_t)sizeof(float), run_tile, &g);
}

/* out [M, N] (rows ldo apart) = x [M, K] (rows ldx apart) W^T + bias (NULL: none). */
void leaflm_gemm(
    const float *x, int64_t ldx, const float *packed, const float *bias, float *out,
    int64_t ldo, int64_t M, int64_t N, int64_t K, int num_threads
) {
    gemm_panels(x, ldx, packed, bias, out, ldo, M, N, K, num_threads, 0);
}

/* out [M, N] = silu(x Wg^T) * (x Wu^T) for gate and up weights [N, K] packed as gated panels. */
void leaflm_gemm_silu_mul(
    const float *x, int64_t ldx, const float *packed, float *out, int64_t ldo, int64_t M,
    int64_t N, int64_t K, int num_threads
) {
    gemm_panels(x, ldx, packed, NULL, out, ldo, M, N, K, num_threads, 1);
}
