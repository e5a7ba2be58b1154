"""Structured outputs (JSON schema, JSON object, regex, choice, EBNF grammar) via xgrammar.

Why xgrammar: it is the default structured-output backend of vLLM and SGLang, compiles a
JSON schema or regex into a token-level pushdown automaton with a precomputed mask cache
(cheap per-step masks), installs from PyPI without touching torch, and has a plain Python
API (`GrammarCompiler`, `GrammarMatcher`, a packed int32 bitmask) that works on CPU tensors.

Data flow:
- `LLMEngine.add_request` compiles the request's grammar once (`GrammarCache`, keyed by
  the kind and the spec, so a repeated schema is not compiled again); a bad schema, regex or
  grammar is a ValueError naming the problem.
- Each Sequence gets its own `GrammarMatcher` the first time it is sampled; before every
  step the matcher catches up with the sequence's output tokens. A forked sibling (n > 1)
  or a sequence recomputed after preemption therefore rebuilds its state from its tokens.
- The sampler fills one bitmask tensor `[constrained rows, ceil(V / 32)]` and applies it to
  those rows of the logits before sampling; rows without a grammar are never touched.
"""

from __future__ import annotations

import json
import logging
import re
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from leaflm import kernels

if TYPE_CHECKING:
    from leaflm.engine.sequence import Sequence

logger = logging.getLogger(__name__)

_KINDS = ("json", "regex", "choice", "grammar", "json_object")


@dataclass
class StructuredOutputsParams:
    """What the output must match; exactly one field is set (vLLM's names)."""

    json: str | dict | None = None
    regex: str | None = None
    choice: list[str] | None = None
    grammar: str | None = None
    json_object: bool | None = None

    def __post_init__(self) -> None:
        given = [k for k in _KINDS if getattr(self, k) not in (None, False)]
        if len(given) != 1:
            raise ValueError(
                "structured_outputs must set exactly one of json, regex, choice, grammar, "
                f"json_object; got {given or 'none'}"
            )
        if self.json is not None and not isinstance(self.json, (str, dict)):
            raise ValueError("structured_outputs.json must be a JSON schema (a dict or a string)")
        if isinstance(self.json, str):
            try:
                json.loads(self.json)
            except ValueError as exc:
                raise ValueError(f"structured_outputs.json is not valid JSON: {exc}") from None
        for name in ("regex", "grammar"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, str) or not value):
                raise ValueError(f"structured_outputs.{name} must be a non-empty string")
        if self.choice is not None and (
            not isinstance(self.choice, (list, tuple))
            or not self.choice
            or not all(isinstance(c, str) and c for c in self.choice)
        ):
            raise ValueError(
                "structured_outputs.choice must be a non-empty list of non-empty strings"
            )
        if self.json_object is not None and not isinstance(self.json_object, bool):
            raise ValueError("structured_outputs.json_object must be a boolean")

    @property
    def kind(self) -> str:
        return next(k for k in _KINDS if getattr(self, k) not in (None, False))

    def cache_key(self) -> tuple[str, str]:
        value = getattr(self, self.kind)
        if self.kind == "json":  # one key for a schema however it is spelled
            schema = json.loads(value) if isinstance(value, str) else value
            value = json.dumps(schema, sort_keys=True)
        elif isinstance(value, (list, tuple)):
            value = json.dumps(list(value))
        return self.kind, str(value)


def choice_grammar(choices: list[str]) -> str:
    """EBNF accepting exactly one of `choices` (JSON string escapes are EBNF's too)."""
    return "root ::= " + " | ".join(json.dumps(c, ensure_ascii=False) for c in choices)


