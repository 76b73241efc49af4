"""Speculative decoding from our own ladder: a small variant drafts, the served variant verifies.

Greedy only. Each round the draft (e.g. the int4 variant of the same model) proposes up to ``k`` tokens
one at a time (stopping early when its top probability falls below ``min_p``, if set); the served
variant runs the current token and the ``k`` drafts in *one* step and keeps the longest prefix of drafts
equal to its own argmax, plus its own next token. Every emitted token is the served variant's argmax
given the tokens before it, so the output equals its own greedy output (up to the floating-point
difference between scoring k+1 positions at once and one at a time, which a test checks on a prompt
set). Both KV caches roll back by length only (``Decoder.truncate``).

**The draft takes the served variant's KV** (``share_kv``, on when both graphs have the same KV signature:
the builder family, the same layers, KV heads and head size). The draft does not prefill the prompt:
it gets a copy of the keys and values the served variant has just computed for it, and after a round
whose every proposal was accepted it gets the last proposal's from the verification instead of running
it again. Drafts here are the same weights at lower precision (SmolLM2's int4 carries the GGUF's blocks,
the fp32 is those blocks dequantised), so the served variant's KV is what the draft would have computed,
only more exact; a draft of other weights would propose worse, never emit differently (every emitted
token is still the served variant's argmax). Measured on SmolLM2, fp32 served with its int4 draft: the
draft's prefill had been ~8 % of the speculative decode time (docs/LLM.md).

    engine.set_draft(LLMEngine(int4_path, tok, table, threads=2), k=4)
    engine.generate(prompt, {"max_tokens": 64})        # greedy requests are now speculative
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Generator
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

import numpy as np

from agent.errors import LoadError

if TYPE_CHECKING:
    from agent.llm.decoder import DecodeState


class LLMEngine(Protocol):
    """What speculation needs of an engine (agent.llm.engine.LLMEngine, which owns a Speculator)."""

    decoder: Any
    tokenizer: Any
    model_path: Path

    def close(self) -> None: ...

MAX_K = 16
# ORT session config for the served variant and its draft. Their runs alternate in one process, and after
# each run a session's intra-op threads spin (ORT's default) on the cores the other session needs next:
# SmolLM2 fp32 served with an int4 draft decoded at 28.8 tok/s with spinning left on, 51.8 with
# force_spinning_stop (plain fp32: 40.6), measured interleaved on a quiet 2-core machine. Threads still
# spin within a run, so each step keeps its parallel speed.
SESSION_CONFIG = {"session.intra_op.allow_spinning": "1", "session.force_spinning_stop": "1"}


class Speculator:
    def __init__(self, target: LLMEngine, draft: LLMEngine, k: int = 4, min_p: float = 0.0,
                 share_kv: bool = True) -> None:
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= MAX_K:
            raise LoadError(f"speculative k: expected an integer in 1..{MAX_K}, got {k!r}")
        if isinstance(min_p, bool) or not isinstance(min_p, (int, float)) or not 0.0 <= min_p < 1.0:
            raise LoadError(f"speculative min_p: expected a number in [0, 1), got {min_p!r}")
        self.min_p = float(min_p)
        tv = target.tokenizer.get_vocab_size()
        dv = draft.tokenizer.get_vocab_size()
        if tv != dv:
            raise LoadError(f"draft {draft.model_path.name}: its vocabulary ({dv}) differs from the served "
                            f"variant's ({tv}); a draft must be a variant of the same model")
        self.target, self.draft, self.k = target, draft, k
        self.share_kv = share_kv and same_kv_signature(target.decoder, draft.decoder)
        self._lock = threading.Lock()
        self.rounds = self.drafted = self.accepted = self.emitted = 0

    def tokens(self, ids: list[int], st: DecodeState, logits: np.ndarray,
               on_bytes: Callable[[int], None]) -> Generator[int, None, None]:
        """The served variant's greedy tokens after ``ids`` (``st`` holds their KV, ``logits`` the next
        token's scores); lazily: the work for later tokens happens when they are asked for."""
        tdec, ddec, k = self.target.decoder, self.draft.decoder, self.k
        dst: DecodeState | None = None
        pending: list[int] = []  # tokens the target has consumed and the draft has not
        rounds = drafted = accepted = emitted = 0
        try:
            while True:
                tok = int(np.argmax(logits))
                yield tok
                emitted += 1
                if dst is None:  # after the first token, so the draft's prefill does not delay it
                    dst = ddec.new_state(st.capacity)
                    if self.share_kv:   # the prompt's KV from the served variant, not a second prefill
                        copy_kv(st, dst, 0, st.length)
                    else:
                        pending = list(ids)
                base = st.length  # the target holds everything before ``tok``
                props: list[int] = []
                feed = [*pending, tok]
                for _ in range(k):
                    dl = ddec.run(dst, feed, keep=1)[-1]
                    nxt = int(np.argmax(dl))
                    if self.min_p > 0.0 and 1.0 / float(np.exp(dl - dl[nxt]).sum()) < self.min_p:
                        break   # the draft is unsure: verify what we have rather than draft on
                    props.append(nxt)
                    feed = [nxt]
                on_bytes(st.nbytes + dst.nbytes)
                n = len(props)
                rows = tdec.run(st, [tok, *props], keep=n + 1)   # rows[j]: target's scores after props[:j]
                m = 0
                while m < n and int(np.argmax(rows[m])) == props[m]:
                    m += 1
                rounds += 1
                drafted += n
                accepted += m
                tdec.truncate(st, base + 1 + m)
                # the draft holds tok and the proposals it was fed; keep what the accepted sequence shares
                keep = min(dst.length, base + 1 + m)
                ddec.truncate(dst, keep)
                if self.share_kv and keep < base + 1 + m:   # the draft never ran the last accepted proposal
                    copy_kv(st, dst, keep, base + 1 + m)
                    pending = []
                else:
                    pending = props[keep - base - 1: m]
                for j in range(m):
                    yield props[j]
                    emitted += 1
                logits = rows[m]
        finally:
            if dst is not None:
                ddec.release(dst)
            with self._lock:
                self.rounds += rounds
                self.drafted += drafted
                self.accepted += accepted
                self.emitted += emitted

    def stats(self) -> dict[str, Any]:
        with self._lock:
            r = self.rounds
            return {"draft": str(self.draft.model_path), "k": self.k, "min_p": self.min_p,
                    "share_kv": self.share_kv, "rounds": r,
                    "drafted": self.drafted, "accepted": self.accepted,
                    "acceptance": self.accepted / self.drafted if self.drafted else None,
                    "tokens_per_round": (self.accepted + r) / r if r else None}


