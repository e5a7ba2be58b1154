/*
 * Pulling a GEMM's next weight panel into L2 while the current one is computed (gemm.c,
 * int8_gemm.c). A thread claims its next (row block, panel) item before it starts the current
 * one; the tiles after the first over the current panel each prefetch an even share of the
 * next panel's 64-byte lines, spread over their steps. The next item's first tile then reads
 * L2 instead of waiting on memory with its multiply-adds idle, as it did when weights stream
 * from memory (a decode step).
 */
#ifndef LEAFLM_PANEL_PREFETCH_H
#define LEAFLM_PANEL_PREFETCH_H

#include <stdint.h>

/* Tile t's share of a panel of `lines` lines, in an item of `tiles` tiles: the count (0 for
 * the first tile, which streams its own panel), its first line in *first. */
static inline int64_t next_panel_share(int64_t tiles, int64_t t, int64_t lines, int64_t *first) {
    *first = 0;
    if (t == 0) return 0;
    const int64_t share = (lines + tiles - 2) / (tiles - 1);
    *first = (t - 1) * share;
    return *first >= lines ? 0 : *first + share > lines ? lines - *first : share;
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
