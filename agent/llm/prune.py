"""Layer pruning: rank a llama's layers by how much dropping each one alone hurts perplexity on
calibration text (numpy reference forward; no torch), and pick the ones to drop."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from agent.errors import BuildError
from agent.llm.gguf_source import LlamaConfig, LlamaWeights
from agent.llm.reference import ReferenceLlama


def perplexity(cfg: LlamaConfig, w: LlamaWeights, windows: Sequence[Sequence[int]],
               keep: Sequence[int] | None = None) -> float:
    ref = ReferenceLlama(cfg, w, list(keep) if keep is not None else None)
    total, count = 0.0, 0
    for win in windows:
        ref.reset()
        x = ref.forward(list(win))[:-1].astype(np.float64)
        m = x.max(-1, keepdims=True)
        lse = m[:, 0] + np.log(np.exp(x - m).sum(-1))
        tgt = np.asarray(win[1:])
        total += float((lse - x[np.arange(len(tgt)), tgt]).sum())
        count += len(tgt)
    return float(np.exp(total / count))


def rank_layers(cfg: LlamaConfig, w: LlamaWeights, windows: Sequence[Sequence[int]],
                log: Callable[[str], None] = lambda s: None) -> tuple[float, dict[int, float]]:
    """(full-model perplexity, perplexity with each single layer dropped)."""
    base = perplexity(cfg, w, windows)
    out = {}
    for i in range(cfg.num_layers):
        out[i] = perplexity(cfg, w, windows, [j for j in range(cfg.num_layers) if j != i])
        log(f"layer {i:2d} dropped: perplexity {out[i]:.2f} (full {base:.2f})")
    return base, out


def choose_drop(scores: dict[int, float], drop: int, protect: Sequence[int] = (0,)) -> list[int]:
    """The ``drop`` layers whose single removal hurt least (never the protected ones)."""
    cands = sorted((s, i) for i, s in scores.items() if i not in protect)
    if drop < 1 or drop > len(cands) - 1:
        raise BuildError(f"drop: expected 1..{len(cands) - 1} layers, got {drop}")
    return sorted(i for _, i in cands[:drop])
