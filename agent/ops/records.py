"""The service layer's typed records: what each operation takes and returns, and the telemetry rows of a
request. ``wire()`` is the JSON object a front end sends (IPC replies; the HTTP doors reshape it), kept
byte for byte what agentd has always sent (key order included)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from agent.control import QOS_KEYS, QoS, parse_qos
from agent.errors import InvalidParams
from agent.runtime.deadlines import parse_deadline_ms
from agent.runtime.slots import InferResult
from agent.zoo.manifest import Manifest

GENERATE_KEYS = frozenset({"model", "prompt", "messages", "max_tokens", "temperature", "top_p", "top_k", "seed",
                           "stop", "stream", *QOS_KEYS})


def name_param(params: Mapping[str, Any], key: str) -> str:
    """A required name (model, variant, device, profile, cookie): a non-empty string of at most 256 characters."""
    v = params.get(key)
    if not isinstance(v, str) or not v or len(v) > 256:
        raise InvalidParams(f"'{key}' must be a non-empty string")
    return v


@dataclass(frozen=True)
class Caller:
    """Who asks: an IPC peer (its connection owns its holds) or an HTTP door (``conn_id`` None)."""
    uid: int
    pid: int
    conn_id: int | None = None

    @property
    def owner(self) -> str:
        return f"conn:{self.conn_id}"


# -- requests -------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class InferRequest:
    model: str
    inputs: Any                 # the tensor descriptions; the runtime checks them against the manifest
    qos: QoS
    deadline_s: float | None

    @classmethod
    def parse(cls, params: Mapping[str, Any]) -> InferRequest:
        model = name_param(params, "model")
        qos = parse_qos(params)
        return cls(model, params.get("inputs"), qos, parse_deadline_ms(params.get("deadline_ms")))


@dataclass
class InferReply:
    model: str
    result: InferResult
    server_ms: float
    joules: float | None
    meter: str | None
    deadline_ms: float | None = None    # the request's own (QoS) deadline

    @property
    def deadline_met(self) -> bool | None:
        return None if self.deadline_ms is None else self.server_ms <= self.deadline_ms

    def wire(self) -> dict[str, Any]:
        r, met = self.result, self.deadline_met
        return {"outputs": r.outputs, "model": self.model, "variant": r.variant, "device": r.device,
                "providers": r.providers, "server_ms": self.server_ms, "run_ms": r.run_ms, "retried": r.retried,
                "joules": self.joules, "meter": self.meter, "batch": r.batch, "cached": r.cached,
                **({} if met is None else {"deadline_met": met})}

    def buffers(self) -> list[Any]:
        return self.result.buffers()


@dataclass(frozen=True)
class GenerateRequest:
    model: str
    qos: QoS
    tokens: int | None          # max_tokens when given (for the policy's demand and admission)
    worker: dict[str, Any]      # what the LLM worker gets: prompt/messages and sampling options
    deadline_s: float | None
    stream: bool = True

    @classmethod
    def parse(cls, params: Mapping[str, Any]) -> GenerateRequest:
        model = name_param(params, "model")
        unknown = sorted(set(params) - GENERATE_KEYS)
        if unknown:
            raise InvalidParams(f"unknown generate parameter {unknown[0]!r}; "
                                f"expected {', '.join(sorted(GENERATE_KEYS))}")
        stream = params.get("stream", True)
        if not isinstance(stream, bool):
            raise InvalidParams(f"stream: expected true or false, got {stream!r}")
        qos = parse_qos(params)
        mt = params.get("max_tokens")
        tokens = mt if isinstance(mt, int) and not isinstance(mt, bool) and mt > 0 else None
        worker = {k: v for k, v in params.items() if k not in ("model", "stream", *QOS_KEYS)}
        return cls(model, qos, tokens, worker, parse_deadline_ms(params.get("deadline_ms")), stream)


@dataclass
class GenerateReply:
    result: dict[str, Any]      # the worker's: text, finish_reason, usage, variant, device, ...
    joules: float | None
    meter: str | None
    deadline_met: bool | None

    @property
    def tokens(self) -> int:
        return int((self.result.get("usage") or {}).get("completion_tokens") or 0)

    def wire(self) -> dict[str, Any]:
        res = dict(self.result)
        if self.deadline_met is not None:
            res["deadline_met"] = self.deadline_met
        res["joules"], res["meter"] = self.joules, self.meter
        res["joules_per_token"] = self.joules / self.tokens if self.joules is not None and self.tokens else None
        return res


# -- telemetry rows (the ``requests`` table) ------------------------------------------------------------
def failed_row(model: str, error: str, latency_ms: float, kind: str | None = None) -> dict[str, Any]:
    return {"model": model, "ok": False, "error": error, **({"kind": kind} if kind else {}), "latency_ms": latency_ms}


def infer_row(rep: InferReply) -> dict[str, Any]:
    r = rep.result
    return {"model": rep.model, "variant": r.variant, "device": r.device, "ok": True, "latency_ms": rep.server_ms,
            "run_ms": r.run_ms, "cpu_s": r.cpu_s, "retried": r.retried, "joules": rep.joules, "meter": rep.meter,
            "batch": r.batch, "cached": r.cached}


def generate_row(req: GenerateRequest, rep: GenerateReply, wall_s: float, cpu_s: float | None) -> dict[str, Any]:
    res, usage = rep.result, rep.result.get("usage") or {}
    return {"model": req.model, "variant": res["variant"], "device": res["device"], "ok": True, "kind": "generate",
            "latency_ms": wall_s * 1e3, "cpu_s": cpu_s, "deadline_ms": req.qos.deadline_ms, "tokens": rep.tokens,
            "ttft_ms": usage.get("ttft_ms"), "tokens_per_s": usage.get("decode_tokens_per_s"),
            "finish": res.get("finish_reason"), "joules": rep.joules, "meter": rep.meter}


# -- management -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class VariantInfo:
    id: str
    precision: str
    derived_from: str | None
    size_bytes: int | None
    quality: dict[str, Any] | None
    unfit: Any


@dataclass(frozen=True)
class ModelInfo:
    name: str
    kind: str
    reference: str
    inputs: list[dict[str, Any]]
    outputs: list[dict[str, Any]]
    variants: list[VariantInfo]

    @classmethod
    def of(cls, m: Manifest) -> ModelInfo:
        return cls(m.name, m.kind, m.reference, [s.to_toml() for s in m.inputs], [s.to_toml() for s in m.outputs],
                   [VariantInfo(v.id, v.precision, v.derived_from, v.size_bytes,
                                vars(v.quality) if v.quality else None, v.unfit) for v in m.variants])

    def wire(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class ActiveInfo:
    """The live worker serving a model: its variant and device (what every reply names)."""
    variant: str
    device: str | None
    pid: int | None
    rss_bytes: int | None


@dataclass(frozen=True)
class HoldInfo:
    cookie: str
    profile: str
    reason: str
    pid: int
    since: float


@dataclass(frozen=True)
class DaemonInfo:
    pid: int
    version: str
    uptime_s: float
    socket: str
    zoo: str
    state_dir: str
    reload_error: str | None
    last_reload: float | None
    http: str | None


@dataclass
class StatusReport:
    daemon: DaemonInfo
    models: dict[str, dict[str, Any]]       # the runtime's per-model status (+ "llm" figures)
    zoo_errors: dict[str, str]
    policy: dict[str, Any] | None
    sensors: dict[str, Any] | None
    energy: dict[str, Any]
    holds: list[HoldInfo] = field(default_factory=list)

    def wire(self) -> dict[str, Any]:
        return {"daemon": dataclasses.asdict(self.daemon), "models": self.models, "zoo_errors": self.zoo_errors,
                "policy": self.policy, "sensors": self.sensors, "energy": self.energy,
                "holds": [dataclasses.asdict(h) for h in self.holds]}


@dataclass(frozen=True)
class SwapResult:
    model: str
    variant: str
    device: str
    changed: bool
    providers: list[str] | None = None
    load_ms: float | None = None
    warmup_ms: float | None = None
    swap_ms: float | None = None

    @classmethod
    def of(cls, d: Mapping[str, Any]) -> SwapResult:
        return cls(d["model"], d["variant"], d["device"], bool(d["changed"]), d.get("providers"), d.get("load_ms"),
                   d.get("warmup_ms"), d.get("swap_ms"))

    def wire(self) -> dict[str, Any]:
        out: dict[str, Any] = {"model": self.model, "variant": self.variant, "device": self.device,
                               "changed": self.changed}
        if self.changed:
            out.update(providers=self.providers, load_ms=self.load_ms, warmup_ms=self.warmup_ms,
                       swap_ms=self.swap_ms)
        return out


@dataclass(frozen=True)
class UnpinResult:
    model: str
    was_pinned: tuple[str, str] | None
    policy_acts_in_s: float | None

    def wire(self) -> dict[str, Any]:
        return {"model": self.model, "was_pinned": list(self.was_pinned) if self.was_pinned else None,
                "policy_acts_in_s": self.policy_acts_in_s}


@dataclass(frozen=True)
class ReleaseResult:
    released: str
    policy_acts_in_s: float | None

    def wire(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class ReloadResult:
    added: list[str]
    zoo_errors: dict[str, str]
    policy_error: str | None

    def wire(self) -> dict[str, Any]:
        return {"reloaded": True, "added": self.added, "zoo_errors": self.zoo_errors,
                "policy_error": self.policy_error}
