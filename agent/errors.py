"""The one exception tree of ondevice-agent.

Every error the agent raises on purpose derives from :class:`AgentError`. Lower-layer errors
(onnxruntime, OS, TOML) are mapped to these at the boundary where they happen. Each class carries a
JSON-RPC error ``code`` so the IPC server can answer with it and the client library can raise the
same class again on the other side::

    AgentError                      -32000  anything of ours
    ├── ConfigError                 -32010  a policy / manifest / recipe / CLI value is wrong (file:line: key: ...)
    │   ├── ManifestError           -32011
    │   ├── PolicyError             -32012
    │   └── RecipeError             -32013
    ├── ProtocolError               -32600  a malformed frame or request (JSON-RPC "invalid request")
    │   ├── FrameTooLarge           -32001
    │   └── MethodNotFound          -32601
    ├── InvalidParams               -32602  wrong dtype/shape/missing input, bad argument
    ├── NotFound                    -32004  unknown model / variant / device
    ├── PermissionDenied            -32003  the peer may not call this method
    ├── Busy                        -32005  per-peer limit or queue full
    ├── LoadError                   -32020  a variant could not be loaded (corrupt file, EP failure)
    │   └── InsufficientMemory      -32021  the variant does not fit in memory
    ├── WorkerError                 -32030  a worker failed while running a request
    │   ├── WorkerDied              -32031  the worker process is gone
    │   │   └── WorkerHung          -32032  it stopped answering (missed heartbeats / its deadline): killed
    │   ├── Timeout                 -32033  a request's deadline passed; names the model/variant that had it
    │   └── ExecutionFailed         -32034  the execution provider failed inside ``run`` on inputs that match
    │                                        the signature (EP error, out of memory, a node failing on these values)
    ├── Unavailable                 -32040  no variant is ready to serve (loading / shutting down)
    │   ├── DeadlineInfeasible      -32041  no variant can meet the request's deadline now (data names the fastest)
    │   └── RemoteUnavailable       -32042  a remote inference server did not answer (runtime fails over)
    ├── BuildError                  -32050  a zoo build step failed
    ├── ConnectionClosed            -32060  client side: the daemon closed the connection
    └── CpuLimitError               -32070  a CPU quota (cgroup / affinity) could not be set

``retryable`` says whether the same request may succeed if sent again (``Busy``, ``Unavailable``, the
worker errors): it travels as ``data.retryable`` and the HTTP doors answer such errors with a 5xx / 429.
A bad request (``InvalidParams``, ``NotFound``, ``ConfigError``) is not retryable. Three mappers, one each:
:func:`error_from_jsonrpc` (client side), :func:`exit_code` (every CLI) and ``agent.http.common.status_of``
(every HTTP door).
"""

from __future__ import annotations

from typing import Any


