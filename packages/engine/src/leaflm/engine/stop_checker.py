"""When a sequence stops: EOS, stop token ids, stop strings, max_tokens, max_model_len.

Stop strings may span tokens, so they are searched in the decoded text around the newest
piece; anything after the matched string is cut from the output, and the string itself too
unless `include_stop_str_in_output`. While a sequence
runs, the last `max(len(stop)) - 1` characters are held back from streamed output, because
they could still turn out to be the start of a stop string.
"""

from __future__ import annotations

from leaflm.engine.sequence import Sequence


def stop_by_token(seq: Sequence) -> bool:
    """Finish `seq` if its newest token is EOS (unless ignore_eos) or a stop token id.

    Checked before detokenizing: the stopping token stays in `token_ids` but adds no text.
    """
    params = seq.request.params
    if seq.num_output_tokens < params.min_tokens:
        return False
    token = seq.token_ids[-1]
    if not params.ignore_eos and token in seq.request.eos_token_ids:
        seq.finish_reason, seq.stop_reason = "stop", None
        return True
    if token in params.stop_token_ids:
        seq.finish_reason, seq.stop_reason = "stop", token
        return True
    return False


def check_stop(seq: Sequence, new_text: str, max_model_len: int) -> None:
    """Finish `seq` on a stop string (trimming it from `seq.text`) or on a length limit."""
    params = seq.request.params
    if params.stop and new_text and seq.num_output_tokens >= params.min_tokens:
        hit = _find_stop(seq.text, len(new_text), params.stop)
        if hit is not None:
            index, stop = hit
            keep = len(stop) if params.include_stop_str_in_output else 0
            seq.text = seq.text[: index + keep]
            seq.finish_reason, seq.stop_reason = "stop", stop
            return
    max_tokens = params.max_tokens
    if (max_tokens is not None and seq.num_output_tokens >= max_tokens) or (
        seq.num_tokens >= max_model_len
    ):
        seq.finish_reason, seq.stop_reason = "length", None


def _find_stop(text: str, new_len: int, stops: list[str]) -> tuple[int, str] | None:
    """The earliest stop string that ends within the newest `new_len` characters."""
    best: tuple[int, str] | None = None
    for stop in stops:
        start = max(0, len(text) - new_len - len(stop) + 1)
        index = text.find(stop, start)
        if index != -1 and (best is None or index < best[0]):
            best = (index, stop)
    return best


def stop_holdback(seq: Sequence) -> int:
    """How many trailing characters of a running sequence's text to hold back."""
    stops = seq.request.params.stop
    if not stops or seq.finish_reason is not None:
        return 0
    return max(len(s) for s in stops) - 1
