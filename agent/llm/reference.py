"""An independent numpy forward pass of a llama decoder, to cross-check the ONNX graph.

Written directly from the model's definition (RMSNorm, rotary "rotate half", grouped-query attention,
SwiGLU), sharing no code with ``graph``. Slow; meant for short sequences in tests and build checks.
"""

from __future__ import annotations

import numpy as np

from agent.llm.gguf_source import LlamaConfig, LlamaWeights


def _rms(x: np.ndarray, w: np.ndarray, eps: float) -> np.ndarray:
    x64 = x.astype(np.float64)
    return (x64 / np.sqrt((x64 * x64).mean(-1, keepdims=True) + eps) * w).astype(np.float32)


def _rotate(x: np.ndarray, pos: np.ndarray, theta: float) -> np.ndarray:
    d = x.shape[-1]
    freqs = 1.0 / theta ** (np.arange(0, d, 2) / d)
    ang = pos[:, None] * freqs[None, :]  # [S, d/2]
    cos = np.cos(np.concatenate([ang, ang], -1))
    sin = np.sin(np.concatenate([ang, ang], -1))
    x1, x2 = x[..., : d // 2], x[..., d // 2:]
    rot = np.concatenate([-x2, x1], -1)
    return (x * cos + rot * sin).astype(np.float32)


class ReferenceLlama:
    """``forward(tokens)`` -> logits [S, vocab]; keeps its own KV cache between calls."""

    def __init__(self, cfg: LlamaConfig, w: LlamaWeights, keep_layers: list[int] | None = None) -> None:
        self.cfg, self.w = cfg, w
        self.keep = list(range(cfg.num_layers)) if keep_layers is None else list(keep_layers)
        self.reset()

    def reset(self) -> None:
        self.k: dict[int, np.ndarray] = {}
        self.v: dict[int, np.ndarray] = {}
        self.pos = 0

    def forward(self, tokens: list[int]) -> np.ndarray:
        c, w = self.cfg, self.w
        s = len(tokens)
        pos = np.arange(self.pos, self.pos + s)
        x = w.embed[np.asarray(tokens)].astype(np.float32)
        hd, nh, nkv = c.head_dim, c.num_heads, c.num_kv_heads
        for i in self.keep:
            L = w.layers[i]
            h = _rms(x, L.attn_norm, c.rms_eps)
            q = (h @ L.wq.T).reshape(s, nh, hd).transpose(1, 0, 2)
            k = (h @ L.wk.T).reshape(s, nkv, hd).transpose(1, 0, 2)
            v = (h @ L.wv.T).reshape(s, nkv, hd).transpose(1, 0, 2)
            q, k = _rotate(q, pos, c.rope_theta), _rotate(k, pos, c.rope_theta)
            if i in self.k:
                k = np.concatenate([self.k[i], k], 1)
                v = np.concatenate([self.v[i], v], 1)
            self.k[i], self.v[i] = k, v
            t = k.shape[1]
            out = np.empty((nh, s, hd), np.float32)
            allowed = np.arange(t)[None, :] <= (t - s + np.arange(s))[:, None]
            for head in range(nh):
                kv = head // (nh // nkv)
                sc = (q[head] @ k[kv].T) / np.sqrt(hd)
                sc = np.where(allowed, sc, -np.inf)
                sc = np.exp(sc - sc.max(-1, keepdims=True))
                out[head] = (sc / sc.sum(-1, keepdims=True)) @ v[kv]
            x = x + out.transpose(1, 0, 2).reshape(s, nh * hd) @ L.wo.T
            h = _rms(x, L.ffn_norm, c.rms_eps)
            gate = h @ L.w_gate.T
            x = x + ((gate / (1.0 + np.exp(-gate))) * (h @ L.w_up.T)) @ L.w_down.T
        self.pos += s
        return (_rms(x, w.final_norm, c.rms_eps) @ w.lm_head.T).astype(np.float32)

    def greedy(self, prompt: list[int], n: int) -> list[int]:
        self.reset()
        logits = self.forward(prompt)
        out: list[int] = []
        for _ in range(n):
            t = int(np.argmax(logits[-1]))
            out.append(t)
            logits = self.forward([t])
        return out
