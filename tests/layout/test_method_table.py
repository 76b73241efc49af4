"""One table (agent/ipc/methods.py) drives the server's dispatch and the access roles: what is served is
exactly what the table lists, and the role the access policy asks for is the table's."""

from __future__ import annotations

from pathlib import Path

from agent.app import App, Config
from agent.ipc.access import ADMIN_METHODS_DOC, CLIENT_METHODS, AccessPolicy, Role
from agent.ipc.methods import METHODS


def test_the_table_is_what_is_served_and_what_access_grants(tmp_path: Path) -> None:
    app = App(Config(zoo=tmp_path / "zoo", socket=tmp_path / "a.sock", state_dir=tmp_path / "state"))
    try:
        names = [m.name for m in METHODS]
        assert len(names) == len(set(names)), "a method listed twice"
        assert set(app.server.handlers) == set(names)
        assert set(app.server.fast) == {"ping"} | {m.name for m in METHODS if m.fast is not None}
        assert {m.name for m in METHODS if m.role is Role.CLIENT} == CLIENT_METHODS
        policy = AccessPolicy(owner_uid=0)
        for m in METHODS:
            assert policy.required_role(m.name) is m.role, m.name
        assert policy.required_role("not.in.the.table") is Role.ADMIN   # deny by default
        assert {m.name for m in METHODS if m.role is Role.ADMIN} == {m for m in ADMIN_METHODS_DOC if "*" not in m}
    finally:
        app.telemetry.close()
