"""Answer-level quality of a decoder variant (see docs/LLM.md, "Quality that predicts answers").

Two shipped data sets (``agent/llm/data/``, package data; a recipe may name its own files):

- ``chat_prompts.jsonl``: one chat prompt per line, ``{"id": "p001", "messages": [{"role", "content"}, ...]}``.
  **Greedy agreement**: each prompt is answered greedily (chat template, temperature 0) for
  ``agreement_tokens`` (32) tokens by the variant and by the reference. A generation that stops early
  (end of turn) is padded with an end marker, so two answers that end at the same place agree.
  ``agreement`` = share of prompts whose first 32 tokens are identical; ``mean_prefix`` = mean length
  of the common prefix, in tokens (0..32).
- ``questions.jsonl``: ``{"id": "q001", "question": "...", "answers": ["Paris", ...]}``. Each question is
  asked as a chat user turn and answered greedily for ``answer_tokens`` (24) tokens. **Exact match**
  (normalised containment): the answer is right when some accepted answer, normalised, occurs in the
  normalised reply as a whole run of words. Normalising = Unicode NFKD without accents, lower case,
  split into words of a-z/0-9 (a number keeps its decimal point or digit grouping: "18.0", "5,000"),
  the words "a", "an", "the" dropped, joined by single spaces.

``quality_rel`` (what the policy ranks) = ``(agreement + min(1, exact_match / exact_match_ref)) / 2``.
Pure functions here; the generation runs in :mod:`agent.llm.evaluate` (a measurement subprocess).
"""

from __future__ import annotations

import hashlib
import json
import re
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from agent.errors import ConfigError

SCORING_VERSION = 2           # bump when normalisation, matching or the formula change (re-measures)
PROMPTS = "chat_prompts.jsonl"
QUESTIONS = "questions.jsonl"
AGREEMENT_TOKENS = 32
ANSWER_TOKENS = 24
END = -1                      # padding after a generation that stopped (end of turn) before the limit
_ROLES = ("system", "user", "assistant")
_ARTICLES = frozenset({"a", "an", "the"})
_WORD = re.compile(r"[0-9a-z]+(?:[.,][0-9]+)*")   # a decimal or grouped number stays one word: 18.0, 5,000


@dataclass(frozen=True)
class Prompt:
    id: str
    messages: tuple[Mapping[str, str], ...]


@dataclass(frozen=True)
class Question:
    id: str
    question: str
    answers: tuple[str, ...]


def data_file(name: str) -> Path:
    """A shipped data file (``agent/llm/data/<name>``)."""
    return Path(str(resources.files("agent.llm").joinpath("data", name)))


def _jsonl(path: Path) -> list[tuple[int, dict[str, Any]]]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read the data file: {e}", file=str(path)) from None
    rows: list[tuple[int, dict[str, Any]]] = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except ValueError as e:
            raise ConfigError(f"expected one JSON object per line, got invalid JSON ({e.args[0]})",
                              file=str(path), line=n) from None
        if not isinstance(obj, dict):
            raise ConfigError(f"expected a JSON object, got {type(obj).__name__}", file=str(path), line=n)
        rows.append((n, obj))
    if not rows:
        raise ConfigError("expected at least one line, got an empty file", file=str(path))
    return rows


def _id(path: Path, n: int, obj: dict[str, Any], seen: set[str]) -> str:
    i = obj.get("id")
    if not isinstance(i, str) or not i:
        raise ConfigError(f"expected a non-empty string, got {i!r}", file=str(path), line=n, key="id")
    if i in seen:
        raise ConfigError(f"duplicate id {i!r}", file=str(path), line=n, key="id")
    seen.add(i)
    return i


def _only(path: Path, n: int, obj: dict[str, Any], keys: set[str]) -> None:
    extra = sorted(set(obj) - keys)
    if extra:
        raise ConfigError(f"unknown key; expected only {sorted(keys)}", file=str(path), line=n, key=extra[0])


def load_prompts(path: Path | None = None) -> list[Prompt]:
    """The chat prompts (ConfigError ``file:line: key: ...`` on a malformed line)."""
    path = path or data_file(PROMPTS)
    out: list[Prompt] = []
    seen: set[str] = set()
    for n, obj in _jsonl(path):
        _only(path, n, obj, {"id", "messages"})
        pid = _id(path, n, obj, seen)
        msgs = obj.get("messages")
        if not isinstance(msgs, list) or not msgs:
            raise ConfigError(f"expected a non-empty list of {{role, content}}, got {msgs!r}"[:200],
                              file=str(path), line=n, key="messages")
        for j, m in enumerate(msgs):
            if not isinstance(m, dict) or set(m) != {"role", "content"} or m["role"] not in _ROLES \
                    or not isinstance(m["content"], str) or not m["content"]:
                raise ConfigError(f"expected {{\"role\": {'|'.join(_ROLES)}, \"content\": non-empty text}}, "
                                  f"got {m!r}"[:200], file=str(path), line=n, key=f"messages[{j}]")
        if msgs[-1]["role"] != "user":
            raise ConfigError("expected the last message to be the user's", file=str(path), line=n, key="messages")
        out.append(Prompt(pid, tuple(msgs)))
    return out


