"""Convert one GGUF file into a cached HF-format directory, or return the cached one.

Layout written: `config.json`, `generation_config.json`, `model.safetensors` (or shards plus
`model.safetensors.index.json`), tokenizer files, and `leaflm_gguf.json` recording the source
file and the conversion time. Tensors are dequantized to float32 one at a time and written per
shard, so at most one shard's worth of float32 weights is in memory.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path

import numpy as np

from leaflm.engine.gguf.cache import FORMAT_VERSION, gguf_cache_dir, publish, staging_dir
from leaflm.engine.gguf.config import build_config
from leaflm.engine.gguf.file import GGUFError, GGUFFile
from leaflm.engine.gguf.tensors import iter_hf_tensors
from leaflm.engine.gguf.tokenizer import write_tokenizer
from leaflm.kernels.cpu import malloc_tuning

MAX_SHARD_BYTES = 2 * 1024**3
logger = logging.getLogger(__name__)

__all__ = ["GGUFError", "convert_gguf", "gguf_cache_dir"]


def convert_gguf(gguf_path: str | Path, *, progress: bool = True) -> Path:
    """The cached HF directory for `gguf_path`, converting it first if needed.

    Raises:
        GGUFError: the file is missing, corrupt, incomplete, or uses an unsupported
            architecture or quantization type (the message names the file and tensor/key).
    """
    path = Path(gguf_path).expanduser()
    if not path.is_file():
        raise GGUFError(f"GGUF file {path} does not exist")
    target = gguf_cache_dir(path)
    if (target / "config.json").is_file():
        return target
    staging = staging_dir(target)
    logger.info("converting %s to float32 into %s (once; later starts reuse it)", path.name, target)
    try:
        start = time.perf_counter()
        _convert_into(path, staging, progress=progress)
        _write_json(
            staging / "leaflm_gguf.json",
            {
                "format_version": FORMAT_VERSION,
                "source": str(path.resolve()),
                "source_size": path.stat().st_size,
                "convert_seconds": round(time.perf_counter() - start, 3),
            },
        )
        logger.info("converted in %.1f s", time.perf_counter() - start)
        malloc_tuning.release_free_heap()  # the dequantized tensors' memory, now on disk
        return publish(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _convert_into(path: Path, out: Path, *, progress: bool) -> None:
    from transformers import AutoConfig, GenerationConfig

    f = GGUFFile(path)
    config_kwargs = build_config(f)
    model_type = config_kwargs.pop("model_type")
    config = AutoConfig.for_model(model_type, **config_kwargs)
    config.dtype = "float32"
    config.save_pretrained(out)
    GenerationConfig(
        bos_token_id=config_kwargs["bos_token_id"],
        eos_token_id=config_kwargs["eos_token_id"],
        pad_token_id=config_kwargs["pad_token_id"],
    ).save_pretrained(out)
    config_kwargs["model_type"] = model_type
    _write_weights(f, config_kwargs, out, progress=progress)
    write_tokenizer(path, out)


def _write_weights(f: GGUFFile, config: dict, out: Path, *, progress: bool) -> None:
    from safetensors.numpy import save_file
    from tqdm.auto import tqdm

    shards: list[list[str]] = []
    shard: dict[str, np.ndarray] = {}
    shard_bytes = total = 0

    def flush() -> None:
        nonlocal shard, shard_bytes, total
        total += shard_bytes
        save_file(shard, str(out / f"shard-{len(shards)}.tmp"), metadata={"format": "pt"})
        shards.append(list(shard))
        shard, shard_bytes = {}, 0

    bar = tqdm(
        total=len(f.tensors), desc=f"Converting {f.path.name}", unit="tensor", disable=not progress
    )
    with bar:
        for name, weights in iter_hf_tensors(f, config):
            if shard and shard_bytes + weights.nbytes > MAX_SHARD_BYTES:
                flush()
            shard[name] = weights
            shard_bytes += weights.nbytes
            bar.update(1)
        flush()
    if len(shards) == 1:
        (out / "shard-0.tmp").rename(out / "model.safetensors")
        return
    weight_map: dict[str, str] = {}
    for i, names in enumerate(shards):
        final = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        (out / f"shard-{i}.tmp").rename(out / final)
        weight_map.update(dict.fromkeys(names, final))
    _write_json(
        out / "model.safetensors.index.json",
        {"metadata": {"total_size": total}, "weight_map": weight_map},
    )


def _write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
