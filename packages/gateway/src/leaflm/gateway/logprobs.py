"""Engine logprobs (`list[dict[token_id, Logprob]]`) in OpenAI's and TGI's formats."""

from __future__ import annotations

from typing import Any


def token_text(tokenizer: Any, token_id: int, lp: Any | None, as_id: bool = False) -> str:
    """The token's text, or "token_id:<id>" (vLLM's return_tokens_as_token_ids)."""
    if as_id:
        return f"token_id:{token_id}"
    if lp is not None and getattr(lp, "decoded_token", None) is not None:
        return lp.decoded_token
    return tokenizer.decode([token_id])


def chosen_logprob(position: dict[int, Any] | None, token_id: int) -> float | None:
    if not position or token_id not in position:
        return None
    return float(position[token_id].logprob)


def _top(position: dict[int, Any]) -> list[tuple[int, Any]]:
    """Entries by rank (the sampled token may sit outside the top-k, then it goes last)."""
    return sorted(position.items(), key=lambda kv: (kv[1].rank is None, kv[1].rank or 0))


def completion_logprobs(
    tokenizer: Any,
    token_ids: list[int],
    positions: list[dict[int, Any] | None],
    num_top: int,
    offset: int = 0,
    as_ids: bool = False,
) -> dict[str, list[Any]]:
    """The legacy completions `logprobs` object for these tokens."""
    tokens: list[str] = []
    token_logprobs: list[float | None] = []
    tops: list[dict[str, float] | None] = []
    offsets: list[int] = []
    for tid, pos in zip(token_ids, positions, strict=False):
        lp = pos.get(tid) if pos else None
        text = token_text(tokenizer, tid, lp, as_ids)
        tokens.append(text)
        token_logprobs.append(chosen_logprob(pos, tid))
        offsets.append(offset)
        offset += len(text)
        if pos is None:
            tops.append(None)
            continue
        top: dict[str, float] = {}
        for other, olp in _top(pos)[: max(num_top, 1)]:
            top.setdefault(token_text(tokenizer, other, olp, as_ids), float(olp.logprob))
        tops.append(top)
    return {
        "text_offset": offsets,
        "token_logprobs": token_logprobs,
        "tokens": tokens,
        "top_logprobs": tops,
    }


def _entry(tokenizer: Any, token_id: int, lp: Any, as_id: bool) -> dict[str, Any]:
    text = token_text(tokenizer, token_id, lp, as_id)
    return {"token": text, "logprob": float(lp.logprob), "bytes": list(text.encode("utf-8"))}


def chat_logprobs(
    tokenizer: Any,
    token_ids: list[int],
    positions: list[dict[int, Any]],
    num_top: int,
    as_ids: bool = False,
) -> dict[str, Any]:
    """The chat `logprobs` object: content entries with their top alternatives."""
    content = []
    for tid, pos in zip(token_ids, positions, strict=False):
        entry = _entry(tokenizer, tid, pos[tid], as_ids)
        ranked = [(o, lp) for o, lp in _top(pos) if lp.rank is not None][:num_top]
        entry["top_logprobs"] = [_entry(tokenizer, o, lp, as_ids) for o, lp in ranked]
        content.append(entry)
    return {"content": content, "refusal": None}


def prompt_logprobs_json(positions: list[dict[int, Any] | None] | None) -> list[Any] | None:
    """vLLM's `prompt_logprobs`: per prompt position, token id -> logprob, rank, text."""
    if positions is None:
        return None
    return [
        None
        if pos is None
        else {
            str(tid): {
                "logprob": float(lp.logprob),
                "rank": lp.rank,
                "decoded_token": lp.decoded_token,
            }
            for tid, lp in pos.items()
        }
        for pos in positions
    ]
