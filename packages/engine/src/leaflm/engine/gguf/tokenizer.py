"""The tokenizer files of a GGUF model, built by transformers' own GGUF tokenizer conversion.

transformers reads `tokenizer.ggml.*` (vocabulary, merges, token types, bos/eos/pad ids, the
chat template) into a fast tokenizer; reusing it makes leaflm's tokenizer identical, token for
token, to what `AutoTokenizer.from_pretrained(dir, gguf_file=...)` gives.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from leaflm.engine.gguf.file import GGUFError


def write_tokenizer(gguf_path: Path, out_dir: Path) -> None:
    """Save the GGUF file's tokenizer (with its chat template) as HF files into `out_dir`."""
    from transformers import AutoTokenizer

    # Load through a directory holding only a link to the file, so stray tokenizer files next
    # to the GGUF can never be mixed into the result.
    with tempfile.TemporaryDirectory(prefix="leaflm-gguf-tok-") as tmp:
        link = Path(tmp) / gguf_path.name
        link.symlink_to(gguf_path.resolve())
        try:
            tokenizer = AutoTokenizer.from_pretrained(tmp, gguf_file=gguf_path.name)
        except Exception as exc:
            raise GGUFError(f"{gguf_path}: cannot build its tokenizer: {exc}") from exc
    tokenizer.save_pretrained(out_dir)