class AgentError(Exception):
    """Base of every error the agent raises on purpose."""

    code: int = -32000
    retryable: bool = False

    def __init__(self, message: str, *, data: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.data = data or {}

    def to_jsonrpc(self) -> dict[str, Any]:
        err: dict[str, Any] = {"code": self.code, "message": self.message}
        data = dict(self.data)
        data.setdefault("type", type(self).__name__)
        data.setdefault("retryable", self.retryable)
        err["data"] = data
        return err


class ConfigError(AgentError):
    """A configuration value is wrong. ``str()`` is ``file:line: key: expected ..., got ...``."""

    code = -32010

    def __init__(
        self,
        message: str,
        *,
        file: str | None = None,
        line: int | None = None,
        key: str | None = None,
        data: dict[str, Any] | None = None,
    ) -> None:
        self.file, self.line, self.key = file, line, key
        loc = ""
        if file is not None:
            loc = f"{file}:{line}: " if line is not None else f"{file}: "
        if key:
            loc += f"{key}: "
        super().__init__(loc + message, data={**(data or {}), "file": file, "line": line, "key": key})


class ManifestError(ConfigError):
    code = -32011


class PolicyError(ConfigError):
    code = -32012


class RecipeError(ConfigError):
    code = -32013


class ProtocolError(AgentError):
    code = -32600


class FrameTooLarge(ProtocolError):
    code = -32001


class MethodNotFound(ProtocolError):
    code = -32601


class InvalidParams(AgentError):
    code = -32602


class NotFound(AgentError):
    code = -32004


class PermissionDenied(AgentError):
    code = -32003


class Busy(AgentError):
    code = -32005
    retryable = True


class LoadError(AgentError):
    code = -32020


class InsufficientMemory(LoadError):
    code = -32021


class WorkerError(AgentError):
    code = -32030
    retryable = True


class WorkerDied(WorkerError):
    code = -32031


class WorkerHung(WorkerDied):
    code = -32032


class Timeout(WorkerError):
    code = -32033


class ExecutionFailed(WorkerError):
    """The execution provider failed while running a request whose inputs match the model's signature:
    an EP error, out of memory, or a node that fails on these input *values* (a Reshape to a shape
    computed from them). Not a malformed request (that is ``InvalidParams``), so a client may retry it,
    on this variant or after a swap."""

    code = -32034


class Unavailable(AgentError):
    code = -32040
    retryable = True


class DeadlineInfeasible(Unavailable):
    code = -32041


class RemoteUnavailable(Unavailable):
    """A remote inference server (KServe v2) did not answer; the runtime fails over to a local variant."""

    code = -32042


class BuildError(AgentError):
    code = -32050


class ConnectionClosed(AgentError):
    code = -32060


class CpuLimitError(AgentError):
    code = -32070


def exit_code(e: BaseException) -> int:
    """The one error -> exit status map of every command line tool (agentctl and its sub-commands,
    agentd, the module mains): 2 bad usage or input (ConfigError, InvalidParams), 1 any other error."""
    return 2 if isinstance(e, ConfigError | InvalidParams) else 1


def from_run_error(e: Exception) -> AgentError:
    """Map an exception from an onnxruntime session's ``run`` to ours: ORT's ``InvalidArgument`` (a wrong
    dtype, rank or dimension) and its ``ValueError`` (a missing or unknown input) are the request's fault
    (InvalidParams); anything else (``Fail``, ``RuntimeException``, ``EPFail``, ``MemoryError``) is the
    execution provider failing on valid inputs (ExecutionFailed). By type, not message text, so no
    onnxruntime import is needed here."""
    if isinstance(e, AgentError):
        return e
    msg = (str(e).strip().splitlines() or [type(e).__name__])[0][:500]
    if type(e).__name__ == "InvalidArgument" or isinstance(e, (ValueError, TypeError)):
        return InvalidParams(f"inference failed: {msg}")
    return ExecutionFailed(f"inference failed in the execution provider ({type(e).__name__}): {msg}")


def _all_subclasses(cls: type[AgentError]) -> list[type[AgentError]]:
    out: list[type[AgentError]] = [cls]
    for sub in cls.__subclasses__():
        out.extend(_all_subclasses(sub))
    return out


def error_from_jsonrpc(err: dict[str, Any]) -> AgentError:
    """Rebuild the typed exception from a JSON-RPC error object (client side)."""
    code = err.get("code")
    message = str(err.get("message", "error"))
    data = err.get("data") if isinstance(err.get("data"), dict) else {}
    wanted = data.get("type") if data else None
    by_code: type[AgentError] = AgentError
    for cls in _all_subclasses(AgentError):
        if wanted and cls.__name__ == wanted:
            by_code = cls
            break
        if cls.code == code and by_code is AgentError:
            by_code = cls
    exc = AgentError.__new__(by_code)
    AgentError.__init__(exc, message, data=data)
    return exc


def error_payload(e: BaseException) -> dict[str, Any]:
    """The JSON-RPC error object for any exception: ours as they are; a third-party one (an execution
    provider, the OS) as a WorkerError carrying its first line and the traceback's tail."""
    import traceback

    if isinstance(e, AgentError):
        return e.to_jsonrpc()
    msg = (str(e).strip().splitlines() or [type(e).__name__])[0][:500]
    return WorkerError(f"{type(e).__name__}: {msg}", data={"trace": traceback.format_exc()[-2000:]}).to_jsonrpc()
