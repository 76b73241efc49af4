"""The runtime's records: a model's slot (active worker, per-variant state) and an inference result."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

from agent.runtime.handle import WorkerHandle
from agent.zoo.manifest import Manifest


@dataclass
class VariantState:
    status: str = "unloaded"      # unloaded | loading | active | standby | draining | failed
    reason: str | None = None
    device: str | None = None
    load_ms: float | None = None
    warmup_ms: float | None = None
    last_change: float = field(default_factory=time.time)


@dataclass
class Slot:
    manifest: Manifest
    active: WorkerHandle | None = None
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    states: dict[str, VariantState] = field(default_factory=dict)
    draining: set[WorkerHandle] = field(default_factory=set)
    restarting: bool = False
    failures: int = 0
    requests: int = 0
    errors: int = 0
    lanes: dict[str, int] = field(default_factory=dict)   # lane requests, cache hits, errors (worker reports)
    # warm standby (Runtime.want_standby): a second loaded worker, and what the policy wants kept warm
    standby: WorkerHandle | None = None
    standby_want: tuple[str, str] | None = None
    standby_why: str = ""
    standby_task: asyncio.Task[None] | None = None
    standby_failed: tuple[tuple[str, str], float] | None = None   # (want, monotonic time) of the last failure

    def state(self, vid: str) -> VariantState:
        return self.states.setdefault(vid, VariantState())


@dataclass
class InferResult:
    outputs: list[dict[str, Any]]
    data: Any                  # bytes, or views (valid only inside a fast-path callback): one or a list
    model: str
    variant: str
    device: str
    run_ms: float
    cpu_s: float
    retried: bool = False
    providers: list[str] = field(default_factory=list)   # the EPs (or remote server) that ran the nodes
    batch: int = 1             # requests served by the same run (dynamic batching)
    cached: bool = False       # answered from the response cache

    def buffers(self) -> list[Any]:
        return list(self.data) if isinstance(self.data, list) else [self.data]
