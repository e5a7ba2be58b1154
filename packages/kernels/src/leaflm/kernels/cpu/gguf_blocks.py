"""GGUF block formats as ``gguf_gemm.c`` reads them: parse the file's blocks, reorder them
into 16-row panels (same bytes, no dequantization), and read values back out.

A file block of 32 inputs is ``[d fp16][m fp16 (Q4_1)][quants]``: Q4_0/Q4_1 hold 16 bytes of
nibbles (byte i: input i in the low nibble, input i + 16 in the high one), Q8_0 32 int8s.
Weight values are ``d * (q - 8)`` (Q4_0), ``d * q + m`` (Q4_1) and ``d * q`` (Q8_0).

A packed panel holds, per block, the 16 rows' quants interleaved four bytes at a time (one
int32 lane per row for the VNNI dot products), then their 16 scales, then (Q4_1) 16 mins.
Rows past the weight's end are zero blocks (scale 0), so they contribute nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

BLOCK = 32  # inputs per block
PANEL_ROWS = 16


@dataclass(frozen=True)
class BlockFormat:
    name: str
    qtype: int  # ggml's type number (gguf.GGMLQuantizationType)
    quant_bytes: int  # bytes of quants per block
    has_min: bool
    offset: int  # subtracted from the stored quant (Q4_0: 8)

    @property
    def header_bytes(self) -> int:
        return 4 if self.has_min else 2

    @property
    def block_bytes(self) -> int:
        """Bytes of one block in the file."""
        return self.header_bytes + self.quant_bytes

    @property
    def panel_block_bytes(self) -> int:
        """Bytes of one block of a 16-row panel (16 file blocks' worth)."""
        return PANEL_ROWS * self.block_bytes


FORMATS = {
    f.qtype: f
    for f in (
        BlockFormat("Q4_0", 2, 16, False, 8),
        BlockFormat("Q4_1", 3, 16, True, 0),
        BlockFormat("Q8_0", 8, 32, False, 0),
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


def _blocks(raw: np.ndarray | torch.Tensor, fmt: BlockFormat, rows: int, cols: int) -> np.ndarray:
    if cols % BLOCK:
        raise ValueError(f"{fmt.name} rows of {cols} inputs are not whole blocks of {BLOCK}")
    data = raw.numpy() if isinstance(raw, torch.Tensor) else np.asarray(raw)
    data = data.view(np.uint8).reshape(-1)
    expected = rows * (cols // BLOCK) * fmt.block_bytes
    if data.size != expected:
        raise ValueError(
            f"{fmt.name} weight [{rows}, {cols}] takes {expected} bytes, got {data.size}"
        )
    return data.reshape(rows, cols // BLOCK, fmt.block_bytes)


def parse(
    raw: np.ndarray | torch.Tensor, qtype: int, rows: int, cols: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """File blocks as ``(q [rows, cols] int32 with the offset taken off, d [rows, cols/32],
    m [rows, cols/32] or None)``, the scales in float32."""
    fmt = block_format(qtype)
    blocks = _blocks(raw, fmt, rows, cols)
    d = blocks[..., 0:2].copy().view(np.float16)[..., 0].astype(np.float32)
    m = blocks[..., 2:4].copy().view(np.float16)[..., 0].astype(np.float32) if fmt.has_min else None
    qs = blocks[..., fmt.header_bytes :]
    if fmt.quant_bytes == 32:
        q = qs.view(np.int8).astype(np.int32)
    else:
        q = np.concatenate([qs & 0x0F, qs >> 4], axis=-1).astype(np.int32) - fmt.offset
    to = torch.from_numpy
    return to(q.reshape(rows, cols)), to(d), None if m is None else to(m)


def pack(raw: np.ndarray | torch.Tensor, qtype: int, rows: int, cols: int) -> torch.Tensor:
    """File blocks of a ``[rows, cols]`` weight as ``[panels, cols/32, panel_block_bytes]``."""
    fmt = block_format(qtype)
    blocks = _blocks(raw, fmt, rows, cols)
    nb = cols // BLOCK
    panels = -(-rows // PANEL_ROWS)
    blocks = np.pad(blocks, ((0, panels * PANEL_ROWS - rows), (0, 0), (0, 0)))
    blocks = blocks.reshape(panels, PANEL_ROWS, nb, fmt.block_bytes).transpose(0, 2, 1, 3)
    groups = fmt.quant_bytes // 4
    qs = blocks[..., fmt.header_bytes :].reshape(panels, nb, PANEL_ROWS, groups, 4)
    parts = [qs.transpose(0, 1, 3, 2, 4).reshape(panels, nb, -1)]
    parts.append(blocks[..., 0:2].reshape(panels, nb, -1))
    if fmt.has_min:
        parts.append(blocks[..., 2:4].reshape(panels, nb, -1))
    return torch.from_numpy(np.ascontiguousarray(np.concatenate(parts, axis=-1)))


def unpack_rows(
    packed: torch.Tensor, qtype: int, rows: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """``(q, d, m)`` as :func:`parse` gives them, for the weight rows ``rows`` of a packed
    weight (only those rows' bytes are touched)."""
    fmt = block_format(qtype)
    rows = rows.reshape(-1).long()
    data = packed[rows // PANEL_ROWS]  # [R, nb, panel_block_bytes]
    lane, r = rows % PANEL_ROWS, torch.arange(rows.numel())
    n, nb = rows.numel(), packed.shape[1]
    quant = PANEL_ROWS * fmt.quant_bytes
    qs = data[..., :quant].reshape(n, nb, fmt.quant_bytes // 4, PANEL_ROWS, 4)
    qs = qs.permute(0, 3, 1, 2, 4)[r, lane].reshape(n, nb, fmt.quant_bytes)

    def scales(start: int) -> torch.Tensor:
        half = data[..., start : start + 2 * PANEL_ROWS].contiguous().view(torch.float16)
        return half.permute(0, 2, 1)[r, lane].float()

    if fmt.quant_bytes == 32:
        q = qs.view(torch.int8).int()
    else:
        q = torch.cat([qs & 0x0F, qs >> 4], dim=-1).int() - fmt.offset
    m = scales(quant + 2 * PANEL_ROWS) if fmt.has_min else None
    return q.reshape(n, nb * BLOCK), scales(quant), m


def dequantize(q: torch.Tensor, d: torch.Tensor, m: torch.Tensor | None) -> torch.Tensor:
    """Float32 weight values ``d * q (+ m)`` from :func:`parse` / :func:`unpack_rows` parts."""
    rows, cols = q.shape
    w = q.view(rows, -1, BLOCK).float() * d[..., None]
    if m is not None:
        w = w + m[..., None]
    return w.view(rows, cols)
