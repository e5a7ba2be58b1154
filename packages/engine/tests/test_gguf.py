"""GGUF -> HF conversion on tiny models written the way llama.cpp writes them.

The reference is twofold: the original HF weights (exact for F32 tensors, which proves the
Q/K permutation and Gemma's `1 + w` norms are undone) and transformers' own GGUF loader
(`from_pretrained(dir, gguf_file=...)`, with its own torch dequantization), which must give
the same weights, logits and tokens as plain transformers on leaflm's converted directory.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time

import gguf
import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from leaflm.engine.gguf import GGUFError, convert_gguf, gguf_cache_dir
from leaflm.engine.model_source import resolve_model_path
from leaflm.engine.testing import build_tiny_model, write_tiny_gguf

Q = gguf.GGMLQuantizationType
TEXTS = ["the model reads a token", "Héllo café 東京 🙂 one two", "  spaces\tand\nlines 123"]


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LEAFLM_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory):
    rope = {"rope_type": "default", "rope_theta": 50000.0}
    return build_tiny_model(tmp_path_factory.mktemp("llama"), "llama", rope_parameters=rope)


def _state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach() for k, v in model.state_dict().items()}


def _hf_gguf(path):
    return AutoModelForCausalLM.from_pretrained(
        str(path.parent), gguf_file=path.name, dtype=torch.float32
    ).eval()


def _logits(model, ids: list[list[int]]) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([model(torch.tensor([x])).logits[0] for x in ids])


def test_llama_round_trip_undoes_permutation_and_matches_transformers(tiny_llama, tmp_path):
    qtypes = {
        "blk.1.ffn_up.weight": Q.Q8_0,
        "blk.1.attn_v.weight": Q.Q4_1,
        "blk.0.ffn_gate.weight": Q.F16,
    }
    path = write_tiny_gguf(tiny_llama, tmp_path / "tiny.gguf", qtypes=qtypes)
    out = convert_gguf(path, progress=False)

    cfg = json.loads((out / "config.json").read_text())
    assert cfg["architectures"] == ["LlamaForCausalLM"]
    assert cfg["rope_parameters"]["rope_theta"] == 50000.0
    assert (cfg["num_attention_heads"], cfg["num_key_value_heads"]) == (4, 2)
    assert cfg["tie_word_embeddings"] is False

    mine = AutoModelForCausalLM.from_pretrained(out).eval()
    orig = AutoModelForCausalLM.from_pretrained(tiny_llama).eval()
    ref = _hf_gguf(path)
    a, o, r = _state(mine), _state(orig), _state(ref)
    assert a.keys() == o.keys() == r.keys()
    quantized = {"model.layers.1.mlp.up_proj.weight", "model.layers.1.self_attn.v_proj.weight"}
    for name in a:
        torch.testing.assert_close(a[name], r[name], rtol=0, atol=0, msg=name)
        if name in quantized:
            assert 0 < (a[name] - o[name]).abs().max() < 0.1, name
        elif name == "model.layers.0.mlp.gate_proj.weight":
            torch.testing.assert_close(a[name], o[name], rtol=1e-3, atol=1e-3)
        else:  # F32: bit-exact, so q/k rows are back in HF's rotate-half order
            torch.testing.assert_close(a[name], o[name], rtol=0, atol=0, msg=name)

    tok = AutoTokenizer.from_pretrained(out)
    ids = [tok(t).input_ids for t in TEXTS]
    torch.testing.assert_close(_logits(mine, ids), _logits(ref, ids), rtol=0, atol=0)
    prompt = tok(TEXTS[0], return_tensors="pt").input_ids
    greedy = mine.generate(prompt, max_new_tokens=8, do_sample=False)
    assert greedy.tolist() == ref.generate(prompt, max_new_tokens=8, do_sample=False).tolist()


def test_tokenizer_and_chat_template_survive_the_round_trip(tiny_llama, tmp_path):
    path = write_tiny_gguf(tiny_llama, tmp_path / "tiny.gguf")
    out = convert_gguf(path, progress=False)
    orig = AutoTokenizer.from_pretrained(tiny_llama)
    mine = AutoTokenizer.from_pretrained(out)
    for text in [*TEXTS, "<|im_start|>user\nhi<|im_end|>"]:
        assert mine(text).input_ids == orig(text).input_ids, text
        assert mine.decode(mine(text).input_ids) == text
    msgs = [{"role": "user", "content": "the model reads"}]
    assert mine.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True) == (
        orig.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    )
    assert (mine.eos_token, mine.bos_token) == (orig.eos_token, orig.bos_token)


def _k_quant_blocks(qtype, rows: int, cols: int, seed: int) -> np.ndarray:
    """Random K-quant bytes with sane fp16 scales (gguf-py cannot quantize K types)."""
    block, size = gguf.GGML_QUANT_SIZES[qtype]
    rng = np.random.default_rng(seed)
    data = rng.integers(0, 256, size=(rows, cols // block, size), dtype=np.uint8)
    scale = np.float16(0.002).tobytes()
    if qtype == Q.Q4_K:  # d, dmin lead the block
        data[..., 0:2] = np.frombuffer(scale, np.uint8)
        data[..., 2:4] = np.frombuffer(scale, np.uint8)
    else:  # Q6_K: d ends the block
        data[..., -2:] = np.frombuffer(scale, np.uint8)
    return data.reshape(rows, -1)


def test_k_quants_dequantize_like_transformers(tmp_path):
    hf = build_tiny_model(tmp_path / "hf", "llama", intermediate_size=256)
    raw = {
        "blk.0.ffn_down.weight": (_k_quant_blocks(Q.Q4_K, 64, 256, 0), Q.Q4_K),
        "blk.1.ffn_down.weight": (_k_quant_blocks(Q.Q6_K, 64, 256, 1), Q.Q6_K),
    }
    path = write_tiny_gguf(hf, tmp_path / "k.gguf", raw_tensors=raw)
    mine = _state(AutoModelForCausalLM.from_pretrained(convert_gguf(path, progress=False)))
    ref = _state(_hf_gguf(path))
    for name in ("model.layers.0.mlp.down_proj.weight", "model.layers.1.mlp.down_proj.weight"):
        assert mine[name].abs().max() > 0
        torch.testing.assert_close(mine[name], ref[name], rtol=1e-6, atol=1e-7, msg=name)


@pytest.mark.parametrize("arch", ["qwen2", "qwen3", "gemma3"])
def test_other_architectures_round_trip_exactly(arch, tmp_path):
    overrides = {}
    if arch == "gemma3":  # llama.cpp's fixed pattern: every 6th layer global
        overrides = {
            "num_hidden_layers": 6,
            "layer_types": ["sliding_attention"] * 5 + ["full_attention"],
            "query_pre_attn_scalar": 32,  # llama.cpp: head_dim (below 27B)
            "final_logit_softcapping": None,  # llama.cpp writes none for Gemma 3
        }
    hf = build_tiny_model(tmp_path / "hf", arch, **overrides)
    path = write_tiny_gguf(hf, tmp_path / f"{arch}.gguf")
    out = convert_gguf(path, progress=False)
    mine = AutoModelForCausalLM.from_pretrained(out).eval()
    orig = AutoModelForCausalLM.from_pretrained(hf).eval()
    assert type(mine) is type(orig)
    a, o = _state(mine), _state(orig)
    assert a.keys() == o.keys()
    for name in a:
        torch.testing.assert_close(a[name], o[name], rtol=0, atol=0, msg=name)
    for key in ("num_key_value_heads", "rope_parameters", "sliding_window", "layer_types"):
        assert getattr(mine.config, key, None) == getattr(orig.config, key, None), key
    head_dim = orig.config.hidden_size // orig.config.num_attention_heads
    assert mine.config.head_dim == (getattr(orig.config, "head_dim", None) or head_dim)
    tok = AutoTokenizer.from_pretrained(out)
    ids = [tok(t).input_ids for t in TEXTS]
    torch.testing.assert_close(_logits(mine, ids), _logits(orig, ids), rtol=0, atol=0)


def _fails(path, *needles: str) -> None:
    with pytest.raises(GGUFError) as err:
        convert_gguf(path, progress=False)
    for needle in (str(path.name), *needles):
        assert needle in str(err.value), (needle, str(err.value))
    cache = gguf_cache_dir(path).parent
    assert not cache.exists() or not any(cache.iterdir()), "a failed conversion left files behind"


def test_truncated_and_garbage_files_are_rejected(tiny_llama, tmp_path):
    good = write_tiny_gguf(tiny_llama, tmp_path / "good.gguf").read_bytes()
    (tmp_path / "cut.gguf").write_bytes(good[: len(good) // 2])
    _fails(tmp_path / "cut.gguf", "corrupt or truncated")
    (tmp_path / "junk.gguf").write_bytes(b"not a gguf file at all" * 10)
    _fails(tmp_path / "junk.gguf", "not a readable GGUF")


def test_missing_unknown_and_bad_tensors_are_named(tiny_llama, tmp_path):
    _fails(
        write_tiny_gguf(tiny_llama, tmp_path / "m.gguf", drop=("blk.1.ffn_down.weight",)),
        "'blk.1.ffn_down.weight' is missing",
    )
    extra = {"blk.0.mystery.weight": (np.zeros((4, 4), np.float32).view(np.uint8), Q.F32)}
    _fails(
        write_tiny_gguf(tiny_llama, tmp_path / "x.gguf", raw_tensors=extra),
        "'blk.0.mystery.weight'",
    )
    q81 = {"blk.0.ffn_up.weight": (np.zeros((128, 2 * 40), np.uint8), Q.Q8_1)}
    _fails(
        write_tiny_gguf(tiny_llama, tmp_path / "q.gguf", raw_tensors=q81),
        "'blk.0.ffn_up.weight'",
        "Q8_1",
    )
    nan = np.full((128, 64), np.nan, np.float32).view(np.uint8)
    _fails(
        write_tiny_gguf(
            tiny_llama, tmp_path / "n.gguf", raw_tensors={"blk.0.ffn_up.weight": (nan, Q.F32)}
        ),
        "'blk.0.ffn_up.weight'",
        "NaN",
    )
    freqs = {"rope_freqs.weight": (np.ones(8, np.float32).view(np.uint8), Q.F32)}
    _fails(write_tiny_gguf(tiny_llama, tmp_path / "r.gguf", raw_tensors=freqs), "rope_freqs.weight")


def test_unsupported_architecture_is_named(tiny_llama, tmp_path):
    _fails(
        write_tiny_gguf(tiny_llama, tmp_path / "a.gguf", arch="mamba"), "'mamba'", "not supported"
    )


def test_second_start_comes_from_the_cache(tiny_llama, tmp_path, monkeypatch):
    path = write_tiny_gguf(tiny_llama, tmp_path / "tiny.gguf")
    t0 = time.perf_counter()
    first = resolve_model_path(path, progress=False)
    t1 = time.perf_counter()
    import leaflm.engine.gguf.convert as convert

    def no_reopen(*_a, **_k):
        raise AssertionError("a cached conversion must not reopen the GGUF file")

    monkeypatch.setattr(convert, "GGUFFile", no_reopen)
    second = resolve_model_path(str(path), progress=False)
    t2 = time.perf_counter()
    assert first == second and first.parent.parent == tmp_path / "cache"
    assert (t1 - t0) >= 10 * (t2 - t1), f"first {t1 - t0:.4f}s, cached {t2 - t1:.4f}s"
    print(f"tiny GGUF: first start {t1 - t0:.3f}s, cached start {t2 - t1:.5f}s")
    assert not [p for p in first.parent.iterdir() if p.name.startswith(".")]
    # A touched file is the same content, hence the same entry; an edited one is a new entry.
    os.utime(path, ns=(time.time_ns(), time.time_ns() + 10**9))
    assert gguf_cache_dir(path) == first
    with path.open("r+b") as fh:
        fh.seek(-1, os.SEEK_END)
        last = fh.read(1)
        fh.seek(-1, os.SEEK_END)
        fh.write(bytes([last[0] ^ 1]))
    assert gguf_cache_dir(path) != first


def test_copies_of_one_file_in_two_venvs_share_one_entry(tiny_llama, tmp_path, monkeypatch):
    (tmp_path / "venv-a").mkdir()
    venv_a = write_tiny_gguf(tiny_llama, tmp_path / "venv-a" / "model.gguf")
    venv_b = tmp_path / "venv-b" / "renamed.gguf"
    venv_b.parent.mkdir()
    shutil.copyfile(venv_a, venv_b)
    first = convert_gguf(venv_a, progress=False)
    import leaflm.engine.gguf.convert as convert

    def no_convert(*_a, **_k):
        raise AssertionError("the second venv's copy must reuse the first one's conversion")

    monkeypatch.setattr(convert, "GGUFFile", no_convert)
    assert convert_gguf(venv_b, progress=False) == first
    assert [p.name for p in (tmp_path / "cache" / "gguf").iterdir()] == [first.name]
    # Each path's digest is computed once and remembered: a later start does not re-read it.
    import leaflm.engine.gguf.cache as cache

    monkeypatch.setattr(cache, "sha256_file", no_convert)
    assert gguf_cache_dir(venv_a) == gguf_cache_dir(venv_b) == first


def test_cli_says_it_converts_with_a_progress_bar(tiny_llama, tmp_path):
    gguf_file = write_tiny_gguf(tiny_llama, tmp_path / "tiny.gguf")
    cmd = [sys.executable, "-m", "leaflm.engine.cli", "generate", "a", "--model", str(gguf_file),
           "--max-tokens", "2"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # LEAFLM_CACHE_DIR: this test's (fixture)
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"leaflm: converting tiny.gguf to float32 into {tmp_path / 'cache' / 'gguf'}" in (
        proc.stderr
    )
    assert "Converting tiny.gguf: 100%" in proc.stderr  # the tqdm bar
    assert "leaflm: converted in" in proc.stderr and "leaflm: ready in" in proc.stderr


def test_cache_command_lists_and_clears_entries(tiny_llama, tmp_path, capsys):
    from leaflm.engine.cli import main

    convert_gguf(write_tiny_gguf(tiny_llama, tmp_path / "m.gguf"), progress=False)
    assert main(["cache", "info"]) == 0
    info = capsys.readouterr().out
    assert str(tmp_path / "cache") in info and "conversion of m.gguf" in info, info
    assert main(["cache", "clear"]) == 0
    assert "MiB freed" in capsys.readouterr().out
    assert not list((tmp_path / "cache").rglob("*.safetensors"))
    main(["cache", "info"])
    assert "(0.0 MiB" in capsys.readouterr().out


def test_crashed_conversion_is_not_mistaken_for_a_cache_entry(tiny_llama, tmp_path, monkeypatch):
    path = write_tiny_gguf(tiny_llama, tmp_path / "tiny.gguf")
    import leaflm.engine.gguf.convert as convert

    def crash(*_a, **_k):
        raise KeyboardInterrupt

    monkeypatch.setattr(convert, "write_tokenizer", crash)
    with pytest.raises(KeyboardInterrupt):
        convert_gguf(path, progress=False)
    target = gguf_cache_dir(path)
    assert not target.exists()
    assert not list(target.parent.iterdir())
    # A process killed mid-conversion (no cleanup ran) leaves a temp dir; it is never used
    # as the cache entry and is swept by the next conversion.
    stale = target.parent / f".{target.name}.tmp-999999999"
    (stale / "config.json").parent.mkdir()
    (stale / "config.json").write_text("{}")
    monkeypatch.undo()
    monkeypatch.setenv("LEAFLM_CACHE_DIR", str(tmp_path / "cache"))
    assert (convert_gguf(path, progress=False) / "tokenizer.json").is_file()
    assert not stale.exists()


def test_model_source_errors(tmp_path):
    junk = tmp_path / "weights.bin"
    junk.write_bytes(b"\x00" * 16)
    with pytest.raises(ValueError, match="expected an HF model directory or a GGUF file"):
        resolve_model_path(junk)
    with pytest.raises(ValueError, match="smollm2-135m-instruct"):
        resolve_model_path("no-such-model")
