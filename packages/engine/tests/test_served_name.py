"""The name clients address a model by (OpenAI `model`) when `--served-model-name` is not given."""

from __future__ import annotations

from pathlib import Path

from leaflm.engine.model_source import default_served_name


def test_embedded_default_and_known_names_answer_to_their_titles() -> None:
    assert default_served_name(None) == "SmolLM2-135M-Instruct"
    assert default_served_name("smollm2-135m-instruct") == "SmolLM2-135M-Instruct"
    assert default_served_name("gemma3-270m") == "gemma-3-270m"


def test_files_and_directories_keep_what_the_user_passed(tmp_path: Path) -> None:
    gguf = tmp_path / "my-model.Q8_0.gguf"
    gguf.write_bytes(b"GGUF")
    assert default_served_name(str(gguf)) == "my-model.Q8_0"
    assert default_served_name(str(tmp_path)) == str(tmp_path)
    # a directory that happens to carry a known model's name is still that directory
    named = tmp_path / "gemma3-270m"
    named.mkdir()
    assert default_served_name(str(named)) == str(named)
