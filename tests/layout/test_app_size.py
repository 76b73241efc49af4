"""``agent/app.py`` is the composition root and nothing else: it stays small (issue 17: at most 150 lines)."""

from __future__ import annotations

import ast
from pathlib import Path

APP = Path(__file__).resolve().parents[2] / "agent" / "app.py"


def test_app_is_wiring_only() -> None:
    text = APP.read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 150, f"agent/app.py has {len(text.splitlines())} lines (at most 150)"
    # no IPC handler lives there: handlers are the method table's (agent/ipc/methods.py)
    names = [n.name for n in ast.walk(ast.parse(text)) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
    assert not [n for n in names if n.startswith("h_")], names
