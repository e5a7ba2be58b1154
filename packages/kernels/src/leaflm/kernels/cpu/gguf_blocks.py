"""GGUF block formats as ``gguf_gemm.c`` reads them: parse the file's blocks, reorder them
into 16-row panels (integer bit shuffling only, nothing dequantized), and read values back.

File blocks:
- Q4_0 / Q4_1 (32 inputs): ``d fp16 [m fp16] qs[16]``, byte i = input i (low nibble) and
  input i + 16 (high); values ``d (q - 8)`` / ``d q + m``.
- Q8_0 (32): ``d fp16 qs[32] int8``; values ``d q``.
- Q4_K (256): ``d, dmin fp16, scales[12]`` (eight 6-bit scales and mins), ``qs[128]``
  nibbles; values ``d sc_j q - dmin m_j`` per sub-block j of 32.
- Q6_K (256): ``ql[128] qh[64] scales[16] int8, d fp16``; 6-bit q, values ``d sc_j (q - 32)``
  per sub-block j of 16.

A packed panel holds 16 rows. Per 32-input block it keeps the rows' quants interleaved four
bytes at a time (one int32 lane per row for the VNNI dot products), nibbles always in the
Q4_0 arrangement, then the rows' scales. The K-quants keep their integer sub-block scales
(Q4_K's unpacked to a byte each: 148 bytes a row per 256 instead of 144) and their fp16
super-block scales; Q6_K's 6-bit values are split into the nibble block plus 2-bit planes,
the same 6.5625 bits per weight as the file. Rows past the weight's end are zero blocks.

:func:`parse` and :func:`unpack_rows` give every format as ``(q, d, m)``: integer values with
the offset taken off, one float32 scale per group (32 inputs; 16 for Q6_K) and, for Q4_1 and
Q4_K, one additive float32 min per 32 inputs (``-dmin m`` for Q4_K). Products such as
``d sc`` are exact in float32 (an 11-bit mantissa times a 6- or 8-bit integer).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

BLOCK = 32  # inputs per activation block (and per simple weight block)
PANEL_ROWS = 16


@dataclass(frozen=True)
class BlockFormat:
    name: str
    qtype: int  # ggml's type number (gguf.GGMLQuantizationType)
    elems: int  # inputs per file block
    block_bytes: int  # bytes per file block
    panel_bytes: int  # bytes per file block's worth of a 16-row panel
    has_min: bool
    group: int = 32  # inputs per scale in (q, d, m)


FORMATS = {
    f.qtype: f
    for f in (
        BlockFormat("Q4_0", 2, 32, 18, 16 * 18, False),
        BlockFormat("Q4_1", 3, 32, 20, 16 * 20, True),
        BlockFormat("Q8_0", 8, 32, 34, 16 * 34, False),
        BlockFormat("Q4_K", 12, 256, 144, 64 + 8 * (256 + 32), True),
        BlockFormat("Q6_K", 14, 256, 210, 32 + 8 * (256 + 128 + 32), False, group=16),
    )
}


def block_format(qtype: int) -> BlockFormat:
    """The format of ggml type ``qtype``, or a ValueError naming the supported ones."""
    try:
        return FORMATS[int(qtype)]
    except KeyError:
        names = ", ".join(f.name for f in FORMATS.values())
        raise ValueError(
            f"GGUF type {qtype} has no block kernel here (supported: {names})"
        ) from None


def _blocks(raw, fmt: BlockFormat, rows: int, cols: int) -> np.ndarray:
    if cols % fmt.elems:
        raise ValueError(f"{fmt.name} rows of {cols} inputs are not whole blocks of {fmt.elems}")
    data = raw.numpy() if isinstance(raw, torch.Tensor) else np.asarray(raw)
    data = data.view(np.uint8).reshape(-1)
    expected = rows * (cols // fmt.elems) * fmt.block_bytes
    if data.size != expected:
        raise ValueError(
            f"{fmt.name} weight [{rows}, {cols}] takes {expected} bytes, got {data.size}"
        )
    return data.reshape(rows, cols // fmt.elems, fmt.block_bytes)


def _f16(b: np.ndarray) -> np.ndarray:
    """Two trailing bytes as float32 (via fp16)."""
    return np.ascontiguousarray(b).view(np.float16)[..., 0].astype(np.float32)


def _q4k_scales(s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """ggml's get_scale_min_k4 over ``[..., 12]`` bytes: eight 6-bit scales and mins."""
    s = s.astype(np.uint8)
    sc = np.empty((*s.shape[:-1], 8), np.uint8)
    mn = np.empty_like(sc)
    sc[..., :4], mn[..., :4] = s[..., 0:4] & 63, s[..., 4:8] & 63
    sc[..., 4:] = (s[..., 8:12] & 0x0F) | ((s[..., 0:4] >> 6) << 4)
    mn[..., 4:] = (s[..., 8:12] >> 4) | ((s[..., 4:8] >> 6) << 4)
    return sc, mn