def same_kv_signature(a: Any, b: Any) -> bool:
    """Whether decoder ``b`` can take decoder ``a``'s KV: both preallocated builder buffers with the same
    layers, KV heads and head size."""
    return (getattr(a, "family", None) == getattr(b, "family", None) == "builder"
            and a.past_names == b.past_names and (a.kv_heads, a.head_dim) == (b.kv_heads, b.head_dim))


def copy_kv(src: DecodeState, dst: DecodeState, start: int, end: int) -> None:
    """Positions ``start``..``end`` of ``src``'s KV into ``dst`` (builder buffers), which then holds ``end``."""
    for d, s in zip(dst.kv, src.kv, strict=True):
        d[:, :, start:end] = s[:, :, start:end]
    dst.length = end


class DraftPlan(NamedTuple):
    """How to serve one variant with a draft (from ``[llm.speculative]``)."""

    variant: str
    k: int
    min_p: float
    share_kv: bool


def draft_request(m: Any, variant: str) -> dict[str, Any] | None:
    """What a worker serving ``variant`` of manifest ``m`` loads beside it, as the worker's load parameters
    (variant, path, sha256, k, min_p, share_kv); None without a draft. LoadError on a bad table."""
    plan = draft_for(m.llm, variant, set(m.variant_ids()))
    if plan is None:
        return None
    dv = m.variant(plan.variant)
    return {"variant": dv.id, "path": str(m.path_of(dv)), "sha256": dv.sha256, "k": plan.k, "min_p": plan.min_p,
            "share_kv": plan.share_kv}


def set_draft_from(engine: Any, draft: LLMEngine, req: dict[str, Any]) -> None:
    """``engine.set_draft`` with the settings of a :func:`draft_request`."""
    engine.set_draft(draft, int(req.get("k", 4)), float(req.get("min_p", 0.0)), bool(req.get("share_kv", True)))


def draft_for(llm: dict[str, Any] | None, variant: str, variants: set[str]) -> DraftPlan | None:
    """The draft for serving ``variant``, from the manifest's ``[llm.speculative]`` table::

        [llm.speculative]
        k = 4                                          # proposals per round, at most
        min_p = 0.0                                    # stop drafting below this draft probability
        share_kv = true                                # the draft takes the served variant's KV (when it fits)
        drafts = { fp32 = "int4", int8 = "int4" }     # served variant -> its draft
    """
    spec = (llm or {}).get("speculative")
    if spec is None:
        return None
    where = "[llm.speculative]"
    if not isinstance(spec, dict) or set(spec) - {"k", "drafts", "min_p", "share_kv"}:
        raise LoadError(f"{where}: expected a table with 'k', 'min_p', 'share_kv' and 'drafts', got {spec!r}")
    drafts = spec.get("drafts", {})
    if not isinstance(drafts, dict) or not all(isinstance(v, str) for v in drafts.values()):
        raise LoadError(f"{where} drafts: expected a table of variant = \"draft variant\", got {drafts!r}")
    k = spec.get("k", 4)
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= MAX_K:
        raise LoadError(f"{where} k: expected an integer in 1..{MAX_K}, got {k!r}")
    min_p = spec.get("min_p", 0.0)
    if isinstance(min_p, bool) or not isinstance(min_p, (int, float)) or not 0.0 <= min_p < 1.0:
        raise LoadError(f"{where} min_p: expected a number in [0, 1), got {min_p!r}")
    share_kv = spec.get("share_kv", True)
    if not isinstance(share_kv, bool):
        raise LoadError(f"{where} share_kv: expected true or false, got {share_kv!r}")
    d = drafts.get(variant)
    if d is None:
        return None
    if d not in variants or d == variant:
        raise LoadError(f"{where} drafts.{variant}: expected another variant of this model "
                        f"({sorted(variants - {variant})}), got {d!r}")
    return DraftPlan(d, k, float(min_p), share_kv)
