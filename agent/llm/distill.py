"""Heal a layer-pruned llama by knowledge distillation from the full model (torch, CPU, time-boxed).

Layer-wise feature distillation: the teacher is the full model; each kept layer that follows a
dropped one is retrained so that it reproduces the teacher's hidden state at the same depth, on the
student's own (already healed) input. Logit distillation of the whole student (KL on the 49k-token
vocabulary) was measured here at ~25 s per 512-token step on two shared cores (bf16 autocast is 4x
slower than fp32 on CPUs without AVX-512/AMX), so it could see only a few thousand tokens in a
ten-minute box; training one layer at a time costs one teacher forward plus a few single-layer steps.
Needs the ``distill`` extra (``torch==2.13.0``, CPU wheel).
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from agent.errors import BuildError
from agent.llm.gguf_source import LlamaConfig, LlamaWeights


def _torch() -> Any:
    try:
        import torch
    except ImportError:
        raise BuildError("distillation needs torch: pip install 'ondevice-agent[distill]' (torch==2.13.0)") from None
    return torch


class _Model:
    """A functional llama over torch tensors (only what distillation needs)."""

    def __init__(self, cfg: LlamaConfig, w: LlamaWeights, keep: Sequence[int], trainable: bool, max_len: int) -> None:
        torch = _torch()
        self.torch, self.cfg, self.keep = torch, cfg, list(keep)

        def t(a: Any, grad: bool = False) -> Any:
            return torch.tensor(np.ascontiguousarray(a), requires_grad=grad)

        self.embed = t(w.embed)
        self.lm_head = self.embed if w.lm_head is w.embed else t(w.lm_head)
        self.final_norm = t(w.final_norm, trainable)
        self.layers = []
        for i in self.keep:
            L = w.layers[i]
            self.layers.append({k: t(getattr(L, k), trainable) for k in
                                ("attn_norm", "wq", "wk", "wv", "wo", "ffn_norm", "w_gate", "w_up", "w_down")})
        hd = cfg.head_dim
        inv = 1.0 / (cfg.rope_theta ** (torch.arange(0, hd, 2, dtype=torch.float64) / hd))
        ang = torch.arange(max_len, dtype=torch.float64)[:, None] * inv[None, :]
        self.cos = torch.cat([ang.cos(), ang.cos()], -1).float()
        self.sin = torch.cat([ang.sin(), ang.sin()], -1).float()

    def params(self) -> list[Any]:
        return [self.final_norm] + [p for L in self.layers for p in L.values()]

    def _rms(self, x: Any, w: Any) -> Any:
        x32 = x.float()
        return (x32 * self.torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.cfg.rms_eps)) * w

    def _rope(self, x: Any, s: int) -> Any:
        h = x.shape[-1] // 2
        rot = self.torch.cat([-x[..., h:], x[..., :h]], -1)
        return x * self.cos[:s] + rot * self.sin[:s]

    def layer(self, L: dict[str, Any], x: Any) -> Any:
        F = self.torch.nn.functional
        c = self.cfg
        b, s, _ = x.shape
        h = self._rms(x, L["attn_norm"])
        q = (h @ L["wq"].T).view(b, s, c.num_heads, c.head_dim).transpose(1, 2)
        k = (h @ L["wk"].T).view(b, s, c.num_kv_heads, c.head_dim).transpose(1, 2)
        v = (h @ L["wv"].T).view(b, s, c.num_kv_heads, c.head_dim).transpose(1, 2)
        q, k = self._rope(q, s), self._rope(k, s)
        rep = c.num_heads // c.num_kv_heads
        k, v = k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1)
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + a.transpose(1, 2).reshape(b, s, c.hidden) @ L["wo"].T
        h = self._rms(x, L["ffn_norm"])
        return x + (F.silu(h @ L["w_gate"].T) * (h @ L["w_up"].T)) @ L["w_down"].T

    def export(self, base: LlamaWeights) -> LlamaWeights:
        out = copy.copy(base)
        out.layers = list(base.layers)
        for i, L in zip(self.keep, self.layers, strict=True):
            layer = copy.copy(base.layers[i])
            for k, p in L.items():
                setattr(layer, k, p.detach().float().numpy().copy())
            out.layers[i] = layer
        out.final_norm = self.final_norm.detach().float().numpy().copy()
        return out


def distill(cfg: LlamaConfig, w: LlamaWeights, keep: Sequence[int], tokens: Sequence[int], *,
            minutes: float = 10.0, epochs: int = 3, layers_per_gap: int = 1, seq_len: int = 128, batch: int = 4,
            lr: float = 2e-4, seed: int = 0, threads: int | None = None,
            log: Callable[[str], None] = lambda s: None) -> tuple[LlamaWeights, dict[str, Any]]:
    """Layer-wise (hidden-state) distillation: walk the layers in order keeping the teacher's and the
    student's residual streams on the calibration windows; every kept layer that follows a dropped one
    (and the ``layers_per_gap - 1`` kept layers after it) is trained so that, on the student's actual
    input, it reproduces the teacher's stream at the same depth (normalised MSE). Later layers therefore
    see the healed earlier ones. Returns the healed weights and a summary. The time box is shared by all
    trained layers."""
    torch = _torch()
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    n_win = len(tokens) // seq_len
    if n_win < batch:
        raise BuildError(f"distillation needs at least {batch * seq_len} calibration tokens, got {len(tokens)}")
    ids = torch.from_numpy(np.asarray(tokens[: n_win * seq_len], dtype=np.int64).reshape(n_win, seq_len))
    model = _Model(cfg, w, range(cfg.num_layers), False, seq_len)
    keep_set = set(keep)
    kept = sorted(keep_set)
    after_gap: list[int] = []
    for n, i in enumerate(kept):
        if i > 0 and (i - 1) not in keep_set:  # the first kept layer after a gap, and the next ones
            after_gap.extend(kept[n:n + layers_per_gap])
    after_gap = sorted(set(after_gap))
    t0 = time.perf_counter()
    budget = minutes * 60.0
    info: dict[str, Any] = {"method": "layer-wise hidden-state distillation", "windows": n_win,
                            "seq_len": seq_len, "trained_layers": sorted(after_gap), "layers": {}}
    healed: dict[int, dict[str, Any]] = {}
    with torch.no_grad():
        h_t = model.embed[ids]
    h_s = h_t.clone()
    for i in range(cfg.num_layers):
        L = model.layers[i]
        with torch.no_grad():
            h_t = _chunked(model, L, h_t, batch)
        if i not in keep_set:
            continue
        if i in after_gap and time.perf_counter() - t0 < budget:
            P = {k: v.detach().clone().requires_grad_(True) for k, v in L.items()}
            opt = torch.optim.AdamW(list(P.values()), lr=lr, weight_decay=0.0)
            scale = float(h_t.pow(2).mean())
            with torch.no_grad():
                before = float((_chunked(model, L, h_s, batch) - h_t).pow(2).mean()) / scale
            steps = 0
            left = budget - (time.perf_counter() - t0)
            share = left / max(1, len([j for j in after_gap if j >= i]))
            t_layer = time.perf_counter()
            for _ in range(epochs):
                for b in np.array_split(rng.permutation(n_win), max(1, n_win // batch)):
                    if time.perf_counter() - t_layer > share:
                        break
                    bi = torch.from_numpy(b)
                    loss = _loss(model.layer(P, h_s[bi]), h_t[bi], scale)
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    steps += 1
            with torch.no_grad():
                after = float((_chunked(model, P, h_s, batch) - h_t).pow(2).mean()) / scale
            healed[i] = P
            L = P
            info["layers"][str(i)] = {"steps": steps, "nmse_before": round(before, 5), "nmse_after": round(after, 5)}
            log(f"distill layer {i}: {steps} steps, normalised MSE {before:.4f} -> {after:.4f} "
                f"({time.perf_counter() - t0:.0f}s)")
        with torch.no_grad():
            h_s = _chunked(model, L, h_s, batch)
    info["seconds"] = round(time.perf_counter() - t0, 1)
    student = _Model.__new__(_Model)
    student.keep = sorted(healed)
    student.layers = [healed[i] for i in student.keep]
    student.final_norm = model.final_norm
    return student.export(w), info


def _loss(y: Any, t: Any, scale: float) -> Any:
    """Stream MSE normalised by the teacher's mean square, plus the per-token MSE of RMS-normalised
    states (so a few huge-activation positions do not drown every other token)."""
    def unit(x: Any) -> Any:
        return x * (x.pow(2).mean(-1, keepdim=True) + 1e-6).rsqrt()

    return (y - t).pow(2).mean() / scale + (unit(y) - unit(t)).pow(2).mean()


def _chunked(model: _Model, L: dict[str, Any], h: Any, batch: int) -> Any:
    return model.torch.cat([model.layer(L, h[j:j + batch]) for j in range(0, h.shape[0], batch)])
