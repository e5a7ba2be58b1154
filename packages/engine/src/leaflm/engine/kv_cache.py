"""The paged KV cache tensors, their sizing, and the block moves the scheduler asks for.

One tensor `[2, num_layers, num_blocks, block_size, num_kv_heads, head_dim]` holds every
layer's keys and values, so a copy-on-write copy or a swap of a set of blocks is one indexed
copy for all layers at once. The swap pool is the same shape in host memory.

On CPU the cache is an anonymous private mapping that the kernel zero-fills page by page on
first write: a process holds (RSS) only the blocks it has used so far, not the whole reserve,
and the start-up does not spend seconds zeroing gigabytes it may never touch.
"""

from __future__ import annotations

import math
import mmap
import os

import torch

from leaflm.kernels.cpu import hugepages

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
    ) -> None:
        shape = (2, num_layers, num_blocks, block_size, num_kv_heads, head_dim)
        if torch.device(device).type == "cpu":
            self.data = lazily_zeroed_cpu(shape, dtype)  # zeros: no NaN garbage in unused slots
            hugepages.advise_tensor(self.data)  # before the first touch: faults get 2 MiB pages
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
