"""The paged KV cache tensors, their sizing, and the block moves the scheduler asks for.

One tensor `[2, num_layers, num_blocks, block_size, num_kv_heads, head_dim]` holds every
layer's keys and values, so a copy-on-write copy or a swap of a set of blocks is one indexed
copy for all layers at once. The swap pool is the same shape in host memory.

On CPU the cache is an anonymous private mapping that the kernel zero-fills page by page on
first write: a process holds (RSS) only the blocks it has used so far, not the whole reserve,
and the start-up does not spend seconds zeroing gigabytes it may never touch. Its first
blocks, the ones the block manager hands out first, are written at start
(`num_prefault_blocks`, from `kv_cache_prefault`): a fresh page faulted in the middle of a
step cost 7-20 us on the dev VM (1.7-1.9 s of a 64 x 128/128 int8 run, while the step's
other thread waited), and the same pages zeroed up front by torch's parallel fill took
0.30-0.42 s a GiB of start-up.

The cache is not advised onto huge pages (the packed weights are): a fault in a region
marked MADV_HUGEPAGE compacts memory synchronously under the kernel's default THP `defrag`
setting, and blocks are first written in the middle of a step. On the 2-core dev VM a fresh
cache faulted in at ~0.46 GB/s on huge pages against ~2.6 GB/s on 4 KiB pages; offline
64 x 128/128 ran 575-581 vs 547-554 tok/s without the advice (fresh processes, interleaved),
and `vllm bench serve` at 16 users 409 and 379 vs 400 and 354, while with the cache faulted
in ahead the page size was worth little (4 KiB 576 and 617, huge 621 and 625 tok/s).
"""

from __future__ import annotations

import math
import mmap
import os

import torch

DEFAULT_CPU_KV_BYTES = 4 * 1024**3
DEFAULT_CPU_KV_FRACTION = 0.25  # of available RAM: other processes share the machine


def bytes_per_block(
    num_layers: int, block_size: int, num_kv_heads: int, head_dim: int, dtype: torch.dtype
) -> int:
    elt = torch.empty((), dtype=dtype).element_size()
    return 2 * num_layers * block_size * num_kv_heads * head_dim * elt


def available_ram() -> int:
    """MemAvailable from /proc/meminfo, or total RAM when that is unavailable."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def default_cpu_kv_bytes() -> int:
    """The most a CPU cache takes unless told: min(4 GiB, a quarter of available RAM)."""
    return int(min(DEFAULT_CPU_KV_BYTES, DEFAULT_CPU_KV_FRACTION * available_ram()))


def lazily_zeroed_cpu(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """A zero CPU tensor whose pages become resident only when first written.

    Linux/macOS: an anonymous private mapping (the kernel's zero pages); elsewhere torch.zeros.
    """
    nbytes = math.prod(shape) * torch.empty((), dtype=dtype).element_size()
    flags = getattr(mmap, "MAP_PRIVATE", None), getattr(mmap, "MAP_ANONYMOUS", None)
    if nbytes == 0 or None in flags:
        return torch.zeros(shape, dtype=dtype)
    buf = mmap.mmap(-1, nbytes, flags=flags[0] | flags[1])  # type: ignore[operator]
    return torch.frombuffer(buf, dtype=dtype).view(shape)  # the tensor keeps `buf` alive


class KVCache:
    """Device cache plus optional host swap pool; `layers[i]` is layer i's (key, value)."""

    def __init__(
        self,
        num_layers: int,
        num_blocks: int,
        block_size: int,
        num_kv_heads: int,
        head_dim: int,
        dtype: torch.dtype,
        device: torch.device,
        num_cpu_blocks: int = 0,
        num_prefault_blocks: int = 0,
    ) -> None:
        shape = (2, num_layers, num_blocks, block_size, num_kv_heads, head_dim)
        if torch.device(device).type == "cpu":
            self.data = lazily_zeroed_cpu(shape, dtype)  # zeros: no NaN garbage in unused slots
            # The block manager hands out the lowest free blocks first: these.
            self.data[:, :, :num_prefault_blocks].zero_()
        else:
            self.data = torch.zeros(shape, dtype=dtype, device=device)
        self.layers = [(self.data[0, i], self.data[1, i]) for i in range(num_layers)]
        self.cpu_data: torch.Tensor | None = None
        if num_cpu_blocks:
            cpu_shape = (2, num_layers, num_cpu_blocks, *shape[3:])
            self.cpu_data = torch.zeros(cpu_shape, dtype=dtype, pin_memory=device.type == "cuda")

    def apply(
        self,
        swap_out: list[tuple[int, int]],
        swap_in: list[tuple[int, int]],
        copies: list[tuple[int, int]],
    ) -> None:
        """Swap out, then swap in, then copy-on-write: the order the scheduler assumes."""
        if swap_out:
            assert self.cpu_data is not None, "swap out without a host swap pool"
            dev, cpu = _index(swap_out, self.data.device)
            self.cpu_data[:, :, cpu.cpu()] = self.data[:, :, dev].to("cpu")
        if swap_in:
            assert self.cpu_data is not None, "swap in without a host swap pool"
            cpu, dev = _index(swap_in, self.data.device)
            self.data[:, :, dev] = self.cpu_data[:, :, cpu.cpu()].to(self.data.device)
        if copies:
            src, dst = _index(copies, self.data.device)
            self.data[:, :, dst] = self.data[:, :, src]


def _index(pairs: list[tuple[int, int]], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    t = torch.tensor(pairs, dtype=torch.long, device=device)
    return t[:, 0], t[:, 1]
