"""The shipped systemd units: they verify cleanly, score <= 1.5 exposure, and agree with the code."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from agent.ipc.access import AccessPolicy
from agent.service.cli import find_agentd, render_service

ROOT = Path(__file__).resolve().parents[2]
UNITS = ROOT / "systemd"

pytestmark = pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="needs systemd-analyze")


def _entries(path: Path) -> list[tuple[str, str, str]]:
    out, section = [], ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        out.append((section, key.strip(), value.strip()))
    return out


def _get(path: Path, section: str, key: str) -> list[str]:
    return [v for s, k, v in _entries(path) if s == section and k == key]


def _render(dest: Path, gpu: bool = False) -> Path:
    """The units as `agentctl service install` writes them, ExecStart = this venv's agentd."""
    agentd = find_agentd(Path("/nonexistent-prefix"), None)
    dest.mkdir(parents=True, exist_ok=True)
    service = dest / "ondevice-agent.service"
    service.write_text(render_service((UNITS / "ondevice-agent.service").read_text(), str(agentd)))
    shutil.copy(UNITS / "ondevice-agent.socket", dest / "ondevice-agent.socket")
    if gpu:
        (dest / "ondevice-agent.service.d").mkdir(exist_ok=True)
        shutil.copy(UNITS / "ondevice-agent-gpu.conf", dest / "ondevice-agent.service.d" / "50-gpu.conf")
    return service


def _verify(dest: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["systemd-analyze", "verify", "ondevice-agent.service", "ondevice-agent.socket"],
                          cwd=dest, check=False, capture_output=True, text=True, timeout=60)


def _exposure(service: Path) -> tuple[int, float, str]:
    r = subprocess.run(["systemd-analyze", "security", "--offline=yes", "--threshold=15", service.name],
                       cwd=service.parent, check=False, capture_output=True, text=True, timeout=60)
    m = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", r.stdout)
    assert m, r.stdout + r.stderr
    return r.returncode, float(m.group(1)), r.stdout


def test_rendered_units_verify_without_any_warning(tmp_path: Path) -> None:
    service = _render(tmp_path)
    assert _get(service, "Service", "ExecStart")[0] == str(find_agentd(Path("/nonexistent-prefix"), None))
    r = _verify(tmp_path)
    assert r.returncode == 0 and r.stdout == "" and r.stderr == "", r.stdout + r.stderr


def test_verify_check_catches_a_broken_unit(tmp_path: Path) -> None:
    """The check above can fail: a typo'd key or a missing executable is reported."""
    service = _render(tmp_path)
    service.write_text(service.read_text().replace("ProtectHome=yes", "ProtectHomes=yes"))
    r = _verify(tmp_path)
    assert "Unknown key 'ProtectHomes'" in r.stderr
    service.write_text(render_service(service.read_text(), "/nonexistent/agentd"))
    assert _verify(tmp_path).returncode != 0


def test_service_exposure_is_at_most_1_5(tmp_path: Path) -> None:
    rc, score, out = _exposure(_render(tmp_path))
    assert rc == 0, out
    assert score <= 1.5, out


def test_gpu_dropin_verifies_and_stays_under_threshold(tmp_path: Path) -> None:
    service = _render(tmp_path, gpu=True)
    r = _verify(tmp_path)
    assert r.returncode == 0 and r.stderr == "", r.stderr
    rc, score, out = _exposure(service)
    assert rc == 0 and score <= 1.5, out
    assert "char-drm:rw" in out and "char-accel:rw" in out  # the drop-in was really applied


def test_unhardened_service_fails_the_threshold(tmp_path: Path) -> None:
    """The security check can fail: the same unit without its hardening scores far above 1.5."""
    service = _render(tmp_path)
    text = service.read_text()
    service.write_text(text.split("# Hardening")[0] + "\n[Install]\nWantedBy=multi-user.target\n")
    rc, score, _ = _exposure(service)
    assert rc != 0 and score > 5


def test_service_unit_has_the_lifecycle_settings() -> None:
    s = UNITS / "ondevice-agent.service"
    assert _get(s, "Service", "Type") == ["notify"]
    assert _get(s, "Service", "ExecReload") == ["/bin/kill -HUP $MAINPID"]
    assert _get(s, "Service", "Restart") == ["on-failure"]
    assert _get(s, "Service", "WatchdogSec")
    for d in ("StateDirectory", "RuntimeDirectory", "CacheDirectory", "ConfigurationDirectory"):
        assert _get(s, "Service", d) == ["ondevice-agent"], d
    # SO_PEERCRED must see real uids: a private user namespace would map every peer to nobody
    assert _get(s, "Service", "PrivateUsers") == []


def test_socket_unit_group_matches_sysusers_and_access_defaults() -> None:
    sock = UNITS / "ondevice-agent.socket"
    assert _get(sock, "Socket", "SocketMode") == ["0660"]
    group = _get(sock, "Socket", "SocketGroup")[0]
    assert group == AccessPolicy().clients_group
    sysusers = (UNITS / "ondevice-agent.sysusers").read_text()
    assert re.search(rf"^g {re.escape(group)} ", sysusers, re.MULTILINE)
    assert re.search(rf"^g {re.escape(str(AccessPolicy().admin_group))} ", sysusers, re.MULTILINE)
    user = _get(UNITS / "ondevice-agent.service", "Service", "User")[0]
    assert re.search(rf"^u {re.escape(user)} ", sysusers, re.MULTILINE)


@pytest.mark.skipif(shutil.which("systemd-sysusers") is None or shutil.which("systemd-tmpfiles") is None,
                    reason="needs systemd-sysusers and systemd-tmpfiles")
def test_sysusers_and_tmpfiles_snippets_apply_to_an_empty_root(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    subprocess.run(["systemd-sysusers", f"--root={root}", str(UNITS / "ondevice-agent.sysusers")],
                   check=True, capture_output=True, timeout=60)
    passwd = (root / "etc/passwd").read_text()
    groups = (root / "etc/group").read_text()
    assert re.search(r"^ondevice-agent:x:(\d+):", passwd, re.MULTILINE)
    for g in ("ondevice-agent", "ondevice-agent-clients", "ondevice-agent-admins"):
        assert re.search(rf"^{g}:x:\d+:", groups, re.MULTILINE), g
    r = subprocess.run(["systemd-tmpfiles", f"--root={root}", "--create", str(UNITS / "ondevice-agent.tmpfiles")],
                       check=False, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    uid = int(re.search(r"^ondevice-agent:x:(\d+):", passwd, re.MULTILINE).group(1))  # type: ignore[union-attr]
    zoo = root / "var/lib/ondevice-agent/zoo"
    assert zoo.is_dir() and zoo.stat().st_uid == uid and (zoo.stat().st_mode & 0o777) == 0o750
    assert (root / "etc/ondevice-agent/policies").is_dir()
