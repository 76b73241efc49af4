"""`agentctl service install|uninstall` into a temporary prefix."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sysconfig
from pathlib import Path

import pytest

from agent.service.cli import ServiceInstallError, main, render_service

ROOT = Path(__file__).resolve().parents[2]


def _fake_agentd(prefix: Path) -> Path:
    exe = prefix / "bin" / "agentd"
    exe.parent.mkdir(parents=True, exist_ok=True)
    exe.write_text("#!/bin/sh\nexit 0\n")
    exe.chmod(0o755)
    return exe


def _installed(prefix: Path) -> list[str]:
    return sorted(str(p.relative_to(prefix)) for p in prefix.rglob("*") if p.is_file())


def test_install_writes_units_with_the_prefix_agentd_and_uninstall_removes_them(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    prefix = tmp_path / "usr"
    exe = _fake_agentd(prefix)
    assert main(["service", "install", "--prefix", str(prefix), "--no-reload"]) == 0
    assert _installed(prefix) == [
        "bin/agentd",
        "lib/systemd/system/ondevice-agent.service",
        "lib/systemd/system/ondevice-agent.socket",
        "lib/sysusers.d/ondevice-agent.conf",
        "lib/tmpfiles.d/ondevice-agent.conf",
    ]
    unit = (prefix / "lib/systemd/system/ondevice-agent.service").read_text()
    assert f"\nExecStart={exe}\n" in unit
    assert stat.S_IMODE((prefix / "lib/systemd/system/ondevice-agent.socket").stat().st_mode) == 0o644
    assert main(["service", "uninstall", "--prefix", str(prefix), "--no-reload"]) == 0
    assert _installed(prefix) == ["bin/agentd"]
    assert "kept:" in capsys.readouterr().out


def test_installed_units_pass_systemd_verify(tmp_path: Path) -> None:
    if shutil.which("systemd-analyze") is None:
        pytest.skip("needs systemd-analyze")
    prefix = tmp_path / "usr"
    _fake_agentd(prefix)
    assert main(["service", "install", "--prefix", str(prefix), "--gpu", "--no-reload"]) == 0
    udir = prefix / "lib/systemd/system"
    assert (udir / "ondevice-agent.service.d/50-gpu.conf").is_file()
    r = subprocess.run(["systemd-analyze", "verify", "ondevice-agent.service", "ondevice-agent.socket"],
                       cwd=udir, check=False, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stderr == "", r.stderr
    assert main(["service", "uninstall", "--prefix", str(prefix), "--no-reload"]) == 0
    assert not (udir / "ondevice-agent.service.d").exists()


def test_unit_dir_and_explicit_agentd_are_honoured(tmp_path: Path) -> None:
    exe = _fake_agentd(tmp_path / "elsewhere")
    udir = tmp_path / "etc-systemd"
    assert main(["service", "install", "--prefix", str(tmp_path / "p"), "--unit-dir", str(udir),
                 "--agentd", str(exe), "--no-reload"]) == 0
    assert f"ExecStart={exe}\n" in (udir / "ondevice-agent.service").read_text()
    assert main(["service", "uninstall", "--prefix", str(tmp_path / "p"), "--unit-dir", str(udir), "--no-reload"]) == 0
    assert not any(udir.iterdir())


def test_dry_run_changes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    prefix = tmp_path / "usr"
    _fake_agentd(prefix)
    assert main(["service", "install", "--prefix", str(prefix), "--dry-run"]) == 0
    assert _installed(prefix) == ["bin/agentd"]
    assert "would write" in capsys.readouterr().out


def test_without_prefix_agentd_the_running_environments_agentd_is_used(tmp_path: Path) -> None:
    venv_agentd = Path(sysconfig.get_path("scripts")) / "agentd"
    if not venv_agentd.exists():
        pytest.skip("package not installed with its scripts")
    assert main(["service", "install", "--prefix", str(tmp_path), "--no-reload"]) == 0
    unit = (tmp_path / "lib/systemd/system/ondevice-agent.service").read_text()
    assert f"\nExecStart={venv_agentd.absolute()}\n" in unit


def test_explicit_agentd_that_does_not_exist_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["service", "install", "--prefix", str(tmp_path), "--agentd", str(tmp_path / "nope")]) == 2
    assert "no executable agentd" in capsys.readouterr().err
    assert _installed(tmp_path) == []


def test_missing_templates_are_reported(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["service", "install", "--prefix", str(tmp_path), "--units-from", str(empty)]) == 2
    assert "cannot read unit template" in capsys.readouterr().err


def test_unwritable_unit_dir_fails_cleanly(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _fake_agentd(tmp_path)
    blocker = tmp_path / "file-not-dir"
    blocker.write_text("x")
    rc = main(["service", "install", "--prefix", str(tmp_path), "--unit-dir", str(blocker / "sub"), "--no-reload"])
    assert rc == 1
    assert "cannot write" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["service"], ["service", "install", "--bogus"], ["service", "frobnicate"]])
def test_bad_command_lines_exit_with_usage_error(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as ei:
        main(argv)
    assert ei.value.code == 2


@pytest.mark.parametrize("path", ["relative/agentd", "/opt/my agent/agentd"])
def test_render_refuses_paths_systemd_would_misread(path: str) -> None:
    with pytest.raises(ServiceInstallError):
        render_service("[Service]\nExecStart=/usr/local/bin/agentd\n", path)


def test_render_keeps_arguments_and_requires_one_execstart() -> None:
    out = render_service("[Service]\nExecStart=/usr/local/bin/agentd --config /etc/x.toml\n", "/opt/a/agentd")
    assert "ExecStart=/opt/a/agentd --config /etc/x.toml\n" in out
    with pytest.raises(ServiceInstallError, match="exactly one"):
        render_service("[Service]\nType=notify\n", "/opt/a/agentd")


def test_agentd_under_home_gets_a_sandbox_warning(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    home_like = Path("/tmp") / f"oda-home-test-{os.getpid()}"
    exe = _fake_agentd(home_like)
    try:
        assert main(["service", "install", "--prefix", str(tmp_path), "--agentd", str(exe), "--dry-run"]) == 0
        assert "sandbox hides" in capsys.readouterr().err
    finally:
        shutil.rmtree(home_like)
