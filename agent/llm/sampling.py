"""Generation parameters (validated) and the next-token sampler."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from agent.errors import InvalidParams

MAX_STOPS = 8


@dataclass(frozen=True)
class GenerationParams:
    """max_tokens: new tokens at most; temperature 0 = greedy (deterministic); top_k 0 = off;
    top_p 1.0 = off; seed makes sampling reproducible; stop: strings that end the text (not included)."""

    max_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    stop: tuple[str, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        def bad(key: str, expected: str, got: Any) -> InvalidParams:
            return InvalidParams(f"{key}: expected {expected}, got {got!r}")

        if isinstance(self.max_tokens, bool) or not isinstance(self.max_tokens, int) or self.max_tokens < 1:
            raise bad("max_tokens", "an integer >= 1", self.max_tokens)
        if isinstance(self.temperature, bool) or not isinstance(self.temperature, (int, float)) \
                or not 0.0 <= self.temperature <= 100.0:
            raise bad("temperature", "a number in [0, 100]", self.temperature)
        if isinstance(self.top_p, bool) or not isinstance(self.top_p, (int, float)) or not 0.0 < self.top_p <= 1.0:
            raise bad("top_p", "a number in (0, 1]", self.top_p)
        if isinstance(self.top_k, bool) or not isinstance(self.top_k, int) or self.top_k < 0:
            raise bad("top_k", "an integer >= 0", self.top_k)
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0):
            raise bad("seed", "a non-negative integer or null", self.seed)
        if not isinstance(self.stop, tuple) or len(self.stop) > MAX_STOPS or \
                not all(isinstance(s, str) and s for s in self.stop):
            raise bad("stop", f"up to {MAX_STOPS} non-empty strings", self.stop)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> GenerationParams:
        """From a request's JSON object; unknown keys are an error."""
        if d is None:
            return cls()
        if not isinstance(d, Mapping):
            raise InvalidParams(f"params: expected an object, got {type(d).__name__}")
        unknown = set(d) - set(cls.__dataclass_fields__)
        if unknown:
            raise InvalidParams(f"params: unknown keys {sorted(unknown)}; known: {sorted(cls.__dataclass_fields__)}")
        kw = dict(d)
        stop = kw.get("stop")
        if isinstance(stop, str):
            kw["stop"] = (stop,)
        elif isinstance(stop, list):
            kw["stop"] = tuple(stop)
        elif stop is None:
            kw.pop("stop", None)
        return cls(**kw)


class Sampler:
    """Picks the next token from logits. Greedy when temperature is 0; else temperature, top-k, top-p
    with a numpy PCG64 generator seeded from ``seed`` (same seed, same tokens)."""

    def __init__(self, params: GenerationParams) -> None:
        self.p = params
        self.rng = np.random.default_rng(params.seed)

    def __call__(self, logits: np.ndarray) -> int:
        p = self.p
        if p.temperature == 0.0:
            return int(np.argmax(logits))
        x = logits.astype(np.float64) / p.temperature
        if p.top_k and p.top_k < x.shape[0]:
            idx = np.argpartition(-x, p.top_k - 1)[: p.top_k]
        else:
            idx = np.arange(x.shape[0])
        vals = x[idx]
        order = np.argsort(-vals, kind="stable")
        idx, vals = idx[order], vals[order]
        probs = np.exp(vals - vals[0])
        probs /= probs.sum()
        if p.top_p < 1.0:
            keep = int(np.searchsorted(np.cumsum(probs), p.top_p) + 1)
            idx, probs = idx[:keep], probs[:keep] / probs[:keep].sum()
        return int(idx[self.rng.choice(len(idx), p=probs)])
