"""The IPC method table: one entry per method, naming its handler and the role it needs.

The table drives both the server's dispatch (:func:`handlers`, :func:`fast_handlers`) and access control
(:data:`agent.ipc.access.CLIENT_METHODS` is derived from it), so a method cannot be served without a
role or granted without being served. Each handler is a thin adapter: params → typed request → one
operation of :class:`agent.ops.service.Ops` → the record's ``wire()``.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from agent.errors import AgentError, InvalidParams
from agent.ipc.peer import Role
from agent.ipc.server import REQUEST_ID, FastHandler, Handler, Peer, Reply, WithFds
from agent.ops.records import Caller, GenerateRequest, InferReply, InferRequest, name_param
from agent.ops.service import Ops
from agent.telemetry import parse_duration

Result = tuple[Any, list[Any]]
OpHandler = Callable[[Ops, Peer, dict[str, Any], memoryview], Awaitable[Result]]
OpFast = Callable[[Ops, Peer, dict[str, Any], memoryview, Reply], bool]


def caller(peer: Peer) -> Caller:
    return Caller(peer.uid, peer.pid, peer.conn_id)


async def infer(ops: Ops, peer: Peer, params: dict[str, Any], payload: memoryview) -> Result:
    rep = await ops.infer(InferRequest.parse(params), payload)
    return rep.wire(), rep.buffers()


def infer_now(ops: Ops, peer: Peer, params: dict[str, Any], payload: memoryview, reply: Reply) -> bool:
    """``infer`` without a task: the reply is sent from the worker's (or the cache's) callback."""
    req = InferRequest.parse(params)
    if req.deadline_s is not None:
        return False   # the task path enforces a request's own deadline

    def done(rep: InferReply | None, err: AgentError | None) -> None:
        if err is not None:
            reply.fail(err)
        elif rep is not None:
            reply.ok(rep.wire(), rep.buffers())
        else:
            reply.ok({}, [])
    return ops.infer_nowait(req, payload, done)


async def lane(ops: Ops, peer: Peer, params: dict[str, Any], payload: memoryview) -> Result:
    """A direct lane to the model's active worker: the reply carries three fds (SCM_RIGHTS): the lane's
    socket, the inputs memfd and the outputs memfd (agent.ipc.lane speaks it). This connection stays
    open as the lane's lease (Ops.open_lane); a uid holds at most ``max_concurrent`` of them (Busy)."""
    model = name_param(params, "model")
    peer.lease()
    fds, info = ops.open_lane(model, peer.conn_id, peer.pid, peer.close)
    return WithFds(info, fds), []


async def generate(ops: Ops, peer: Peer, params: dict[str, Any], payload: memoryview) -> Result:
    """Stream tokens as ``token`` notifications ({id, text, index}); the response is the whole text,
    finish_reason, usage, and the variant and device that served it."""
    rid = REQUEST_ID.get()
    req = GenerateRequest.parse(params)

    def on_token(p: dict[str, Any]) -> None:
        if req.stream and rid is not None:
            peer.send({"jsonrpc": "2.0", "method": "token",
                       "params": {"id": rid, "text": p.get("text", ""), "index": p.get("index")}}, [])
    return (await ops.generate(req, on_token)).wire(), []


async def cancel(ops: Ops, peer: Peer, params: dict[str, Any], payload: memoryview) -> Result:
    rid = params.get("id")
    if not isinstance(rid, (int, str)) or isinstance(rid, bool):
        raise InvalidParams("id: expected the id of a generate request on this connection")
    return {"cancelled": peer.cancel(rid)}, []


async def models(ops: Ops, peer: Peer, params: dict[str, Any], payload: memoryview) -> Result:
    return [m.wire() for m in ops.models()], []


async def status(ops: Ops, peer: Peer, params: dict[str, Any], payload: memoryview) -> Result:
    return (await ops.status()).wire(), []


async def pin(ops: Ops, peer: Peer, params: dict[str, Any], payload: memoryview) -> Result:
    model, variant = name_param(params, "model"), name_param(params, "variant")
    device = name_param(params, "device") if params.get("device") not in (None, "") else None
    return (await ops.pin(model, variant, device, caller(peer))).wire(), []


async def unpin(ops: Ops, peer: Peer, params: dict[str, Any], payload: memoryview) -> Result:
    return ops.unpin(name_param(params, "model")).wire(), []


async def hold(ops: Ops, peer: Peer, params: dict[str, Any], payload: memoryview) -> Result:
    h = ops.hold(name_param(params, "profile"), params.get("reason", ""), caller(peer))
    return {"cookie": h.cookie}, []


async def release(ops: Ops, peer: Peer, params: dict[str, Any], payload: memoryview) -> Result:
    return ops.release(name_param(params, "cookie"), caller(peer)).wire(), []


async def reload(ops: Ops, peer: Peer, params: dict[str, Any], payload: memoryview) -> Result:
    return (await ops.reload()).wire(), []


async def subscribe(ops: Ops, peer: Peer, params: dict[str, Any], payload: memoryview) -> Result:
    peer.subscribed = True
    return {"subscribed": True}, []


async def history(ops: Ops, peer: Peer, params: dict[str, Any], payload: memoryview) -> Result:
    since = parse_duration(params.get("since") or "1h")
    tables = params.get("tables")
    if tables is not None and (not isinstance(tables, list) or not all(isinstance(t, str) for t in tables)):
        raise InvalidParams("tables must be a list of table names")
    return await ops.history(since, tables), []


async def metrics(ops: Ops, peer: Peer, params: dict[str, Any], payload: memoryview) -> Result:
    """The Prometheus text exposition (the same as ``GET /metrics``)."""
    return {"text": await ops.metrics_text()}, []


@dataclass(frozen=True)
class Method:
    name: str
    role: Role
    handler: OpHandler | None      # None: built into the server (``ping``)
    fast: OpFast | None = None     # a synchronous front that may take the request without a task


METHODS: tuple[Method, ...] = (
    Method("ping", Role.CLIENT, None),
    Method("infer", Role.CLIENT, infer, infer_now),
    Method("lane", Role.CLIENT, lane),
    Method("generate", Role.CLIENT, generate),
    Method("cancel", Role.CLIENT, cancel),
    Method("models", Role.CLIENT, models),
    Method("status", Role.CLIENT, status),
    Method("hold", Role.CLIENT, hold),
    Method("release", Role.CLIENT, release),
    Method("subscribe", Role.CLIENT, subscribe),
    Method("history", Role.CLIENT, history),
    Method("metrics", Role.CLIENT, metrics),
    Method("pin", Role.ADMIN, pin),
    Method("unpin", Role.ADMIN, unpin),
    Method("reload", Role.ADMIN, reload),
)
ROLES: dict[str, Role] = {m.name: m.role for m in METHODS}


def handlers(ops: Ops) -> dict[str, Handler]:
    return {m.name: functools.partial(m.handler, ops) for m in METHODS if m.handler is not None}


def fast_handlers(ops: Ops) -> dict[str, FastHandler]:
    return {m.name: functools.partial(m.fast, ops) for m in METHODS if m.fast is not None}
