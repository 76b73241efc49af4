"""A build or measurement failure in one line that keeps its cause, with the whole of it in a log file.

onnxruntime puts the cause at the end of a long message (``Load model from /a/long/path failed: This is
an invalid model. In Node, (...) : (...) , Error Unrecognized attribute: axis for operator
DequantizeLinear``), so a message cut at N characters hides it. :func:`one_line` keeps the head and the
end; :func:`keep_cause` also writes the full message, any detail a subprocess sent (its traceback or
stderr) and our traceback to ``ZOO/<model>/.build-logs/<variant>.log`` and names that file.
"""

from __future__ import annotations

import traceback
from pathlib import Path

from agent.errors import AgentError

MAX_LINE = 600


def one_line(text: str, limit: int = MAX_LINE) -> str:
    """``text`` on one line; past ``limit`` characters its head and its end, joined by `` … ``."""
    flat = " ".join(text.split())
    if len(flat) <= limit:
        return flat
    head = limit // 3
    return f"{flat[:head]} … {flat[-(limit - head - 3):]}"


def keep_cause(folder: Path, name: str, e: BaseException) -> str:
    """One line for ``e`` (ours: its message; a tool's: ``Type: message``). When something was left out
    of that line (it was shortened, a subprocess sent detail, or it is a tool's exception with a
    traceback) the whole is written to ``folder/.build-logs/<name>.log`` and the line ends
    ``(full cause: <log>)``."""
    ours = isinstance(e, AgentError)
    text = e.message if isinstance(e, AgentError) else (str(e) or type(e).__name__)
    line = one_line(text)
    detail = e.data.get("detail") if isinstance(e, AgentError) else None
    if not ours:
        line = f"{type(e).__name__}: {line}"
    if ours and not detail and line == " ".join(text.split()):
        return line
    log = folder / ".build-logs" / f"{name}.log"
    try:
        log.parent.mkdir(parents=True, exist_ok=True)
        body = "".join(traceback.format_exception(e))
        if detail:
            body += f"\n--- detail from the subprocess ---\n{detail}\n"
        log.write_text(body, encoding="utf-8")
    except OSError:
        return line
    return f"{line} (full cause: {log})"