def _q6k_values(blocks: np.ndarray) -> np.ndarray:
    """The unsigned 6-bit values (0..63) of ``[..., 210]`` Q6_K blocks as ``[..., 256]``."""
    ql, qh = blocks[..., :128], blocks[..., 128:192]
    q = np.empty((*blocks.shape[:-1], 256), np.uint8)
    for n in (0, 1):
        lo, hi, base = ql[..., 64 * n : 64 * n + 64], qh[..., 32 * n : 32 * n + 32], 128 * n
        q[..., base : base + 32] = (lo[..., :32] & 15) | ((hi & 3) << 4)
        q[..., base + 32 : base + 64] = (lo[..., 32:] & 15) | (((hi >> 2) & 3) << 4)
        q[..., base + 64 : base + 96] = (lo[..., :32] >> 4) | (((hi >> 4) & 3) << 4)
        q[..., base + 96 : base + 128] = (lo[..., 32:] >> 4) | (((hi >> 6) & 3) << 4)
    return q


def _fields(blocks: np.ndarray, fmt: BlockFormat) -> dict[str, np.ndarray]:
    """The integer fields of file blocks ``[rows, nblocks, bytes]``, per 32-input block.

    ``q``: [rows, K/32, 32] unsigned stored values; ``d``/``dmin``: [rows, nblocks, 2] raw
    fp16 bytes; ``sc``/``mn``: [rows, K/32, n] integer sub-block scales (n = 1, or 2 for Q6_K).
    """
    rows, nb = blocks.shape[:2]
    if fmt.name in ("Q4_0", "Q4_1", "Q8_0"):
        head = 4 if fmt.has_min else 2
        qs = blocks[..., head:]
        q = qs if fmt.name == "Q8_0" else np.concatenate([qs & 15, qs >> 4], axis=-1)
        out = {"q": q, "d": blocks[..., 0:2]}
        if fmt.has_min:
            out["dmin"] = blocks[..., 2:4]
        return out
    if fmt.name == "Q4_K":
        sc, mn = _q4k_scales(blocks[..., 4:16])
        qs = blocks[..., 16:].reshape(rows, nb, 4, 32)
        q = np.stack([qs & 15, qs >> 4], axis=3).reshape(rows, nb * 8, 32)
        return {
            "q": q, "d": blocks[..., 0:2], "dmin": blocks[..., 2:4],
            "sc": sc.reshape(rows, nb * 8, 1), "mn": mn.reshape(rows, nb * 8, 1),
        }  # fmt: skip
    q = _q6k_values(blocks).reshape(rows, nb * 8, 32)
    sc = blocks[..., 192:208].reshape(rows, nb * 8, 2)
    return {"q": q, "d": blocks[..., 208:210], "sc": sc}


def parse(raw, qtype: int, rows: int, cols: int):
    """File blocks of a ``[rows, cols]`` weight as ``(q, d, m)`` (see the module docstring)."""
    fmt = block_format(qtype)
    return _values(_fields(_blocks(raw, fmt, rows, cols), fmt), fmt)


def _values(f: dict[str, np.ndarray], fmt: BlockFormat):
    q = f["q"].astype(np.int32)
    rows, nblk = q.shape[:2]
    d = _f16(f["d"])  # per file block
    if fmt.name == "Q4_0":
        q = q - 8
    elif fmt.name == "Q8_0":
        q = f["q"].view(np.int8).astype(np.int32)
    elif fmt.name == "Q6_K":
        q = q - 32
    m = _f16(f["dmin"]) if "dmin" in f else None
    if "sc" in f:  # K-quants: super-block scale times integer sub-block scale
        per = nblk // d.shape[1]
        sc = f["sc"].view(np.int8) if fmt.name == "Q6_K" else f["sc"]
        d = np.repeat(d, per, axis=1)[..., None] * sc.astype(np.float32)
        if m is not None:
            m = -(np.repeat(m, per, axis=1)[..., None] * f["mn"].astype(np.float32))[..., 0]
    to = torch.from_numpy
    d = d.reshape(rows, -1)
    return to(q.reshape(rows, -1)), to(np.ascontiguousarray(d)), None if m is None else to(m)


