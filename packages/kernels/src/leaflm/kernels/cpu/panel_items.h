/*
 * How a GEMM's threads share its (row block, panel) items (gemm.c, int8_gemm.c), and pull the
 * next item's weight panel into L2 while they compute the current one.
 *
 * Items go to the threads as they come free (a worker that slept between two GEMMs joins
 * late, and the running thread takes more meanwhile). A thread claims its next item before it
 * starts the current one, and the tiles after the first over the current panel each prefetch
 * an even share of the next panel's 64-byte lines, spread over their steps. The next item's
 * first tile then reads L2 instead of waiting on memory with its multiply-adds idle, as it
 * did when weights stream from memory (a decode step): one layer's fp32 GEMMs for 64 rows
 * took 4.4 ms before and 2.6 ms after on a Sapphire Rapids VM.
 */
#ifndef LEAFLM_PANEL_ITEMS_H
#define LEAFLM_PANEL_ITEMS_H

#include <stdint.h>

/* A tile to run: rows [m, m + mr) of the item's row block against panel p (at `panel`),
 * whose first output column is p * width; `first_tile`: the first tile over the panel (it
 * streams it); it prefetches `lines` lines from `ahead` over its steps (prefetch_step). */
typedef struct {
    int64_t m, p;
    int mr, cols, first_tile;
    const char *panel, *ahead;
    int64_t lines;
} PanelTile;

typedef void (*PanelTileFn)(const void *gemm, const PanelTile *tile);

/* Tile t's share of a panel of `lines` lines in an item of `tiles` tiles: the count (0 for
 * the first tile), its first line in *first. */
static inline int64_t next_panel_share(int64_t tiles, int64_t t, int64_t lines, int64_t *first) {
    *first = 0;
    if (t == 0) return 0;
    const int64_t share = (lines + tiles - 2) / (tiles - 1);
    *first = (t - 1) * share;
    return *first >= lines ? 0 : *first + share > lines ? lines - *first : share;
}

/* The calling thread's part of a GEMM of M rows x `panels` panels (of `width` output columns
 * of N; `panel_bytes` apart from `packed`), rows taken `mc` at a time and `mr` a tile; call
 * it inside the parallel region with one `claimed` counter (0) shared by the threads. */
static inline __attribute__((always_inline)) void run_panel_items(
    int64_t *claimed, int64_t M, int64_t N, int64_t mc, int64_t mr, int64_t panels, int width,
    const void *packed, int64_t panel_bytes, PanelTileFn run, const void *gemm
) {
    const int64_t items = (M + mc - 1) / mc * panels, panel_lines = panel_bytes / 64;
    int64_t item = __atomic_fetch_add(claimed, 1, __ATOMIC_RELAXED);
    while (item < items) {
        const int64_t next = __atomic_fetch_add(claimed, 1, __ATOMIC_RELAXED);
        const int64_t m0 = item / panels * mc, p = item % panels;
        const int64_t m1 = m0 + mc < M ? m0 + mc : M;
        const char *ahead = (const char *)packed + next % panels * panel_bytes;
        const int64_t tiles = (m1 - m0 + mr - 1) / mr;
        PanelTile tile = {.p = p, .cols = (int)(N - p * width < width ? N - p * width : width),
                          .panel = (const char *)packed + p * panel_bytes};
        for (int64_t t = 0; t < tiles; ++t) {
            int64_t first;
            tile.m = m0 + t * mr;
            tile.mr = (int)(m1 - tile.m < mr ? m1 - tile.m : mr);
            tile.first_tile = t == 0;
            tile.lines = next < items ? next_panel_share(tiles, t, panel_lines, &first) : 0;
            tile.ahead = tile.lines ? ahead + first * 64 : NULL;
            run(gemm, &tile);
        }
        item = next;
    }
}

/* One of a tile's `steps` steps: prefetches its part of the tile's `lines` lines from `next`
 * (prefetcht1: into L2); `due` carries the remainder between steps. Returns the next line. */
static inline __attribute__((always_inline)) const char *prefetch_step(
    const char *next, int64_t *due, int64_t lines, int64_t steps
) {
    for (*due += lines; *due >= steps; *due -= steps, next += 64) __builtin_prefetch(next, 0, 2);
    return next;
}

#endif
