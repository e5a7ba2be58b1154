"""GGUF checkpoints -> cached HF-format directories.

llama.cpp's GGUF packs quantized weights, the model's hyper-parameters and its tokenizer into
one file. leaflm's models load HF directories, so a GGUF is converted once (dequantized to
float32 safetensors, config.json from the metadata, tokenizer files, llama.cpp's Q/K row
permutation undone) into a user cache dir, and every later start reuses that directory:

    GGUFFile (file.py) -> config (config.py) + tensors (tensors.py) + tokenizer (tokenizer.py)
        -> written by convert.py into a temp dir, published atomically by cache.py
"""

from leaflm.engine.gguf.convert import convert_gguf, gguf_cache_dir
from leaflm.engine.gguf.file import GGUFError

__all__ = ["GGUFError", "convert_gguf", "gguf_cache_dir"]