def _interleave(a: np.ndarray) -> np.ndarray:
    """``[P, 16, nb, n]`` bytes (n % 4 == 0) -> ``[P, nb, n * 16]``: 4 bytes of each row in turn."""
    p, _, nb, n = a.shape
    return a.reshape(p, PANEL_ROWS, nb, n // 4, 4).transpose(0, 2, 3, 1, 4).reshape(p, nb, -1)


def _by_row(a: np.ndarray) -> np.ndarray:
    """``[P, 16, nb, n]`` -> ``[P, nb, n * 16]`` with the 16 rows' values side by side."""
    p, _, nb, _ = a.shape
    return a.transpose(0, 2, 3, 1).reshape(p, nb, -1)


def _f16_by_row(a: np.ndarray) -> np.ndarray:
    """``[P, 16, nb, 2]`` fp16 bytes -> ``[P, nb, 32]``: the 16 rows' fp16 values in turn."""
    return a.transpose(0, 2, 1, 3).reshape(a.shape[0], a.shape[2], -1)


def pack(raw, qtype: int, rows: int, cols: int) -> torch.Tensor:
    """File blocks of a ``[rows, cols]`` weight as ``[panels, cols / elems, panel_bytes]``."""
    fmt = block_format(qtype)
    blocks = _blocks(raw, fmt, rows, cols)
    panels = -(-rows // PANEL_ROWS)
    blocks = np.pad(blocks, ((0, panels * PANEL_ROWS - rows), (0, 0), (0, 0)))
    f = {k: v.reshape(panels, PANEL_ROWS, *v.shape[1:]) for k, v in _fields(blocks, fmt).items()}
    q = f["q"]  # [P, 16, K/32, 32]
    if fmt.name == "Q8_0":
        quants = [_interleave(q)]
    else:
        quants = [_interleave((q[..., :16] & 15) | ((q[..., 16:] & 15) << 4))]
    if fmt.name == "Q6_K":
        h = q >> 4  # planes for groups g = 2j, 2j + 1 of the 8 nibble groups' 4 inputs
        h = h.reshape(*h.shape[:-1], 2, 4, 4)  # [.., half, group, t]: input 16 half + 4 g + t
        planes = [
            h[..., 0, 2 * j, :] | (h[..., 1, 2 * j, :] << 2)
            | (h[..., 0, 2 * j + 1, :] << 4) | (h[..., 1, 2 * j + 1, :] << 6)
            for j in (0, 1)
        ]  # fmt: skip
        quants.append(_interleave(np.concatenate(planes, axis=-1)))
    if "sc" in f:
        quants += [_by_row(f["sc"])] + ([_by_row(f["mn"])] if "mn" in f else [])
    heads = [_f16_by_row(f["d"])] + ([_f16_by_row(f["dmin"])] if "dmin" in f else [])
    if fmt.elems == BLOCK:  # per block: quants, then the 16 scales (and mins)
        out = np.concatenate([*quants, *heads], axis=-1)
    else:  # per super-block: its fp16 scales, then its eight blocks
        per_block = np.concatenate(quants, axis=-1)
        out = np.concatenate([*heads, per_block.reshape(panels, blocks.shape[1], -1)], axis=-1)
    assert out.shape[-1] == fmt.panel_bytes, (fmt.name, out.shape)
    return torch.from_numpy(np.ascontiguousarray(out))


def _deinterleave(a: torch.Tensor, n: int) -> torch.Tensor:
    """Inverse of :func:`_interleave` for rows picked by lane: ``[R, nb, 16 n]`` -> per lane."""
    r, nb = a.shape[:2]
    return (
        a.reshape(r, nb, n // 4, PANEL_ROWS, 4).permute(0, 3, 1, 2, 4).reshape(r, PANEL_ROWS, nb, n)
    )


def unpack_rows(packed: torch.Tensor, qtype: int, rows: torch.Tensor):
    """``(q, d, m)`` as :func:`parse` gives them, for weight rows ``rows`` of a packed weight
    (only those rows' panels are read)."""
    fmt = block_format(qtype)
    rows = rows.reshape(-1).long()
    data = packed[rows // PANEL_ROWS]  # [R, units, panel_bytes]
    lane, idx = rows % PANEL_ROWS, torch.arange(rows.numel())
    n, units = rows.numel(), packed.shape[1]
    simple = fmt.elems == BLOCK
    heads = 4 if fmt.has_min else 2
    head_bytes = 0 if simple else PANEL_ROWS * heads

    def by_row(a: torch.Tensor, width: int) -> torch.Tensor:  # inverse of _by_row
        return a.reshape(n, a.shape[1], width, PANEL_ROWS).permute(0, 3, 1, 2)[idx, lane]

    def f16_rows(a: torch.Tensor) -> torch.Tensor:  # inverse of _f16_by_row
        return a.reshape(n, a.shape[1], PANEL_ROWS, 2).permute(0, 2, 1, 3)[idx, lane]

    def pick(a: torch.Tensor) -> torch.Tensor:
        return a[idx, lane]

    if simple:
        blocks, d_raw = data, None
    else:
        d_raw = data[..., :head_bytes]
        blocks = data[..., head_bytes:].reshape(n, units * 8, -1)
    nb = blocks.shape[1]
    qb = 32 if fmt.name == "Q8_0" else 16
    f: dict[str, np.ndarray] = {}
    quant = pick(_deinterleave(blocks[..., : qb * 16], qb))  # [R, nb, qb]
    if fmt.name == "Q8_0":
        q = quant
    else:
        q = torch.cat([quant & 15, quant >> 4], dim=-1)
    off = qb * 16
    if fmt.name == "Q6_K":
        planes = pick(_deinterleave(blocks[..., off : off + 128], 8))  # [R, nb, 8]
        off += 128
        hi = torch.zeros(n, nb, 2, 4, 4, dtype=torch.uint8)
        for j in (0, 1):
            p = planes[..., 4 * j : 4 * j + 4]
            hi[..., 0, 2 * j, :], hi[..., 1, 2 * j, :] = p & 3, (p >> 2) & 3
            hi[..., 0, 2 * j + 1, :], hi[..., 1, 2 * j + 1, :] = (p >> 4) & 3, p >> 6
        q = q | (hi.reshape(n, nb, 32) << 4)
    f["q"] = q.numpy()
    if simple:
        tail = blocks[..., off:]
        f["d"] = f16_rows(tail[..., :32]).numpy()
        if fmt.has_min:
            f["dmin"] = f16_rows(tail[..., 32:64]).numpy()
    else:
        assert d_raw is not None  # a K-quant unit's scales sit in front of its blocks
        nsc = 2 if fmt.name == "Q6_K" else 1
        f["sc"] = by_row(blocks[..., off : off + 16 * nsc], nsc).numpy()
        if fmt.has_min:
            f["mn"] = by_row(blocks[..., off + 16 : off + 32], 1).numpy()
        f["d"] = f16_rows(d_raw[..., :32]).numpy()
        if fmt.has_min:
            f["dmin"] = f16_rows(d_raw[..., 32:64]).numpy()
    return _values(f, fmt)


def dequantize(q: torch.Tensor, d: torch.Tensor, m: torch.Tensor | None) -> torch.Tensor:
    """Float32 weight values ``d * q (+ m)`` from :func:`parse` / :func:`unpack_rows` parts."""
    rows, cols = q.shape
    w = q.view(rows, d.shape[1], -1).float() * d[..., None]
    w = w.view(rows, -1, BLOCK)
    if m is not None:
        w = w + m[..., None]
    return w.view(rows, cols)


_SCALE_BYTES = {"Q4_0": (0, 2), "Q4_1": (0, 4), "Q8_0": (0, 2), "Q4_K": (0, 4), "Q6_K": (208, 210)}


def random_blocks(qtype: int, rows: int, cols: int, seed: int = 0) -> np.ndarray:
    """Raw file blocks ``[rows, bytes]`` with random quants and small fp16 scales (gguf-py
    cannot quantize the K types), for tests and benchmarks."""
    fmt = block_format(qtype)
    rng = np.random.default_rng(seed)
    raw = rng.integers(0, 256, (rows, cols // fmt.elems, fmt.block_bytes), dtype=np.uint8)
    a, b = _SCALE_BYTES[fmt.name]
    scale = 2e-2 if fmt.elems == BLOCK else 2e-3
    scales = rng.uniform(scale / 10, scale, (rows, cols // fmt.elems, (b - a) // 2))
    raw[..., a:b] = scales.astype(np.float16).view(np.uint8)
    return raw.reshape(rows, -1)
