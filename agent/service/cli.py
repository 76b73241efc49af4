"""``agentctl service install|uninstall``: put the systemd units (and sysusers/tmpfiles snippets) in place.

The shipped files live in ``systemd/`` of the source tree. ``install`` renders the service unit with
``ExecStart=`` pointing at the installed ``agentd`` (``--agentd``, else ``PREFIX/bin/agentd``, else the
``agentd`` next to the running interpreter) and writes::

    UNIT_DIR/ondevice-agent.service                  (UNIT_DIR: --unit-dir, else PREFIX/lib/systemd/system)
    UNIT_DIR/ondevice-agent.socket
    UNIT_DIR/ondevice-agent.service.d/50-gpu.conf    (only with --gpu)
    PREFIX/lib/sysusers.d/ondevice-agent.conf
    PREFIX/lib/tmpfiles.d/ondevice-agent.conf

Then, only when systemd is the running init (``/run/systemd/system`` exists) and ``--no-reload`` was not
given, it creates the users (``systemd-sysusers``), the directories (``systemd-tmpfiles --create``) and
runs ``systemctl daemon-reload``. ``uninstall`` stops and disables the units (same condition) and removes
exactly those files; it keeps the users and ``/var/lib/ondevice-agent`` (the zoo and telemetry).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path

SERVICE = "ondevice-agent.service"
SOCKET = "ondevice-agent.socket"
GPU_DROPIN = "50-gpu.conf"
SNIPPET = "ondevice-agent.conf"

# Where ProtectHome=yes / the sandbox would hide the executable from the service.
_HIDDEN_PREFIXES = ("/home/", "/root/", "/run/user/", "/tmp/", "/var/tmp/")


class ServiceInstallError(Exception):
    """A user-facing install problem (missing templates, no agentd, unwritable directory)."""


def source_dir() -> Path:
    """The directory holding the shipped unit templates."""
    here = Path(__file__).resolve().parents[2]
    for cand in (here / "systemd", Path(sys.prefix) / "share" / "ondevice-agent" / "systemd"):
        if (cand / SERVICE).is_file() and (cand / SOCKET).is_file():
            return cand
    raise ServiceInstallError(
        f"cannot find the unit templates ({SERVICE}, {SOCKET}) in {here / 'systemd'} or "
        f"{Path(sys.prefix) / 'share/ondevice-agent/systemd'}; pass --units-from DIR"
    )


def render_service(text: str, agentd: str) -> str:
    """The service unit with the executable of ``ExecStart=`` replaced by ``agentd`` (arguments kept)."""
    if any(ch.isspace() for ch in agentd) or not os.path.isabs(agentd):
        raise ServiceInstallError(f"agentd path must be absolute and contain no spaces, got {agentd!r}")
    out, seen = [], 0
    for line in text.splitlines(keepends=True):
        if line.startswith("ExecStart="):
            seen += 1
            rest = line[len("ExecStart="):].rstrip("\n")
            parts = rest.split(None, 1)
            line = "ExecStart=" + agentd + (" " + parts[1] if len(parts) > 1 else "") + "\n"
        out.append(line)
    if seen != 1:
        raise ServiceInstallError(f"expected exactly one ExecStart= line in the service template, found {seen}")
    return "".join(out)


def find_agentd(prefix: Path, explicit: str | None) -> Path:
    if explicit:
        cands = [Path(explicit)]
    else:
        cands = [prefix / "bin" / "agentd", Path(sysconfig.get_path("scripts")) / "agentd",
                 Path(sys.executable).parent / "agentd"]
        found = shutil.which("agentd")
        if found:
            cands.append(Path(found))
    for c in cands:
        if c.is_file() and os.access(c, os.X_OK):
            return c.absolute()
    raise ServiceInstallError("no executable agentd found (looked at " + ", ".join(map(str, cands))
                              + "); install the package or pass --agentd PATH")


def systemd_running() -> bool:
    return Path("/run/systemd/system").is_dir()


@dataclass
class Plan:
    files: dict[Path, str]          # path -> content
    snippets: dict[str, Path]       # "sysusers"/"tmpfiles" -> installed path
    agentd: Path
    warnings: list[str]


def plan_install(prefix: Path, unit_dir: Path | None, agentd: str | None, gpu: bool,
                 units_from: Path | None) -> Plan:
    src = units_from or source_dir()
    try:
        service_text = (src / SERVICE).read_text()
        socket_text = (src / SOCKET).read_text()
        sysusers = (src / "ondevice-agent.sysusers").read_text()
        tmpfiles = (src / "ondevice-agent.tmpfiles").read_text()
        gpu_text = (src / "ondevice-agent-gpu.conf").read_text() if gpu else ""
    except OSError as e:
        raise ServiceInstallError(f"cannot read unit template: {e}") from e
    exe = find_agentd(prefix, agentd)
    warnings = []
    if str(exe).startswith(_HIDDEN_PREFIXES):
        warnings.append(f"{exe} is under a directory the service sandbox hides (ProtectHome=/PrivateTmp=); "
                        "install the package system-wide (e.g. pip install --prefix /usr/local) first")
    udir = unit_dir or prefix / "lib" / "systemd" / "system"
    files = {
        udir / SERVICE: render_service(service_text, str(exe)),
        udir / SOCKET: socket_text,
        prefix / "lib" / "sysusers.d" / SNIPPET: sysusers,
        prefix / "lib" / "tmpfiles.d" / SNIPPET: tmpfiles,
    }
    if gpu:
        files[udir / (SERVICE + ".d") / GPU_DROPIN] = gpu_text
    snippets = {"sysusers": prefix / "lib" / "sysusers.d" / SNIPPET,
                "tmpfiles": prefix / "lib" / "tmpfiles.d" / SNIPPET}
    return Plan(files, snippets, exe, warnings)


def _run(cmd: list[str]) -> int:
    print("+ " + " ".join(cmd))
    try:
        return subprocess.run(cmd, check=False).returncode
    except OSError as e:
        print(f"agentctl service: {cmd[0]}: {e}", file=sys.stderr)
        return 127


def install(args: argparse.Namespace) -> int:
    try:
        plan = plan_install(Path(args.prefix), _opt_path(args.unit_dir), args.agentd, args.gpu,
                            _opt_path(args.units_from))
    except ServiceInstallError as e:
        print(f"agentctl service install: {e}", file=sys.stderr)
        return 2
    for w in plan.warnings:
        print(f"warning: {w}", file=sys.stderr)
    print(f"ExecStart={plan.agentd}")
    for path, text in plan.files.items():
        if args.dry_run:
            print(f"would write {path} ({len(text)} bytes)")
            continue
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(path.name + ".tmp")
            tmp.write_text(text)
            tmp.chmod(0o644)
            tmp.replace(path)
        except OSError as e:
            print(f"agentctl service install: cannot write {path}: {e.strerror or e}", file=sys.stderr)
            return 1
        print(f"wrote {path}")
    if args.dry_run:
        return 0
    if args.reload and systemd_running():
        rc = _run(["systemd-sysusers", str(plan.snippets["sysusers"])])
        rc |= _run(["systemd-tmpfiles", "--create", str(plan.snippets["tmpfiles"])])
        rc |= _run(["systemctl", "daemon-reload"])
        if rc:
            return 1
        print(f"next: systemctl enable --now {SOCKET}")
    else:
        print("systemd is not running here (or --no-reload): users, directories and daemon-reload skipped")
    return 0


def uninstall(args: argparse.Namespace) -> int:
    prefix = Path(args.prefix)
    udir = _opt_path(args.unit_dir) or prefix / "lib" / "systemd" / "system"
    targets = [udir / SERVICE, udir / SOCKET,
               udir / (SERVICE + ".d") / GPU_DROPIN,
               prefix / "lib" / "sysusers.d" / SNIPPET, prefix / "lib" / "tmpfiles.d" / SNIPPET]
    live = args.reload and systemd_running() and not args.dry_run
    if live:
        _run(["systemctl", "disable", "--now", SOCKET, SERVICE])
    rc = 0
    for path in targets:
        if not path.exists():
            continue
        if args.dry_run:
            print(f"would remove {path}")
            continue
        try:
            path.unlink()
            print(f"removed {path}")
        except OSError as e:
            print(f"agentctl service uninstall: cannot remove {path}: {e.strerror or e}", file=sys.stderr)
            rc = 1
    dropin_dir = udir / (SERVICE + ".d")
    if not args.dry_run and dropin_dir.is_dir() and not any(dropin_dir.iterdir()):
        dropin_dir.rmdir()
    if live:
        rc |= _run(["systemctl", "daemon-reload"])
    print("kept: the ondevice-agent user/groups and /var/lib/ondevice-agent (zoo, telemetry)")
    return 1 if rc else 0


def _opt_path(v: str | None) -> Path | None:
    return Path(v) if v else None


def add_parsers(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``service install`` / ``service uninstall`` on agentctl's sub-command parser."""
    svc = subparsers.add_parser("service", help="install or remove the systemd units")
    sub = svc.add_subparsers(dest="service_command", metavar="{install,uninstall}", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--prefix", default="/usr/local",
                       help="installation prefix (default /usr/local): units go to PREFIX/lib/systemd/system")
        p.add_argument("--unit-dir", help="directory for the unit files (overrides PREFIX/lib/systemd/system)")
        p.add_argument("--dry-run", action="store_true", help="print what would change, change nothing")
        p.add_argument("--no-reload", dest="reload", action="store_false",
                       help="do not call systemctl / systemd-sysusers / systemd-tmpfiles")

    inst = sub.add_parser("install", help="render and install the units with the right agentd path")
    common(inst)
    inst.add_argument("--agentd", help="absolute path of agentd for ExecStart= (default: found automatically)")
    inst.add_argument("--gpu", action="store_true", help="also install the GPU/NPU device-access drop-in")
    inst.add_argument("--units-from", help="directory with the unit templates (default: the shipped ones)")
    inst.set_defaults(func=install)
    un = sub.add_parser("uninstall", help="stop, disable and remove the installed units")
    common(un)
    un.set_defaults(func=uninstall)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="agentctl")
    add_parsers(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    raise SystemExit(main())
