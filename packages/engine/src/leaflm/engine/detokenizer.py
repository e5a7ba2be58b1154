"""Incremental detokenization that never emits broken UTF-8.

Decoding a growing token list from scratch every step is quadratic, and decoding tokens one
by one breaks multi-byte characters and tokenizers that merge spaces. As vLLM does, we keep
two offsets into the token list: text up to `read_offset` was already emitted; decoding the
window `[prefix_offset:]` and subtracting the window `[prefix_offset:read_offset]` gives the
new text with the right context. While the new text ends in U+FFFD (an incomplete UTF-8
sequence) it is held back until the next token completes it.
"""

from __future__ import annotations

from typing import Any

_CONTEXT_TOKENS = 5  # prompt tokens decoded as left context (leading-space handling)


class IncrementalDetokenizer:
    """Turns a sequence's new tokens into new text, one step at a time."""

    def __init__(
        self, tokenizer: Any, prompt_token_ids: list[int], skip_special_tokens: bool = True
    ) -> None:
        self.tokenizer = tokenizer
        self.skip_special_tokens = skip_special_tokens
        self.tokens: list[int] = list(prompt_token_ids[-_CONTEXT_TOKENS:])
        self.prefix_offset = 0
        self.read_offset = len(self.tokens)

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=self.skip_special_tokens)

    def step(self, new_token_ids: list[int]) -> str:
        """Append tokens; return the text they complete (possibly empty)."""
        self.tokens.extend(new_token_ids)
        prefix_text = self._decode(self.tokens[self.prefix_offset : self.read_offset])
        new_text = self._decode(self.tokens[self.prefix_offset :])
        if len(new_text) > len(prefix_text) and not new_text.endswith("\ufffd"):
            delta = new_text[len(prefix_text) :]
            self.prefix_offset = self.read_offset
            self.read_offset = len(self.tokens)
            return delta
        return ""

    def flush(self) -> str:
        """At the end: the held-back text, minus a trailing incomplete character."""
        prefix_text = self._decode(self.tokens[self.prefix_offset : self.read_offset])
        new_text = self._decode(self.tokens[self.prefix_offset :])
        self.prefix_offset = self.read_offset = len(self.tokens)
        return new_text[len(prefix_text) :].rstrip("\ufffd")