def load_questions(path: Path | None = None) -> list[Question]:
    """The short-answer questions (ConfigError ``file:line: key: ...`` on a malformed line)."""
    path = path or data_file(QUESTIONS)
    out: list[Question] = []
    seen: set[str] = set()
    for n, obj in _jsonl(path):
        _only(path, n, obj, {"id", "question", "answers"})
        qid = _id(path, n, obj, seen)
        q = obj.get("question")
        if not isinstance(q, str) or not q.strip():
            raise ConfigError(f"expected a non-empty string, got {q!r}", file=str(path), line=n, key="question")
        ans = obj.get("answers")
        if not isinstance(ans, list) or not ans or not all(isinstance(a, str) for a in ans):
            raise ConfigError(f"expected a non-empty list of strings, got {ans!r}"[:200],
                              file=str(path), line=n, key="answers")
        for a in ans:
            if not normalise(a):
                raise ConfigError(f"expected an answer with letters or digits, got {a!r}",
                                  file=str(path), line=n, key="answers")
        out.append(Question(qid, q, tuple(ans)))
    return out


def data_fingerprint(prompts: Path, questions: Path, agreement_tokens: int, answer_tokens: int) -> str:
    """Changes when the data or the lengths do (keys the cached reference outputs)."""
    h = hashlib.sha256(f"{agreement_tokens}/{answer_tokens}".encode())
    for p in (prompts, questions):
        h.update(hashlib.sha256(p.read_bytes()).digest())
    return h.hexdigest()


# -- answers ------------------------------------------------------------------------------------------
def normalise(text: str) -> str:
    """Lower case, accents stripped, words of a-z/0-9 (numbers keep "." and "," between digits), articles
    dropped, single spaces."""
    t = "".join(c for c in unicodedata.normalize("NFKD", text) if not unicodedata.combining(c)).lower()
    return " ".join(w for w in _WORD.findall(t) if w not in _ARTICLES)


def answer_correct(reply: str, answers: Sequence[str]) -> bool:
    """Some accepted answer, normalised, occurs in the normalised reply as a whole run of words."""
    hay = f" {normalise(reply)} "
    return any(f" {normalise(a)} " in hay for a in answers if normalise(a))


def exact_match(replies: Sequence[str], questions: Sequence[Question]) -> float:
    if len(replies) != len(questions):
        raise ValueError(f"{len(replies)} replies for {len(questions)} questions")
    if not questions:
        raise ValueError("no questions")
    return sum(answer_correct(r, q.answers) for r, q in zip(replies, questions, strict=True)) / len(questions)


# -- agreement ----------------------------------------------------------------------------------------
def padded(tokens: Sequence[int], stopped: bool, n: int) -> list[int]:
    """The first ``n`` tokens; a generation that stopped early is padded with END (it ended there)."""
    out = [int(t) for t in tokens[:n]]
    if stopped and len(out) < n:
        out += [END] * (n - len(out))
    return out


def matched_prefix(ref: Sequence[int], var: Sequence[int]) -> int:
    k = 0
    for a, b in zip(ref, var, strict=True):
        if a != b:
            break
        k += 1
    return k


def agreement(ref: Sequence[Sequence[int]], var: Sequence[Sequence[int]], n: int = AGREEMENT_TOKENS
              ) -> tuple[float, float]:
    """(share of prompts whose first ``n`` tokens match, mean matched prefix in tokens).

    Sequences are already :func:`padded`; one shorter than ``n`` (a generation cut short without an
    end of turn) matches only up to its length.
    """
    if len(ref) != len(var):
        raise ValueError(f"{len(var)} sequences for {len(ref)} reference sequences")
    if not ref:
        raise ValueError("no sequences")
    prefixes = [min(n, matched_prefix(a[:n], b[:n])) for a, b in zip(ref, var, strict=True)]
    full = sum(1 for p in prefixes if p == n)
    return full / len(ref), sum(prefixes) / len(ref)


def em_rel(em: float, em_ref: float) -> float:
    """Exact match relative to the reference, capped at 1 (a variant is never better than what it
    approximates); 1.0 when the reference answers nothing right (nothing to lose)."""
    return min(1.0, em / em_ref) if em_ref > 0 else 1.0


def quality_rel(agree: float, em: float, em_ref: float) -> float:
    """The figure the policy ranks: ``(agreement + em_rel) / 2``."""
    return (agree + em_rel(em, em_ref)) / 2
