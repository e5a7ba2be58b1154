"""Engine start-up: resolve the model directory, config and tokenizer; size the KV cache.

On CPU the cache gets `kv_cache_memory` bytes; by default, what the configuration can use
(`max_num_seqs` sequences of `max_model_len` tokens, in whole blocks), capped at the smaller
of 4 GiB and a quarter of available RAM. Its pages become resident as blocks are first used
(see `kv_cache`). On CUDA a profiling forward over a full token budget measures peak memory,
and the cache gets what `gpu_memory_utilization` leaves after it. Either way one log line says
how many blocks, tokens and GiB it got.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from leaflm.engine.config import CacheConfig, EngineArgs, ModelConfig
from leaflm.engine.kv_cache import bytes_per_block, default_cpu_kv_bytes
from leaflm.engine.model_runner import ModelRunner
from leaflm.engine.model_source import default_served_name, gguf_source, resolve_model_path
from leaflm.engine.models.registry import load_hf_config

logger = logging.getLogger(__name__)


def load_model_config(args: EngineArgs) -> tuple[ModelConfig, Any, frozenset[int]]:
    """(ModelConfig, tokenizer, EOS token ids) for `args.model`."""
    from transformers import AutoTokenizer, GenerationConfig

    logger.info("resolving model %s", args.model or "(the embedded default)")
    path = resolve_model_path(args.model)
    logger.info("loading config and tokenizer from %s", path)
    hf_config = load_hf_config(path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    device = args.resolve_device()
    dtype = args.resolve_dtype(device, hf_config)
    if args.quantization is not None and (device.type != "cpu" or dtype != torch.float32):
        raise ValueError(
            f"quantization={args.quantization!r} runs on CPU in float32 only, got device "
            f"{device} and dtype {dtype}"
        )
    source = gguf_source(args.model)
    if args.quantization == "gguf" and source is None:
        raise ValueError(
            f"quantization='gguf' runs a GGUF model on its own blocks, but {args.model} is "
            "not a GGUF file (pass a .gguf file or a known model name)"
        )
    limit = int(getattr(hf_config, "max_position_embeddings", 2048))
    if args.max_model_len is not None and args.max_model_len > limit:
        raise ValueError(
            f"max_model_len={args.max_model_len} exceeds the model's max_position_embeddings={limit}"
        )
    eos: set[int] = set()
    try:
        gen = GenerationConfig.from_pretrained(path)
        eos.update(_ids(gen.eos_token_id))
    except OSError:  # no generation_config.json
        pass
    eos.update(_ids(getattr(hf_config, "eos_token_id", None)))
    if tokenizer.eos_token_id is not None:
        eos.add(tokenizer.eos_token_id)
    name = args.served_model_name or default_served_name(args.model)
    config = ModelConfig(
        model=str(args.model) if args.model is not None else str(path),
        path=path,
        hf_config=hf_config,
        dtype=dtype,
        device=device,
        max_model_len=args.max_model_len or limit,
        served_name=name,
        quantization=args.quantization,
        gguf_path=source,
        kv_cache_dtype=args.resolve_kv_cache_dtype(dtype),
    )
    return config, tokenizer, frozenset(eos)


def _ids(value: Any) -> list[int]:
    if value is None:
        return []
    return [value] if isinstance(value, int) else [int(v) for v in value]


def size_kv_cache(args: EngineArgs, config: ModelConfig, runner: ModelRunner) -> CacheConfig:
    """Number of device and swap blocks; may lower `config.max_model_len` to what fits."""
    layers, kv_heads, head_dim = runner.kv_shape()
    per_block = bytes_per_block(layers, args.block_size, kv_heads, head_dim, config.cache_dtype)
    if config.device.type == "cuda":
        budget_tokens = args.max_num_batched_tokens or 8192
        peak = runner.profile_peak_memory(budget_tokens, args.block_size)
        total = torch.cuda.mem_get_info(config.device)[1]
        budget = int(total * args.gpu_memory_utilization) - peak
        if budget < per_block:
            raise ValueError(
                f"gpu_memory_utilization={args.gpu_memory_utilization} leaves no room for the "
                f"KV cache after the model's {peak / 2**30:.2f} GiB peak"
            )
        how = f"gpu_memory_utilization={args.gpu_memory_utilization}"
    elif args.kv_cache_memory:
        budget, how = args.kv_cache_memory, "kv_cache_memory"
    else:
        need = args.max_num_seqs * -(-config.max_model_len // args.block_size) * per_block
        cap = default_cpu_kv_bytes()
        budget = min(need, cap)
        how = (
            f"max_num_seqs={args.max_num_seqs} x max_model_len={config.max_model_len}"
            if need <= cap
            else f"the CPU default cap min(4 GiB, RAM/4) = {cap / 2**30:.2f} GiB"
        )
    num_blocks = budget // per_block
    if num_blocks < 1:
        raise ValueError(
            f"kv_cache_memory={budget} bytes is below one KV block ({per_block} bytes)"
        )
    capacity = num_blocks * args.block_size
    if capacity < config.max_model_len:
        if args.max_model_len is not None:
            raise ValueError(
                f"kv_cache_memory holds {capacity} tokens, less than max_model_len="
                f"{args.max_model_len}; raise kv_cache_memory or lower max_model_len"
            )
        config.max_model_len = capacity
    num_cpu_blocks = int(args.swap_space_gb * 2**30) // per_block
    prefault, resident = 0, ""  # a device cache is allocated resident
    if config.device.type == "cpu":
        prefault = min(num_blocks, args.kv_cache_prefault // per_block)
        prefault_gib = prefault * per_block / 2**30
        resident = f" (the first {prefault_gib:.2f} GiB resident at start, the rest on first use)"
    logger.info(
        "KV cache: %d blocks x %d tokens = %d tokens, %.2f GiB on %s%s; sized by %s",
        num_blocks, args.block_size, capacity, num_blocks * per_block / 2**30,
        config.device.type, resident, how,
    )  # fmt: skip
    return CacheConfig(
        args.block_size, num_blocks, num_cpu_blocks, args.enable_prefix_caching, prefault
    )
