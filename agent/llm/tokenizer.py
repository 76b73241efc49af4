"""Tokenizer for GGUF byte-level BPE models, the ChatML chat template, and streaming detokenization.

The tokenizer is a ``tokenizers`` Tokenizer built from the GGUF's vocabulary and merges. SmolLM's
pre-tokenizer splits every digit on its own before the GPT-2 byte-level regex (llama.cpp calls it
``smollm``); tools that rebuild the tokenizer from GGUF metadata drop that step, so we restore it.

The chat template is rendered in Python (no template engine, no evaluation of template text): the
GGUF's Jinja ChatML template is recognised and reduced to ``chat_template = "chatml"`` plus its default
system prompt.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from agent.errors import BuildError, InvalidParams, LoadError

CHAT_TEMPLATES = ("chatml", "none")
ROLES = ("system", "user", "assistant")
_DEFAULT_SYSTEM = re.compile(r"<\|im_start\|>system(?:\\n|\n)(.*?)<\|im_end\|>", re.DOTALL)


def build_tokenizer(tokens: Sequence[str], merges: Sequence[str], special_ids: Sequence[int],
                    pre: str = "smollm") -> Any:
    """A ``tokenizers.Tokenizer`` for a GPT-2 style byte-level BPE vocabulary."""
    try:
        from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
    except ImportError:
        raise BuildError("building the tokenizer needs 'tokenizers': pip install 'ondevice-agent[build]'") from None
    vocab = {t: i for i, t in enumerate(tokens)}
    if len(vocab) != len(tokens):
        raise BuildError(f"vocabulary has duplicate tokens ({len(tokens) - len(vocab)} duplicates)")
    pairs = []
    for m in merges:
        a, sep, b = m.partition(" ")
        if not sep or not a or not b:
            raise BuildError(f"malformed BPE merge {m!r}")
        pairs.append((a, b))
    try:
        tok = Tokenizer(models.BPE(vocab=vocab, merges=pairs, fuse_unk=False))
    except Exception as e:  # noqa: BLE001 - tokenizers raises plain exceptions
        raise BuildError(f"cannot build the BPE tokenizer: {e}") from None
    steps = [pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)]
    if pre in ("smollm", "digits"):
        steps.insert(0, pre_tokenizers.Digits(individual_digits=True))
    tok.pre_tokenizer = pre_tokenizers.Sequence(steps)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(tokens[i], special=True, normalized=False) for i in special_ids])
    return tok


def load_tokenizer(path: Path) -> Any:
    try:
        from tokenizers import Tokenizer
    except ImportError:
        raise LoadError("serving a causal-lm needs the 'tokenizers' package") from None
    try:
        return Tokenizer.from_file(str(path))
    except Exception as e:  # noqa: BLE001
        raise LoadError(f"{path}: cannot load tokenizer: {e}") from None


def chat_settings_from_gguf_template(template: str | None) -> dict[str, Any]:
    """``{"chat_template": "chatml", "default_system_prompt": ...}`` for a ChatML Jinja template."""
    if template and "<|im_start|>" in template and "<|im_end|>" in template:
        m = _DEFAULT_SYSTEM.search(template)
        return {"chat_template": "chatml", "default_system_prompt": m.group(1) if m else ""}
    return {"chat_template": "none", "default_system_prompt": ""}


def check_messages(messages: Any) -> list[dict[str, str]]:
    if not isinstance(messages, Sequence) or isinstance(messages, (str, bytes)) or not messages:
        raise InvalidParams("messages: expected a non-empty list of {role, content}")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, Mapping):
            raise InvalidParams(f"messages[{i}]: expected an object with role and content, got {type(m).__name__}")
        role, content = m.get("role"), m.get("content")
        if role not in ROLES:
            raise InvalidParams(f"messages[{i}].role: expected one of {', '.join(ROLES)}, got {role!r}")
        if not isinstance(content, str):
            raise InvalidParams(f"messages[{i}].content: expected a string, got {type(content).__name__}")
        out.append({"role": role, "content": content})
    return out


def render_chat(messages: Any, template: str = "chatml", default_system_prompt: str = "",
                add_generation_prompt: bool = True) -> str:
    """The prompt text for chat ``messages`` (SmolLM2's ChatML: a default system turn when none is given)."""
    msgs = check_messages(messages)
    if template == "none":
        text = "".join(m["content"] + "\n" for m in msgs)
        return text
    if template != "chatml":
        raise InvalidParams(f"chat_template: expected one of {', '.join(CHAT_TEMPLATES)}, got {template!r}")
    parts = []
    if msgs[0]["role"] != "system" and default_system_prompt:
        parts.append(f"<|im_start|>system\n{default_system_prompt}<|im_end|>\n")
    for m in msgs:
        parts.append(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n")
    if add_generation_prompt:
        parts.append("<|im_start|>assistant\n")
    return "".join(parts)


class StreamDecoder:
    """Turns token ids into text increments; never splits a multi-byte UTF-8 character.

    Keeps a small window (prefix_offset..read_offset) so the cost per token stays constant; text is
    released only when it no longer ends in U+FFFD (an incomplete byte sequence).
    """

    def __init__(self, tokenizer: Any, skip_special_tokens: bool = True) -> None:
        self._tok = tokenizer
        self._skip = skip_special_tokens
        self._ids: list[int] = []
        self._prefix = 0
        self._read = 0

    def _decode(self, ids: list[int]) -> str:
        return str(self._tok.decode(ids, skip_special_tokens=self._skip))

    def push(self, token_id: int) -> str:
        self._ids.append(int(token_id))
        before = self._decode(self._ids[self._prefix:self._read])
        now = self._decode(self._ids[self._prefix:])
        if len(now) > len(before) and not now.endswith("\ufffd"):
            self._prefix, self._read = self._read, len(self._ids)
            return now[len(before):]
        return ""

    def flush(self) -> str:
        """Whatever is still held back (e.g. a trailing incomplete byte sequence, as U+FFFD)."""
        before = self._decode(self._ids[self._prefix:self._read])
        now = self._decode(self._ids[self._prefix:])
        self._prefix = self._read = len(self._ids)
        return now[len(before):]
