"""Every method the access policy grants to clients is one the daemon really serves (a name listed there
but handled nowhere is a stale grant, or a typo that makes a real method admin-only)."""

from __future__ import annotations

from pathlib import Path

from agent.app import App, Config
from agent.ipc.access import ADMIN_METHODS_DOC, CLIENT_METHODS


def test_every_client_method_is_a_real_handler(tmp_path: Path) -> None:
    app = App(Config(zoo=tmp_path / "zoo", socket=tmp_path / "a.sock", state_dir=tmp_path / "state"))
    try:
        served = set(app.server.handlers)
        assert CLIENT_METHODS <= served, sorted(CLIENT_METHODS - served)
        # the admin-only ones the docs name are served too, and none of them is granted to clients
        plain_admin = {m for m in ADMIN_METHODS_DOC if not m.endswith(".*")}
        assert plain_admin <= served and not plain_admin & CLIENT_METHODS
        for m in ("infer", "generate", "status", "hold", "release", "cancel", "ping"):
            assert m in CLIENT_METHODS
    finally:
        app.telemetry.close()