class GrammarCache:
    """Compiles grammars for one tokenizer and keeps them, keyed by spec (thread-safe)."""

    def __init__(self, tokenizer: Any, vocab_size: int, stop_token_ids: list[int]) -> None:
        self.tokenizer = tokenizer
        self.vocab_size = vocab_size
        self.stop_token_ids = stop_token_ids
        self._compiler: Any = None
        self._compiled: dict[tuple[str, str], Any] = {}
        self._lock = threading.Lock()

    def _get_compiler(self) -> Any:
        if self._compiler is None:  # tokenizer analysis takes a while: only when first needed
            import xgrammar as xgr

            info = xgr.TokenizerInfo.from_huggingface(
                self.tokenizer, vocab_size=self.vocab_size, stop_token_ids=self.stop_token_ids
            )
            self._compiler = xgr.GrammarCompiler(info, max_threads=1)
        return self._compiler

    def compile(self, spec: StructuredOutputsParams) -> Any:
        """The compiled grammar of `spec`; ValueError naming what is wrong with it."""
        key = spec.cache_key()
        hit = self._compiled.get(key)  # a hit never waits for another thread's compile
        if hit is not None:
            return hit
        with self._lock:
            hit = self._compiled.get(key)
            if hit is not None:
                return hit
            compiler = self._get_compiler()
            kind = spec.kind
            try:
                if kind == "json" and spec.json is not None:
                    compiled = _compile_json_schema(compiler, spec.json)
                elif kind == "json_object":  # OpenAI's json_object: any JSON object
                    compiled = _compile_json_schema(compiler, {"type": "object"})
                elif kind == "regex":
                    compiled = compiler.compile_regex(spec.regex)
                elif kind == "choice" and spec.choice is not None:
                    compiled = compiler.compile_grammar(choice_grammar(list(spec.choice)))
                else:
                    compiled = compiler.compile_grammar(spec.grammar)
            except Exception as exc:  # xgrammar raises RuntimeError / its own error types
                lines = str(exc).strip().splitlines()
                # Drop xgrammar's "[hh:mm:ss] /path/file.cc:123: " prefix.
                detail = re.sub(r"^\[[\d:]+\] \S+:\d+: ", "", lines[-1]) if lines else ""
                detail = detail or type(exc).__name__
                raise ValueError(f"invalid structured_outputs.{kind}: {detail}") from None
            self._compiled[key] = compiled
            return compiled


# xgrammar's JSON string characters are too loose: a length-limited string admits raw
# control characters (JSON forbids them), and every string admits UTF-8-encoded surrogates
# (U+D800-DFFF: invalid UTF-8, decoded as three U+FFFD, which broke maxLength). Narrow both.
_LOOSE_STRING_CHARS = (r"[^\"\\\r\n]", r"[^\0-\x1f\"\\\r\n]")
_JSON_STRING_CHAR = r"[^\0-\x1f\"\\\uD800-\uDFFF]"


def _compile_json_schema(compiler: Any, schema: str | dict) -> Any:
    import xgrammar as xgr

    # Compact JSON (no free whitespace): with it, small models pad with spaces forever.
    ebnf = str(xgr.Grammar.from_json_schema(schema, any_whitespace=False))
    fixed = ebnf
    for loose in _LOOSE_STRING_CHARS:
        fixed = fixed.replace(loose, _JSON_STRING_CHAR)
    if fixed == ebnf:
        return compiler.compile_json_schema(schema, any_whitespace=False)
    return compiler.compile_grammar(fixed)


class _SeqGrammar:
    """A sequence's matcher and how many of its output tokens it has consumed."""

    __slots__ = ("consumed", "failed", "matcher")

    def __init__(self, compiled: Any) -> None:
        import xgrammar as xgr

        self.matcher = xgr.GrammarMatcher(compiled)
        self.consumed = 0
        self.failed = False


def _catch_up(seq: Sequence) -> _SeqGrammar:
    state = seq.grammar_state
    if state is None:
        state = seq.grammar_state = _SeqGrammar(seq.request.grammar)
    out = seq.token_ids
    start = seq.num_prompt_tokens + state.consumed
    for token in out[start:]:
        if state.matcher.is_terminated():
            break
        if not state.matcher.accept_token(token):  # masked sampling never gets here
            logger.warning(
                "request %s: token %d does not match its grammar; no longer constrained",
                seq.request.request_id, token,
            )  # fmt: skip
            state.failed = True
            break
    state.consumed = len(out) - seq.num_prompt_tokens
    return state


def apply_grammar_masks(logits: torch.Tensor, seqs: list[Sequence]) -> None:
    """Mask the logits rows of grammar-constrained `seqs` with one batched bitmask."""
    import xgrammar as xgr

    rows, states = [], []
    for i, seq in enumerate(seqs):
        if seq.request.grammar is None:
            continue
        state = _catch_up(seq)
        if state.failed or state.matcher.is_terminated():
            continue
        rows.append(i)
        states.append(state)
    if not rows:
        return
    bitmask = xgr.allocate_token_bitmask(len(rows), logits.shape[1])
    for j, state in enumerate(states):
        state.matcher.fill_next_token_bitmask(bitmask, j)
    if logits.device.type == "cpu":  # one pass in C (see leaflm.kernels.apply_token_bitmask)
        kernels.apply_token_bitmask(logits, bitmask, torch.tensor(rows))
    elif len(rows) == logits.shape[0]:
        xgr.apply_token_bitmask_inplace(logits, bitmask.to(logits.device))
    else:
        sub = logits[rows]
        xgr.apply_token_bitmask_inplace(sub, bitmask.to(logits.device))
        logits[rows] = sub
